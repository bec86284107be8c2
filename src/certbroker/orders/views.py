"""What `collect` shows of an order, as typed values (front ends turn them into wire formats)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session, joinedload

from certbroker.dns_delegation.labels import base_domain, target_name
from certbroker.orders.accounts import AccountRef
from certbroker.orders.context import OrdersContext
from certbroker.orders.dcv import DcvBlock, dcv_block, file_url
from certbroker.orders.errors import ApiError, Code
from certbroker.orders.states import Status
from certbroker.orders.upstream_rules import DNS01_METHOD
from certbroker.store import dns_delegation as delegation_store
from certbroker.store.models import (
    Certificate,
    Order,
    OrderName,
    UpstreamAuthz,
    UpstreamOrder,
)


@dataclass(frozen=True)
class NameView:
    name: str
    method: str
    email: str | None
    verified: bool
    verified_how: str | None
    last_checked_at: datetime | None
    last_result: str | None
    next_check_at: datetime | None
    file_url: str
    # Upstream ACME products (RFC 8555 8.3): the http-01 token and key authorization to publish,
    # None until the worker has placed the upstream order.
    acme_token: str | None = None
    acme_key_authorization: str | None = None
    # dns-01 through the delegation (RFC 8555 8.4): the CNAME target `<label>.<zone>.` the
    # customer points `_acme-challenge.<base>` to, known from place on.
    acme_dns_target: str | None = None


@dataclass(frozen=True)
class Issued:
    certificate: str
    ca_certificate: str
    not_before: datetime
    not_after: datetime
    serial_hex: str
    private_key: str | None
    pkcs12: str | None
    pkcs12_password: str | None
    jks: str | None
    jks_password: str | None


@dataclass(frozen=True)
class CertSummary:
    serial_hex: str
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class UpstreamRef:
    id: int
    order_url: str | None
    certificate_url: str | None


@dataclass(frozen=True)
class OrderView:
    cert_id: str
    order_num: str
    ref_id: str | None
    status: str
    product_code: str
    validation_level: str
    years: int
    price_cents: int
    created_at: datetime
    due_at: datetime | None
    dcv: DcvBlock
    names: tuple[NameView, ...]
    stage_dcv: str
    stage_ov: str
    stage_issued: str
    apply_params: dict[str, Any]
    ov_note: str | None
    failure_reason: str | None
    # Why the CA last refused to sign (orders/refusals.py); None once a certificate is issued.
    last_error: str | None
    issued: Issued | None
    # Every certificate of the order, oldest first (a subscription reissues under one certId).
    history: tuple[CertSummary, ...] = ()
    # Issued through an upstream ACME CA: the DCV values come per name from the upstream order.
    upstream: bool = False
    # The upstream order exists (its tokens are known); False while the worker places it.
    upstream_ordered: bool = False
    # The newest upstream order: our numeric id of it and the upstream's URLs (RFC 8555 7.1.3).
    upstream_order: UpstreamRef | None = None


def load_order(
    session: Session,
    account: AccountRef,
    cert_id: object,
    field: str = "certId",
    *,
    lock: bool = False,
) -> Order:
    """The account's order; another account's certId is answered exactly like an unknown one.

    `lock`: for a change decided on what is read (its status): the row lock makes a worker
    finishing the same order at that moment wait, instead of one of them overwriting the other."""
    wanted = _required_cert_id(cert_id, field)
    # One query with its names joined: half the CPU of the separate "selectin" query
    # (collect is what clients poll; docs/PERFORMANCE.md).
    query = (
        select(Order)
        .options(joinedload(Order.names))
        .where(Order.cert_id == wanted, Order.account_id == account.id)
    )
    if lock:
        # Only the order row: PostgreSQL cannot lock the nullable side of the outer join.
        query = query.with_for_update(of=Order).execution_options(populate_existing=True)
    order = session.scalars(query).unique().one_or_none()
    if order is None:
        raise _not_found(field, wanted)
    return order


def _required_cert_id(cert_id: object, field: str) -> str:
    if not isinstance(cert_id, str) or not cert_id.strip():
        raise ApiError(Code.INVALID, {field: [f"{field} is required"]})
    return cert_id.strip()


def _not_found(field: str, cert_id: str) -> ApiError:
    return ApiError(Code.INVALID, {field: [f"certificate {cert_id[:40]} not found"]})


@dataclass(frozen=True)
class OrderFacts:
    """The columns of an order that a view shows: read by one Core query for `collect`,
    written by place, or taken from an ORM `Order` for reissue... (one builder for all)."""

    id: int
    account_id: int
    cert_id: str
    order_num: str
    ref_id: str | None
    status: str
    product_code: str
    validation_level: str
    years: int
    price_cents: int
    created_at: datetime
    due_at: datetime | None
    completed_at: datetime | None
    csr_pem: str
    unique_value: str | None
    ov_status: str
    ov_note: str | None
    failure_reason: str | None
    last_error: str | None
    apply_params: dict[str, Any]
    key_encrypted: str | None


@dataclass(frozen=True)
class NameFacts:
    name: str
    dcv_method: str
    dcv_email: str | None
    verified_at: datetime | None
    verified_how: str | None
    last_checked_at: datetime | None
    last_result: str | None
    next_check_at: datetime | None


_ORDER_FIELDS = tuple(f.name for f in fields(OrderFacts))
NAME_FIELDS = tuple(f.name for f in fields(NameFacts))
_NAME_PREFIX = "name_"

# collect is what clients poll: statements built once and run on the session's connection
# cost a quarter of building them per call, and a fifth of loading ORM objects
# (docs/PERFORMANCE.md).
_COLLECT = (
    select(
        *(getattr(Order, f) for f in _ORDER_FIELDS),
        *(getattr(OrderName, f).label(_NAME_PREFIX + f) for f in NAME_FIELDS),
    )
    .outerjoin(OrderName, OrderName.order_id == Order.id)
    .where(Order.cert_id == bindparam("cert_id"), Order.account_id == bindparam("account_id"))
    .order_by(OrderName.position)
)
_HISTORY = (
    select(
        Certificate.serial_hex,
        Certificate.not_before,
        Certificate.not_after,
        Certificate.revoked_at,
    )
    .where(Certificate.order_id == bindparam("order_id"), Certificate.state == "issued")
    .order_by(Certificate.generation)
)
_NEWEST = (
    select(
        Certificate.pem,
        Certificate.chain_pem,
        Certificate.not_before,
        Certificate.not_after,
        Certificate.serial_hex,
        Certificate.bundles_encrypted,
    )
    .where(Certificate.order_id == bindparam("order_id"), Certificate.state == "issued")
    .order_by(Certificate.generation.desc())
    .limit(1)
)


def _stages(order: OrderFacts, names: Sequence[NameFacts]) -> tuple[str, str, str]:
    verified = all(n.verified_at is not None for n in names)
    dcv = "done" if verified else "processing"
    if order.status == Status.PENDING:
        issued = "processing" if verified and order.ov_status == "done" else "notdone"
    elif order.completed_at is not None:
        issued = "done"
    else:
        issued = "notdone"
    return dcv, order.ov_status, issued


def _history(connection: Connection, order: OrderFacts) -> tuple[CertSummary, ...]:
    if order.completed_at is None:
        return ()
    rows = connection.execute(_HISTORY, {"order_id": order.id}).all()
    return tuple(CertSummary(*row) for row in rows)


def _issued(ctx: OrdersContext, connection: Connection, order: OrderFacts) -> Issued | None:
    if order.completed_at is None:
        return None
    cert = connection.execute(_NEWEST, {"order_id": order.id}).first()
    if cert is None or cert.pem is None:
        return None
    key_pem = None
    bundle: dict[str, str] = {}
    if order.key_encrypted is not None:
        key_pem = ctx.box.decrypt(order.key_encrypted, context=order.cert_id.encode()).decode()
    if cert.bundles_encrypted is not None:
        bundle = json.loads(
            ctx.box.decrypt(cert.bundles_encrypted, context=f"bundle:{order.cert_id}".encode())
        )
    return Issued(
        certificate=cert.pem,
        ca_certificate=cert.chain_pem or "",
        not_before=cert.not_before,
        not_after=cert.not_after,
        serial_hex=cert.serial_hex,
        private_key=key_pem,
        pkcs12=bundle.get("pkcs12"),
        pkcs12_password=bundle.get("pkcsPass"),
        jks=bundle.get("jks"),
        jks_password=bundle.get("jksPass"),
    )


# The http-01 values of the current upstream order, per order name.
_ACME_CHALLENGES = (
    select(OrderName.name, UpstreamAuthz.token, UpstreamAuthz.key_authorization)
    .join(UpstreamAuthz, UpstreamAuthz.order_name_id == OrderName.id)
    .join(UpstreamOrder, UpstreamOrder.id == UpstreamAuthz.upstream_order_id)
    .where(UpstreamOrder.order_id == bindparam("order_id"), UpstreamOrder.status != "invalid")
    .order_by(UpstreamOrder.attempt)
)


_NEWEST_UPSTREAM_ORDER = (
    select(UpstreamOrder.id, UpstreamOrder.order_url, UpstreamOrder.certificate_url)
    .where(UpstreamOrder.order_id == bindparam("order_id"))
    .order_by(UpstreamOrder.attempt.desc())
    .limit(1)
)


def _newest_upstream_order(connection: Connection, order_id: int) -> UpstreamRef | None:
    row = connection.execute(_NEWEST_UPSTREAM_ORDER, {"order_id": order_id}).first()
    return None if row is None else UpstreamRef(row.id, row.order_url, row.certificate_url)


def _acme_challenges(connection: Connection, order_id: int) -> dict[str, tuple[str, str]]:
    # The newest attempt wins (rows come oldest first).
    return {
        row.name: (row.token, row.key_authorization)
        for row in connection.execute(_ACME_CHALLENGES, {"order_id": order_id})
        if row.token and row.key_authorization
    }


def _acme_dns_targets(
    ctx: OrdersContext, connection: Connection, account_id: int, names: Sequence[NameFacts]
) -> dict[str, str]:
    """The delegation target of each CNAME_CSR_HASH name (its stored label; place made it)."""
    if not ctx.dcv_zone:
        return {}
    found: dict[str, str] = {}
    for n in names:
        if n.dcv_method == DNS01_METHOD:
            label = delegation_store.label_of(connection, account_id, base_domain(n.name))
            if label is not None:
                found[n.name] = target_name(label, ctx.dcv_zone)
    return found


def view_order(ctx: OrdersContext, session: Session, order: Order) -> OrderView:
    """The view of an ORM order (with its names) inside the caller's transaction."""
    facts = OrderFacts(**{f: getattr(order, f) for f in _ORDER_FIELDS})
    names = [NameFacts(**{f: getattr(n, f) for f in NAME_FIELDS}) for n in order.names]
    return view_of(ctx, session.connection(), facts, names)


