"""validate and place (SPEC 4.1, 4.2): every check, then one transaction to charge and create."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from certbroker.catalog.catalog import NotSoldError, Product
from certbroker.orders import ledger
from certbroker.orders.accounts import AccountRef
from certbroker.orders.context import OrdersContext
from certbroker.orders.csr_policy import (
    OrderKey,
    check_customer_csr,
    generate_order_key,
    key_spec_for,
    requested_names,
)
from certbroker.orders.errors import ApiError, Code
from certbroker.orders.events import INSERT_EVENT, event_values, record_event
from certbroker.orders.free_orders import require_free_allowance
from certbroker.orders.ids import new_cert_id, new_order_num
from certbroker.orders.params import (
    DomainRequest,
    OrderParams,
    decode_params,
    parse_order_params,
)
from certbroker.orders.reuse import find_reusable, reused_values
from certbroker.orders.states import Operation, Status, require_allowed
from certbroker.orders.upstream_accounts import require_available
from certbroker.orders.upstream_orders import (
    INSERT_UPSTREAM_ORDER,
    ensure_delegations,
    new_upstream_order,
)
from certbroker.orders.upstream_rules import check_upstream_dcv, check_upstream_order
from certbroker.orders.views import (
    NAME_FIELDS,
    NameFacts,
    OrderFacts,
    OrderView,
    load_order,
    view_of,
    view_order,
)
from certbroker.pki.keys import private_key_to_pem
from certbroker.store.models import Account, Order, OrderName

MAX_REF_ID = 128


# originalfromOthers=1 (SPEC 3.1): a certificate moved from another vendor gets 30 extra days.
BONUS_DAYS_FROM_OTHERS = 30


@dataclass(frozen=True)
class Renewal:
    """renew (SPEC 4.8): the order being renewed, checked inside the charging transaction."""

    cert_id: str
    window: timedelta

    def check(self, session: Session, account: AccountRef, now: datetime) -> Order:
        old = load_order(session, account, self.cert_id, field="renewId", lock=True)
        require_allowed(Operation.RENEW, old.status)
        if old.renewed_by_cert_id:
            successor = session.scalar(select(Order).where(Order.cert_id == old.renewed_by_cert_id))
            if successor is not None and successor.status not in (Status.CANCELLED, Status.FAILED):
                raise ApiError(
                    Code.CERT_STATE, f"{old.cert_id} is already renewed by {successor.cert_id}"
                )
        if old.due_at is not None and old.due_at - now > self.window:
            raise ApiError(
                Code.CERT_STATE,
                f"{old.cert_id} can be renewed from {self.window.days} days before its "
                f"subscription ends ({old.due_at:%Y-%m-%d}); not yet",
            )
        return old


@dataclass(frozen=True)
class CheckedOrder:
    product: Product
    years: int
    params: OrderParams
    names: list[str]
    price_cents: int
    request_hash: str


def parse_years(raw: object, product: Product) -> int:
    try:
        years = int(str(raw).strip()) if raw is not None and str(raw).strip() else None
    except ValueError:
        years = None
    if years is None:
        raise ApiError(Code.INVALID, {"years": ["years is required and must be a whole number"]})
    sold = product.years_sold()
    if years not in sold:
        raise ApiError(
            Code.PRODUCT,
            f"product {product.code} is not sold for {years} years; "
            f"terms sold: {', '.join(str(y) for y in sold)}",
        )
    return years


def _request_hash(
    product_code: str, years: int, params: dict[str, Any], renew_id: str | None
) -> str:
    canonical = json.dumps(
        {"productCode": product_code, "years": years, "params": params, "renewId": renew_id},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def check_order(
    ctx: OrdersContext,
    product_code: object,
    years_raw: object,
    raw_params: object,
    renew_id: str | None = None,
) -> CheckedOrder:
    """Every check of `place` that needs no database: product, term, params, names, price."""
    if not isinstance(product_code, str) or not product_code.strip():
        raise ApiError(Code.INVALID, {"productCode": ["productCode is required"]})
    try:
        product = ctx.catalog.require(product_code.strip())
    except NotSoldError as exc:
        raise ApiError(Code.PRODUCT, str(exc)) from exc
    years = parse_years(years_raw, product)
    params_dict = decode_params(raw_params)
    params = parse_order_params(params_dict, product, names=ctx.policy.names)
    check_upstream_dcv(ctx, product, params.domains)
    names = requested_names(params)
    try:
        price = ctx.catalog.price_cents(product, years, names)
    except NotSoldError as exc:
        raise ApiError(Code.PRODUCT, str(exc)) from exc
    return CheckedOrder(
        product=product,
        years=years,
        params=params,
        names=names,
        price_cents=price,
        request_hash=_request_hash(product.code, years, params_dict, renew_id),
    )


def _order_key(ctx: OrdersContext, checked: CheckedOrder) -> OrderKey:
    if checked.params.csr:
        key = check_customer_csr(ctx, checked.params, checked.names)
    else:
        key = generate_order_key(
            checked.names,
            key_spec_for(checked.params, ctx.policy.default_key_spec),
            ctx.key_pool,
        )
    check_upstream_order(ctx, checked.product, key, checked.names)
    return key


def _require_balance(session: Session, account_id: int, price_cents: int) -> None:
    balance = ledger.balance_cents(session, account_id)
    if balance < price_cents:
        raise ApiError(
            Code.BALANCE,
            f"Insufficient balance: the order costs {ledger.format_cents(price_cents)} USD, "
            f"the balance is {ledger.format_cents(balance)} USD",
        )


def validate(
    ctx: OrdersContext, account: AccountRef, product_code: object, years: object, raw_params: object
) -> None:
    """Run every check of place; charge nothing, store nothing (SPEC 4.1)."""
    checked = check_order(ctx, product_code, years, raw_params)
    if checked.params.csr:
        key = check_customer_csr(ctx, checked.params, checked.names)
        check_upstream_order(ctx, checked.product, key, checked.names)
    else:
        key_spec_for(checked.params, ctx.policy.default_key_spec)
    with ctx.db.read() as session:
        require_available(ctx, session, checked.product)
        _require_balance(session, account.id, checked.price_cents)
        require_free_allowance(ctx, session, account.id, checked.price_cents, ctx.clock.now())


def _normalize_ref_id(ref_id: object) -> str | None:
    if ref_id is None:
        return None
    text = str(ref_id).strip()
    if not text:
        return None
    if len(text) > MAX_REF_ID:
        raise ApiError(Code.INVALID, {"refId": [f"refId is longer than {MAX_REF_ID} characters"]})
    return text


def _existing_by_ref(
    session: Session, account_id: int, ref_id: str, request_hash: str
) -> Order | None:
    order = session.scalar(
        select(Order).where(Order.account_id == account_id, Order.ref_id == ref_id)
    )
    if order is None:
        return None
    if order.request_hash != request_hash:
        raise ApiError(
            Code.INVALID,
            {"refId": [f"refId {ref_id} was already used for a different order ({order.cert_id})"]},
        )
    return order


def place(
    ctx: OrdersContext,
    account: AccountRef,
    product_code: object,
    years: object,
    ref_id_raw: object,
    raw_params: object,
    renewal: Renewal | None = None,
) -> OrderView:
    """Charge and create in one transaction; a retry under the same refId returns the same order.

    Answers the order as `collect` shows it, read in the transaction that made it.
    `renewal`: renew (SPEC 4.8) — the new order continues the renewed subscription."""
    checked = check_order(
        ctx, product_code, years, raw_params, renewal.cert_id if renewal else None
    )
    ref_id = _normalize_ref_id(ref_id_raw)
    if ref_id is not None:
        existing = _view_by_ref(ctx, account, ref_id, checked.request_hash)
        if existing is not None:
            return existing
    key = _order_key(ctx, checked)  # key generation is slow: outside the transaction
    try:
        with ctx.db.transaction() as session:
            view = _create(ctx, session, account, checked, key, ref_id, renewal)
        ctx.wake()
        return view
    except IntegrityError:
        # A concurrent call with the same refId won the unique constraint: answer as a retry.
        if ref_id is None:
            raise
        existing = _view_by_ref(ctx, account, ref_id, checked.request_hash)
        if existing is None:
            raise
        return existing


def renew(
    ctx: OrdersContext,
    account: AccountRef,
    renew_id: str,
    years: str | None,
    ref_id_raw: object,
    raw_params: object,
) -> OrderView:
    """renew (SPEC 4.8): a new subscription continuing `renew_id`. Clients that send only the
    certId get the renewed order's term and params: its CSR again when the customer holds the
    key (the key policy checks it again), a new key of the same type when certbroker held it."""
    with ctx.db.read() as session:
        old = load_order(session, account, renew_id, field="renewId")
        product_code, old_years = old.product_code, old.years
        params: object = raw_params
        if raw_params is None or (isinstance(raw_params, str) and not raw_params.strip()):
            defaults = dict(old.apply_params)
            if old.key_encrypted is not None:
                defaults.pop("csr", None)
                defaults["keyType"] = old.key_spec or ctx.policy.default_key_spec
            params = defaults
    return place(
        ctx,
        account,
        product_code,
        years if years is not None else str(old_years),
        ref_id_raw,
        params,
        renewal=Renewal(cert_id=renew_id, window=ctx.policy.renew_window),
    )


def _view_by_ref(
    ctx: OrdersContext, account: AccountRef, ref_id: str, request_hash: str
) -> OrderView | None:
    with ctx.db.read() as session:
        existing = _existing_by_ref(session, account.id, ref_id, request_hash)
        return None if existing is None else view_order(ctx, session, existing)


_INSERT_ORDER = insert(Order).returning(Order.id)
_INSERT_NAME = insert(OrderName)


def _create(
    ctx: OrdersContext,
    session: Session,
    account: AccountRef,
    checked: CheckedOrder,
    key: OrderKey,
    ref_id: str | None,
    renewal: Renewal | None = None,
) -> OrderView:
    """Charge and write the order. The new rows go in as Core inserts: an ORM flush of the
    order and its names cost more than the rest of place together (docs/PERFORMANCE.md)."""
    now = ctx.clock.now()
    if not ctx.db.is_sqlite:
        # Serialise orders of one account (PostgreSQL row lock; SQLite's BEGIN IMMEDIATE holds
        # the write lock already).
        session.execute(select(Account.id).where(Account.id == account.id).with_for_update())
    if ref_id is not None:
        existing = _existing_by_ref(session, account.id, ref_id, checked.request_hash)
        if existing is not None:
            return view_order(ctx, session, existing)
    bonus_days = BONUS_DAYS_FROM_OTHERS if checked.params.original_from_others else 0
    renewed = None
    if renewal is not None:
        renewed = renewal.check(session, account, now)
        # The renewed subscription's remaining time is carried over, as CAs do on renewal.
        if renewed.due_at is not None and renewed.due_at > now:
            bonus_days = max(bonus_days, (renewed.due_at - now).days)
    require_available(ctx, session, checked.product)
    _require_balance(session, account.id, checked.price_cents)
    require_free_allowance(ctx, session, account.id, checked.price_cents, now)
    connection = session.connection()
    cert_id = new_cert_id(now)
    params = checked.params
    # Upstream ACME products (not for sandbox accounts, whose orders the sandbox CA signs):
    # the upstream steps (orders/upstream_orders.py) validate and issue; no reuse of our own
    # validations, which never count upstream.
    upstream = checked.product.issuer.upstream if not account.sandbox else None
    names = [
        _name_values(connection, account, position, domain, name, now, upstream=upstream)
        for position, (domain, name) in enumerate(zip(params.domains, checked.names, strict=True))
    ]
    apply_params = params.to_apply_params()
    apply_params["csr"] = key.csr.pem
    ov_status = (
        "done" if checked.product.validation_type == "dv" or account.sandbox else "processing"
    )
    # Queue issuance at once when every name is verified already (reuse, sandbox) and the
    # organization needs no vetting: what mark_ready_if_complete does for ORM orders.
    ready = ov_status == "done" and all(n["verified_at"] is not None for n in names)
    values: dict[str, Any] = {
        "cert_id": cert_id,
        "order_num": new_order_num(now),
        "account_id": account.id,
        "ref_id": ref_id,
        "request_hash": checked.request_hash,
        "product_code": checked.product.code,
        "validation_level": checked.product.validation_type,
        "years": checked.years,
        "price_cents": checked.price_cents,
        "status": str(Status.PENDING),
        "ov_status": ov_status,
        "sandbox": account.sandbox,
        "server": params.server,
        "unique_value": params.unique_value,
        "csr_pem": key.csr.pem,
        "key_spec": key.key_spec,
        "key_encrypted": None
        if key.private_key is None
        else ctx.box.encrypt(
            private_key_to_pem(key.private_key).encode("ascii"), context=cert_id.encode("ascii")
        ),
        "apply_params": apply_params,
        "trial_days": checked.product.trial_days,
        "created_at": now,
        "updated_at": now,
        "validation_deadline": now + ctx.policy.dcv_window,
        "issue_due_at": now if ready else None,
        "subscription_cert_id": cert_id,
        "bonus_days": bonus_days,
        "parent_cert_id": renewed.cert_id if renewed else None,
        "version": 1,
    }
    order_id = connection.execute(_INSERT_ORDER, values).scalar_one()
    connection.execute(_INSERT_NAME, [dict(n, order_id=order_id) for n in names])
    if upstream is not None:
        # newOrder happens in the worker (the next pass, woken by place): the order and its
        # charge never wait on the upstream.
        connection.execute(INSERT_UPSTREAM_ORDER, new_upstream_order(order_id, upstream, now))
        # dns-01: the label is made (once per account and base domain) and stored now, so
        # collect shows the CNAME at once.
        ensure_delegations(ctx, session, account.id, params.domains, now)
    if renewed is not None:
        renewed.renewed_by_cert_id = cert_id
        record_event(session, renewed, "certificate.renewed", {"renewedBy": cert_id}, now)
    ledger.post(
        session,
        account_id=account.id,
        amount_cents=-checked.price_cents,
        kind="charge",
        op_key=f"charge:{cert_id}",
        order_id=order_id,
        now=now,
        note=f"{checked.product.code} {checked.years}y",
    )
    connection.execute(
        INSERT_EVENT,
        event_values(
            account_id=account.id,
            order_id=order_id,
            cert_id=cert_id,
            status=str(Status.PENDING),
            kind="order.placed",
            payload={"productCode": checked.product.code},
            now=now,
        ),
    )
    facts = OrderFacts(
        id=order_id,
        completed_at=None,
        due_at=None,
        ov_note=None,
        failure_reason=None,
        last_error=None,
        **{
            f: values[f]
            for f in (
                "account_id",
                "cert_id",
                "order_num",
                "ref_id",
                "status",
                "product_code",
                "validation_level",
                "years",
                "price_cents",
                "created_at",
                "csr_pem",
                "unique_value",
                "ov_status",
                "apply_params",
                "key_encrypted",
            )
        },
    )
    return view_of(
        ctx, connection, facts, [NameFacts(**{f: n[f] for f in NAME_FIELDS}) for n in names]
    )


def _name_values(
    connection: Connection,
    account: AccountRef,
    position: int,
    domain: DomainRequest,
    name: str,
    now: datetime,
    *,
    upstream: str | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "position": position,
        "name": name,
        "dcv_method": domain.dcv_method,
        "dcv_email": domain.dcv_email,
        "verified_at": None,
        "verified_how": None,
        "attempts": 0,
        "last_checked_at": None,
        "last_result": None,
        "next_check_at": now,
        "lease_until": None,
        "lease_owner": None,
    }
    if upstream is not None:
        # Checked by the upstream steps, not by the DCV checker (it claims names with a due time).
        row.update(next_check_at=None, last_result="waiting for the upstream order")
    elif account.sandbox:
        # Sandbox accounts: validation passes without a published file (integration testing).
        row.update(
            verified_at=now,
            verified_how="sandbox",
            next_check_at=None,
            last_result="sandbox account: validation skipped",
        )
    else:
        earlier = find_reusable(connection, account.id, name, now)
        if earlier is not None:
            row.update(reused_values(earlier))
    return row
