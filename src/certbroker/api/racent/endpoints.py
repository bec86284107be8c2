"""One handler per endpoint: decode fields, call orders/, encode the answer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from certbroker.api.racent import encode, schemas
from certbroker.api.racent.decoding import text_field
from certbroker.api.racent.shapes import params_with_top_level
from certbroker.catalog.countries import COUNTRY_CODES
from certbroker.orders import caa_check as caa_checks
from certbroker.orders import cancelling, downloads, email_dcv, placing, views
from certbroker.orders.accounts import AccountRef
from certbroker.orders.approvers import approver_emails
from certbroker.orders.context import OrdersContext
from certbroker.orders.errors import ApiError, Code
from certbroker.orders.params import decode_json_field

Fields = dict[str, Any]
Answer = tuple[Any, dict[str, Any]]  # (data, extra top-level keys)
Handler = Callable[[OrdersContext, AccountRef, Fields], Answer]


@dataclass(frozen=True)
class Endpoint:
    name: str
    summary: str
    fields: type[BaseModel]
    handler: Handler
    # Writes the audit log (orders/audit.py), failed attempts included: place, cancel, reissue,
    # DCV changes... Lookups leave it False.
    changes_state: bool = False


def _required_text(fields: Fields, name: str) -> str:
    value = text_field(fields, name)
    if value is None:
        raise ApiError(Code.INVALID, {name: [f"{name} is required"]})
    return value


def product_list(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    vendor = text_field(fields, "vendor")
    if vendor is not None and vendor not in ctx.catalog.vendors():
        raise ApiError(
            Code.INVALID,
            {"vendor": [f"vendor invalid; use one of {', '.join(ctx.catalog.vendors())}"]},
        )
    return [p.to_wire() for p in ctx.catalog.products(vendor)], {}


def validate(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    # Clients check a CSR and names before choosing a term: csr and domainInfo may come at
    # the top level, and years defaults to 1.
    placing.validate(
        ctx,
        account,
        text_field(fields, "productCode"),
        text_field(fields, "years") or "1",
        params_with_top_level(fields, domain_info=True),
    )
    return None, {}


def place(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    if text_field(fields, "productCode") is None and text_field(fields, "certId") is not None:
        # The official SDK reissues through place: certId + reason, no productCode.
        from certbroker.api.racent.endpoints_lifecycle import reissue

        return reissue(ctx, account, fields)
    view = placing.place(
        ctx,
        account,
        text_field(fields, "productCode"),
        text_field(fields, "years"),
        text_field(fields, "refId"),
        params_with_top_level(fields),
    )
    return encode.placed(view), {}


def collect(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    view = views.collect(ctx, account, text_field(fields, "certId"))
    data = encode.collect(view, ctx.policy.utc_offset_hours)
    if view.issued is not None and view.issued.private_key is not None:
        token = downloads.make_token(ctx, account.id, view.cert_id, ctx.clock.now())
        data["certPath"] = f"{ctx.policy.public_url.rstrip('/')}/download/{token}.zip"
    return data, {"status": view.status}


def cancel(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    cancelling.cancel(ctx, account, text_field(fields, "certId"), text_field(fields, "reason"))
    return None, {}


def cert_id_by_ref_id(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    return {"certId": views.cert_id_by_ref_id(ctx, account, text_field(fields, "refId"))}, {}


def cert_by_ref_id(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    """getCertByRefId: certIdByrefId and collect in one call, as clients expect it."""
    cert_id = views.cert_id_by_ref_id(ctx, account, text_field(fields, "refId"))
    return collect(ctx, account, {"certId": cert_id})


def dcv_email(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    domain = text_field(fields, "domainName") or text_field(fields, "domain")
    cert_id = text_field(fields, "certId")
    if cert_id is not None:
        # With a certId the call re-sends the approval mail (SPEC 4.15).
        sent = email_dcv.resend(ctx, account, cert_id, domain, text_field(fields, "dcvEmail"))
        return {
            "certId": sent.cert_id,
            "domainName": sent.domain,
            "dcvEmail": sent.email,
            "emails": approver_emails(sent.domain, ctx.policy.names),
        }, {}
    return {"emails": approver_emails(domain, ctx.policy.names)}, {}


def caa_check(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    """caaCheck: per name, may this CA issue now (name policy, then CAA), and why not."""
    verdicts = caa_checks.caa_check(ctx, _names_of(fields))
    return [
        {"domainName": v.name, "allowed": 1 if v.allowed else 0, "reason": v.reason}
        for v in verdicts
    ], {}


def _names_of(fields: Fields) -> list[str]:
    """`domainName` (one name, or several separated by commas), `domains` (a JSON array or a
    comma-separated list) and `domainInfo` (place's [{domainName}] array), together."""
    names: list[str] = []
    for key in ("domainName", "domain", "domains"):
        text = text_field(fields, key)
        if text is None:
            continue
        if text.startswith("["):
            items = decode_json_field(text, key, list)
            names += [str(item).strip() for item in items if str(item).strip()]
        else:
            names += [part.strip() for part in text.split(",") if part.strip()]
    raw = fields.get("domainInfo")
    if raw not in (None, "", []):
        for i, item in enumerate(decode_json_field(raw, "domainInfo", list)):
            name = item.get("domainName") if isinstance(item, dict) else item
            if not isinstance(name, str) or not name.strip():
                raise ApiError.invalid(f"domainInfo.{i}.domainName", "domainName is required")
            names.append(name.strip())
    return names


def _legacy_dcv(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    view = views.collect(ctx, account, _required_text(fields, "orderId"))
    domain = text_field(fields, "domain")
    out = encode.dcv_output(view)
    if domain is not None:
        per_name = out["dcvInfo"].get(domain.lower().rstrip("."))
        if per_name is None:
            raise ApiError.invalid("domain", f"{domain} is not a name of {view.cert_id}")
        return per_name, {}
    return out, {}


def country(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    return [{"code": code} for code in sorted(COUNTRY_CODES)], {}


BASE_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "productList",
        "Products and prices, optionally of one vendor",
        schemas.ProductListFields,
        product_list,
    ),
    Endpoint("validate", "Run every check of place without buying", schemas.OrderFields, validate),
    Endpoint(
        "place",
        "Buy a certificate: charge the balance, answer certId and DCV values",
        schemas.OrderFields,
        place,
        changes_state=True,
    ),
    Endpoint(
        "collect",
        "Status, DCV progress and, once COMPLETE, the certificate",
        schemas.CertIdFields,
        collect,
    ),
    Endpoint(
        "cancel",
        "Cancel a pending order, or an issued one within 30 days; refunds",
        schemas.CancelFields,
        cancel,
        changes_state=True,
    ),
    Endpoint(
        "certIdByrefId", "Find a certId by your refId", schemas.RefIdFields, cert_id_by_ref_id
    ),
    Endpoint(
        "getCertByRefId",
        "Find an order by your refId and answer it as collect does",
        schemas.RefIdFields,
        cert_by_ref_id,
    ),
    Endpoint(
        "caaCheck",
        "May this CA issue for these names now: the name policy, then CAA (RFC 8659)",
        schemas.CaaCheckFields,
        caa_check,
    ),
    Endpoint(
        "DCVemail",
        "Approver e-mail addresses of a domain; with certId, re-send the approval mail",
        schemas.DcvEmailFields,
        dcv_email,
        changes_state=True,
    ),
    Endpoint(
        "validatefile",
        "HTTP file DCV values of an order (legacy)",
        schemas.LegacyDcvFields,
        _legacy_dcv,
    ),
    Endpoint(
        "validatedns", "DNS DCV values of an order (legacy)", schemas.LegacyDcvFields, _legacy_dcv
    ),
    Endpoint("country", "ISO 3166-1 alpha-2 country codes", schemas.TokenOnlyFields, country),
)


def _all_endpoints() -> tuple[Endpoint, ...]:
    from certbroker.api.racent.endpoints_dcv import DCV_ENDPOINTS
    from certbroker.api.racent.endpoints_ext import EXTENSION_ENDPOINTS
    from certbroker.api.racent.endpoints_lifecycle import LIFECYCLE_ENDPOINTS

    return BASE_ENDPOINTS + DCV_ENDPOINTS + LIFECYCLE_ENDPOINTS + EXTENSION_ENDPOINTS


ENDPOINTS: tuple[Endpoint, ...] = _all_endpoints()