# The DCV values follow from the CSR alone: parsed once per order, not at every poll.
_dcv_block = functools.lru_cache(maxsize=4096)(dcv_block)


def view_of(
    ctx: OrdersContext, connection: Connection, order: OrderFacts, names: Sequence[NameFacts]
) -> OrderView:
    """The view of an order read (or just written) as plain values, on `connection`."""
    block = _dcv_block(order.csr_pem, order.unique_value, ctx.policy.dcv_ca_domain)
    dcv, ov, issued = _stages(order, names)
    product = ctx.catalog.get(order.product_code)
    upstream = product is not None and product.issuer.is_acme and order.id is not None
    acme = _acme_challenges(connection, order.id) if upstream else {}
    dns_targets = _acme_dns_targets(ctx, connection, order.account_id, names) if upstream else {}
    return OrderView(
        cert_id=order.cert_id,
        order_num=order.order_num,
        ref_id=order.ref_id,
        status=order.status,
        product_code=order.product_code,
        validation_level=order.validation_level,
        years=order.years,
        price_cents=order.price_cents,
        created_at=order.created_at,
        due_at=order.due_at,
        dcv=block,
        names=tuple(
            NameView(
                name=n.name,
                method=n.dcv_method,
                email=n.dcv_email,
                verified=n.verified_at is not None,
                verified_how=n.verified_how,
                last_checked_at=n.last_checked_at,
                last_result=n.last_result,
                next_check_at=n.next_check_at,
                file_url=file_url(n.name, block.file_name, n.dcv_method, ctx.policy),
                acme_token=acme[n.name][0] if n.name in acme else None,
                acme_key_authorization=acme[n.name][1] if n.name in acme else None,
                acme_dns_target=dns_targets.get(n.name),
            )
            for n in names
        ),
        upstream=upstream,
        upstream_ordered=bool(acme),
        upstream_order=_newest_upstream_order(connection, order.id)
        if upstream and order.id is not None
        else None,
        stage_dcv=dcv,
        stage_ov=ov,
        stage_issued=issued,
        apply_params=order.apply_params,
        ov_note=order.ov_note,
        failure_reason=order.failure_reason,
        last_error=order.last_error,
        issued=_issued(ctx, connection, order),
        history=_history(connection, order),
    )


