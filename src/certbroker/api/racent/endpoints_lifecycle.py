"""Lifecycle endpoints (SPEC 4.6-4.8, 4.16, 4.19): reissue, replace, renew, revoke, list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from certbroker.api.racent import encode, schemas
from certbroker.api.racent.decoding import text_field
from certbroker.api.racent.encode import wire_date
from certbroker.api.racent.endpoints import Answer, Endpoint, Fields
from certbroker.catalog.catalog import NotSoldError
from certbroker.orders import lifecycle, listing, placing, views
from certbroker.orders.accounts import AccountRef
from certbroker.orders.context import OrdersContext
from certbroker.orders.errors import ApiError, Code
from certbroker.orders.ledger import format_cents
from certbroker.orders.params import decode_params


def _placed(ctx: OrdersContext, account: AccountRef, cert_id: str) -> dict[str, Any]:
    return encode.placed(views.collect(ctx, account, cert_id))


def reissue(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    params = fields.get("params")
    csr = text_field(fields, "csr")
    if csr is None and params not in (None, ""):
        # Some clients send the new CSR inside params (SPEC 4.6 note).
        decoded = decode_params(params)
        csr_value = decoded.get("csr")
        csr = csr_value if isinstance(csr_value, str) else None
    order = lifecycle.reissue(
        ctx,
        account,
        text_field(fields, "certId"),
        text_field(fields, "reason"),
        text_field(fields, "uniqueValue"),
        text_field(fields, "refId"),
        csr,
    )
    return _placed(ctx, account, order.cert_id), {}


def replace(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    order = lifecycle.replace(
        ctx,
        account,
        text_field(fields, "certId"),
        text_field(fields, "refId"),
        fields.get("params"),
    )
    return _placed(ctx, account, order.cert_id), {}


def renew(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    renew_id = text_field(fields, "renewId") or text_field(fields, "certId")
    if renew_id is None:
        raise ApiError(Code.INVALID, {"renewId": ["renewId is required"]})
    view = placing.renew(
        ctx,
        account,
        renew_id,
        text_field(fields, "years"),
        text_field(fields, "refId"),
        fields.get("params"),
    )
    return encode.placed(view), {}


def revoke(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    lifecycle.revoke(ctx, account, text_field(fields, "certId"), text_field(fields, "reason"))
    return None, {}


def _int(fields: Fields, name: str, default: int, low: int, high: int) -> int:
    """A whole number in [low, high]; anything else is -1 before it reaches the database."""
    value = text_field(fields, name)
    if value is None:
        return default
    message = f"{name} must be a whole number from {low} to {high}"
    try:
        number = int(value)
    except ValueError:
        raise ApiError(Code.INVALID, {name: [message]}) from None
    if not low <= number <= high:
        raise ApiError(Code.INVALID, {name: [message]})
    return number


# Creation days a filter may name: every order is later than the first, and the day after the
# last still fits a date in every zone.
FIRST_DAY = datetime(1970, 1, 1)
LAST_DAY = datetime(9999, 12, 30)


def _day(fields: Fields, name: str, offset_hours: int) -> datetime | None:
    """A `YYYY-MM-DD` day in the API's zone, as the UTC instant it starts."""
    value = text_field(fields, name)
    if value is None:
        return None
    try:
        day = datetime.strptime(value[:10], "%Y-%m-%d")
    except ValueError:
        raise ApiError(Code.INVALID, {name: [f"{name} must be a date YYYY-MM-DD"]}) from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ApiError(
            Code.INVALID,
            {name: [f"{name} must be a date from {FIRST_DAY:%Y-%m-%d} to {LAST_DAY:%Y-%m-%d}"]},
        )
    return day.replace(tzinfo=timezone(timedelta(hours=offset_hours))).astimezone(UTC)


def list_certificates(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    offset = ctx.policy.utc_offset_hours
    until = _day(fields, "endDate", offset)
    paged = text_field(fields, "page") is not None or text_field(fields, "pageSize") is not None
    flt = listing.ListFilter(
        page=_int(fields, "page", 1, 1, listing.MAX_PAGE),
        page_size=_int(fields, "pageSize", 50, 1, listing.MAX_PAGE_SIZE),
        paged=paged,
        status=(text_field(fields, "status") or "").upper() or None,
        product_code=text_field(fields, "productCode"),
        domain=text_field(fields, "domain"),
        created_from=_day(fields, "startDate", offset),
        created_until=until + timedelta(days=1) if until else None,
    )
    rows, total = listing.list_orders(ctx, account, flt)
    data = []
    for row in rows:
        try:
            product = ctx.catalog.require(row.product_code)
            product_name, brand = product.product_name, product.vendor
        except NotSoldError:
            product_name, brand = row.product_code, ""
        data.append(
            {
                "certId": row.cert_id,
                "orderNum": row.order_num,
                "refId": row.ref_id or "",
                "status": row.status,
                "commonName": row.names[0] if row.names else "",
                "domains": list(row.names),
                "period": f"{row.years}year",
                "beginDate": wire_date(row.begin, offset),
                "endDate": wire_date(row.due_at, offset),
                "certEndDate": wire_date(row.end, offset),
                "productCode": row.product_code,
                "productName": product_name,
                "brand": brand,
                "amount": format_cents(row.price_cents if row.charged else 0),
                "created": wire_date(row.created_at, offset),
            }
        )
    page_size = flt.page_size if paged else listing.MAX_UNPAGED
    return data, {"total": total, "page": flt.page, "pageSize": page_size}


LIFECYCLE_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "reissue",
        "Reissue an issued certificate: new certId, same subscription, no charge",
        schemas.ReissueFields,
        reissue,
        changes_state=True,
    ),
    Endpoint(
        "replace",
        "Replace CSR, names or company data of an issued certificate",
        schemas.ReplaceFields,
        replace,
        changes_state=True,
    ),
    Endpoint(
        "renew",
        "Renew a subscription that ends within 90 days (charged)",
        schemas.RenewFields,
        renew,
        changes_state=True,
    ),
    Endpoint(
        "revoke",
        "Revoke an issued certificate (RFC 5280 reason)",
        schemas.RevokeFields,
        revoke,
        changes_state=True,
    ),
    Endpoint(
        "list",
        "The account's certificates, paged and filtered",
        schemas.ListFields,
        list_certificates,
    ),
)
