"""DCV management endpoints (SPEC 4.9-4.12): change methods, re-check, drop failing names."""

from __future__ import annotations

from typing import Any

from certbroker.api.racent import encode, schemas
from certbroker.api.racent.decoding import text_field
from certbroker.api.racent.endpoints import Answer, Endpoint, Fields
from certbroker.orders import dcv_changes, views
from certbroker.orders.accounts import AccountRef
from certbroker.orders.context import OrdersContext
from certbroker.orders.states import Operation


def _dcv_answer(ctx: OrdersContext, account: AccountRef, cert_id: str) -> dict[str, Any]:
    """Clients look for refreshed DCV values after a change (SPEC 4.9): the block and dcvList."""
    data = encode.collect(views.collect(ctx, account, cert_id), ctx.policy.utc_offset_hours)
    keep = (
        "certId",
        "DCVfileName",
        "DCVfileContent",
        "DCVfilePath",
        "DCVdnsHost",
        "DCVdnsValue",
        "DCVdnsType",
        "dcvInfo",
        "dcvList",
    )
    return {key: data[key] for key in keep}


def update_dcv(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    if (
        fields.get("domainInfo") not in (None, "")
        and text_field(fields, "domainName") is None
        and text_field(fields, "dcvMethod") is None
    ):
        # Some clients describe the change only as batchUpdateDCV's domainInfo array.
        cert_id = dcv_changes.batch_update_dcv(
            ctx,
            account,
            text_field(fields, "certId"),
            None,
            None,
            fields.get("domainInfo"),
            Operation.UPDATE_DCV,
        )
        return _dcv_answer(ctx, account, cert_id), {}
    cert_id = dcv_changes.update_dcv(
        ctx,
        account,
        text_field(fields, "certId"),
        text_field(fields, "domainName"),
        text_field(fields, "dcvMethod"),
        text_field(fields, "dcvEmail"),
    )
    return _dcv_answer(ctx, account, cert_id), {}


def batch_update_dcv(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    cert_id = dcv_changes.batch_update_dcv(
        ctx,
        account,
        text_field(fields, "certId"),
        text_field(fields, "dcvMethod"),
        text_field(fields, "dcvEmail"),
        fields.get("domainInfo"),
    )
    return _dcv_answer(ctx, account, cert_id), {}


def remove_domain(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    cert_id = text_field(fields, "certId")
    removed = dcv_changes.remove_domain(ctx, account, cert_id, text_field(fields, "domainName"))
    return {"certId": cert_id, "removed": removed}, {}


def batch_remove_domains(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    # Clients send domainName=* as a workaround for the live endpoint (SPEC 4.12): ignored.
    cert_id = text_field(fields, "certId")
    removed = dcv_changes.remove_failed_domains(ctx, account, cert_id)
    return {"certId": cert_id, "removed": removed}, {}


DCV_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "updateDCV",
        "Change the DCV method of one name of a pending order",
        schemas.UpdateDcvFields,
        update_dcv,
        changes_state=True,
    ),
    Endpoint(
        "batchUpdateDCV",
        "Change DCV methods of several names, or re-check them now",
        schemas.BatchUpdateDcvFields,
        batch_update_dcv,
        changes_state=True,
    ),
    Endpoint(
        "removeMdcDomain",
        "Remove a name that has not passed validation",
        schemas.RemoveDomainFields,
        remove_domain,
        changes_state=True,
    ),
    Endpoint(
        "batchRemoveMdcDomain",
        "Remove every name that has not passed validation",
        schemas.BatchRemoveFields,
        batch_remove_domains,
        changes_state=True,
    ),
)