def collect(ctx: OrdersContext, account: AccountRef, cert_id: object) -> OrderView:
    """An order as collect shows it: one snapshot, no write lock, no ORM session."""
    wanted = _required_cert_id(cert_id, "certId")
    with ctx.db.read_connection() as connection:
        rows = connection.execute(_COLLECT, {"cert_id": wanted, "account_id": account.id}).all()
        if not rows:
            raise _not_found("certId", wanted)
        first = rows[0]._mapping
        order = OrderFacts(**{f: first[f] for f in _ORDER_FIELDS})
        names = [
            NameFacts(**{f: row._mapping[_NAME_PREFIX + f] for f in NAME_FIELDS})
            for row in rows
            if row._mapping[_NAME_PREFIX + "name"] is not None
        ]
        return view_of(ctx, connection, order, names)


def cert_id_by_ref_id(ctx: OrdersContext, account: AccountRef, ref_id: object) -> str:
    if ref_id is None or not str(ref_id).strip():
        raise ApiError(Code.INVALID, {"refId": ["refId is required"]})
    with ctx.db.read() as session:
        cert_id = session.scalar(
            select(Order.cert_id).where(
                Order.account_id == account.id, Order.ref_id == str(ref_id).strip()
            )
        )
    if cert_id is None:
        raise ApiError(Code.INVALID, {"refId": [f"no order with refId {str(ref_id)[:128]}"]})
    return cert_id
