"""Changing how a pending order proves control (SPEC 4.9-4.12): new methods, re-checks, and
dropping names that cannot pass so the rest can issue."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from certbroker.catalog.catalog import NotSoldError, Product
from certbroker.orders import ledger
from certbroker.orders.accounts import AccountRef
from certbroker.orders.context import OrdersContext
from certbroker.orders.dcv import mark_ready_if_complete
from certbroker.orders.errors import ApiError, Code
from certbroker.orders.events import record_event
from certbroker.orders.params import decode_json_field, parse_dcv_choice
from certbroker.orders.states import Operation, require_allowed
from certbroker.orders.views import load_order
from certbroker.pki.names import NameSyntaxError, normalize_name
from certbroker.store.models import Order, OrderName


def _pending(session: Session, account: AccountRef, cert_id: object, op: Operation) -> Order:
    order = load_order(session, account, cert_id, lock=True)
    require_allowed(op, order.status)
    return order


def _find_name(order: Order, raw: object, field: str = "domainName") -> OrderName:
    names = order.names
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        chosen = _leading_names(order)
        if len(chosen) == 1:
            return chosen[0]
        raise ApiError(Code.INVALID, {field: [f"{field} is required for a multi-domain order"]})
    try:
        wanted = normalize_name(str(raw))
    except NameSyntaxError as exc:
        raise ApiError.invalid(field, str(exc)) from exc
    for row in names:
        if row.name == wanted:
            return row
    listed = ", ".join(n.name for n in names)
    raise ApiError.invalid(field, f"{wanted} is not a name of {order.cert_id} ({listed})")


def _apply_method(
    ctx: OrdersContext,
    order: Order,
    row: OrderName,
    raw_method: object,
    raw_email: object,
    now: datetime,
) -> None:
    if row.verified_at is not None:
        raise ApiError.invalid("domainName", f"{row.name} is already validated")
    product = ctx.catalog.require(order.product_code)
    choice = parse_dcv_choice(product, row.name, raw_method, raw_email)
    base = _following_base(order, row)
    for changed in (row,) if base is None else (row, base):
        changed.dcv_method = choice.dcv_method
        changed.dcv_email = choice.dcv_email
        schedule_now(changed, now, f"dcvMethod set to {choice.dcv_method}; check queued")


def _leading_names(order: Order) -> list[OrderName]:
    """The names a client chooses among: a base domain that follows its wildcard is not one."""
    followers = {id(b) for n in order.names if (b := _following_base(order, n)) is not None}
    return [n for n in order.names if id(n) not in followers]


def _following_base(order: Order, row: OrderName) -> OrderName | None:
    """The base domain of wildcard `row` when it is validated the way the wildcard is (as when
    place added it): it follows the wildcard's method changes (docs/API.md, wildcards)."""
    if not row.name.startswith("*."):
        return None
    for other in order.names:
        if (
            other.name == row.name[2:]
            and other.verified_at is None
            and (other.dcv_method, other.dcv_email) == (row.dcv_method, row.dcv_email)
        ):
            return other
    return None


def schedule_now(row: OrderName, now: datetime, note: str) -> None:
    """Check this name at the next worker pass, with a fresh back-off."""
    row.attempts = 0
    row.next_check_at = now
    row.lease_owner = None
    row.lease_until = None
    row.last_result = note


def update_dcv(
    ctx: OrdersContext,
    account: AccountRef,
    cert_id: object,
    domain: object,
    method: object,
    email: object,
) -> str:
    """updateDCV: one name gets a new method and is checked right away. Returns the certId."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        order = _pending(session, account, cert_id, Operation.UPDATE_DCV)
        row = _find_name(order, domain)
        _apply_method(ctx, order, row, method, email, now)
        order.updated_at = now
        record_event(
            session,
            order,
            "dcv.updated",
            {"domainName": row.name, "dcvMethod": row.dcv_method},
            now,
        )
        cert_id_out = order.cert_id
    ctx.wake()
    return cert_id_out


def batch_update_dcv(
    ctx: OrdersContext,
    account: AccountRef,
    cert_id: object,
    method: object,
    email: object,
    domain_info: object,
    operation: Operation = Operation.BATCH_UPDATE_DCV,
) -> str:
    """batchUpdateDCV (SPEC 4.10): domainInfo wins over dcvMethod; neither = re-check now.
    `operation`: the call as the client named it (updateDCV sent with domainInfo only)."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        order = _pending(session, account, cert_id, operation)
        pending = [n for n in order.names if n.verified_at is None]
        if domain_info not in (None, "", [], "[]"):
            items = decode_json_field(domain_info, "domainInfo", list)
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise ApiError.invalid(f"domainInfo.{i}", "each entry must be an object")
                row = _find_name(order, item.get("domainName"), f"domainInfo.{i}.domainName")
                _apply_method(ctx, order, row, item.get("dcvMethod"), item.get("dcvEmail"), now)
        elif method not in (None, ""):
            if str(method).upper() == "EMAIL" and len(_leading_names(order)) > 1:
                # SPEC 4.10: a multi-domain order cannot be switched to EMAIL in one go
                raise ApiError.invalid(
                    "dcvMethod",
                    "a multi-domain order cannot switch every name to EMAIL at once; "
                    "use domainInfo with one approver address per name",
                )
            for row in pending:
                _apply_method(ctx, order, row, method, email, now)
        else:
            for row in pending:
                schedule_now(row, now, "re-check requested; check queued")
        order.updated_at = now
        record_event(session, order, "dcv.updated", {"batch": True}, now)
        cert_id_out = order.cert_id
    ctx.wake()
    return cert_id_out


def _reprice(
    ctx: OrdersContext, session: Session, order: Order, removed: list[str], now: datetime
) -> None:
    """Refund what the removed names cost, so the order costs what it now covers."""
    product: Product = ctx.catalog.require(order.product_code)
    remaining = [n.name for n in order.names if n.name not in removed]
    try:
        new_price = ctx.catalog.price_cents(product, order.years, remaining)
    except NotSoldError:
        return
    refund = order.price_cents - new_price
    if refund <= 0:
        return
    ledger.post(
        session,
        account_id=order.account_id,
        amount_cents=refund,
        kind="refund",
        op_key=f"refund:remove:{order.cert_id}:{','.join(sorted(removed))}"[:120],
        order_id=order.id,
        now=now,
        note=f"removed {len(removed)} name(s)",
    )
    order.price_cents = new_price


def _remove(
    ctx: OrdersContext, session: Session, order: Order, rows: list[OrderName], now: datetime
) -> list[str]:
    product = ctx.catalog.require(order.product_code)
    if len(order.names) < 2 or not product.support_san:
        raise ApiError(Code.CERT_STATE, f"{order.cert_id} is not a multi-domain order")
    if not rows:
        raise ApiError.invalid("domainName", "no name of this order is waiting for validation")
    if len(rows) >= len(order.names):
        raise ApiError.invalid("domainName", "at least one name must remain on the order")
    removed = [r.name for r in rows]
    _reprice(ctx, session, order, removed, now)
    for row in rows:
        order.names.remove(row)
        session.delete(row)
    for position, row in enumerate(order.names):
        row.position = position
    order.updated_at = now
    record_event(session, order, "domain.removed", {"domainNames": removed}, now)
    mark_ready_if_complete(order, now)
    return removed


def remove_domain(
    ctx: OrdersContext, account: AccountRef, cert_id: object, domain: object
) -> list[str]:
    """removeMdcDomain (SPEC 4.11): drop a name that has not passed validation."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        order = _pending(session, account, cert_id, Operation.REMOVE_DOMAIN)
        if domain is None or not str(domain).strip():
            raise ApiError(Code.INVALID, {"domainName": ["domainName is required"]})
        row = _find_name(order, domain)
        if row.verified_at is not None:
            raise ApiError.invalid(
                "domainName",
                f"{row.name} is validated; only names that "
                "have not passed validation can be removed",
            )
        return _remove(ctx, session, order, [row], now)


def remove_failed_domains(ctx: OrdersContext, account: AccountRef, cert_id: object) -> list[str]:
    """batchRemoveMdcDomain (SPEC 4.12): drop every name that has not passed validation."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        order = _pending(session, account, cert_id, Operation.BATCH_REMOVE_DOMAIN)
        rows = [n for n in order.names if n.verified_at is None]
        return _remove(ctx, session, order, rows, now)
