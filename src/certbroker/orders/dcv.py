"""Domain control validation as the registration authority runs it: what to check, when, and
what a result changes. The network checks themselves live in validation/."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import ip_network

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Select, bindparam, case, exists, func, select, update
from sqlalchemy.orm import Session, selectinload

from certbroker import metrics
from certbroker.orders.context import OrdersContext, Policy
from certbroker.orders.events import record_event
from certbroker.orders.refunds import settle_failure
from certbroker.orders.states import VALIDATING, Status
from certbroker.pki import dcv_values
from certbroker.policy.names import refusal as name_refusal
from certbroker.store.db import lock_row
from certbroker.store.models import Order, OrderName, UpstreamOrder, UtcDateTime
from certbroker.validation.dns_checks import check_cname
from certbroker.validation.http_file import Resolver, check_http_file
from certbroker.validation.resolver import make_address_resolver
from certbroker.validation.results import CheckResult
from certbroker.validation.safe_addresses import AddressPolicy

FILE_METHODS = ("HTTP_CSR_HASH", "HTTPS_CSR_HASH")


@dataclass(frozen=True)
class DcvBlock:
    """SPEC 3.5 values for one order (CSR-hash methods: the same for every name)."""

    file_name: str
    file_content: str
    dns_host: str
    dns_value: str


def dcv_block(csr_pem: str, unique_value: str | None, ca_domain: str) -> DcvBlock:
    der = x509.load_pem_x509_csr(csr_pem.encode("ascii")).public_bytes(Encoding.DER)
    hashes = dcv_values.csr_hashes(der)
    return DcvBlock(
        file_name=dcv_values.file_name(hashes),
        file_content=dcv_values.file_content(hashes, unique_value, ca_domain),
        dns_host=dcv_values.dns_host(hashes),
        dns_value=dcv_values.dns_value(hashes, unique_value, ca_domain),
    )


def file_url(name: str, file_name: str, method: str, policy: Policy) -> str:
    scheme, port, default = (
        ("https", policy.dcv_https_port, 443)
        if method == "HTTPS_CSR_HASH"
        else ("http", policy.dcv_http_port, 80)
    )
    host = name[2:] if name.startswith("*.") else name
    if ":" in host:
        host = f"[{host}]"
    authority = host if port == default else f"{host}:{port}"
    return f"{scheme}://{authority}/.well-known/pki-validation/{file_name}"


@dataclass(frozen=True)
class NameCheck:
    name_id: int
    name: str
    method: str
    block: DcvBlock
    account_id: int


@functools.cache
def _due_names() -> Select[int, str, str, str, str | None, str | None, int]:
    """The claim's query, built once: it runs on every pass, and building it cost about as
    much CPU as running it (`now`, `limit` and the caps are parameters).

    Fair across accounts and targets: due names are ranked within their account and within
    their target (the name: the host an HTTP check contacts, the owner of a CNAME), and a name
    is taken only while its ranks plus the names of its account (target) already leased stay
    within the caps. Taking the best ranks first gives every account its first name before any
    account its second. Names in flight are still due (`next_check_at` only moves when their
    result is recorded), so one scan counts both. Targets are ranked only among the names their
    account's cap lets through (and those leased): sorting every due name by target as well
    doubled the cost of a claim over a backlog of 10,000.
    """
    now = bindparam("now", type_=UtcDateTime)
    leased = OrderName.lease_until.is_not(None) & (OrderName.lease_until >= now)
    busy = case((leased, 1), else_=0)
    by_account = (
        select(
            OrderName.id.label("id"),
            OrderName.name.label("name"),
            OrderName.next_check_at.label("due"),
            busy.label("busy"),
            func.row_number()
            .over(
                partition_by=(Order.account_id, busy),
                order_by=(OrderName.next_check_at, OrderName.id),
            )
            .label("account_rank"),
            func.sum(busy).over(partition_by=Order.account_id).label("account_busy"),
        )
        .join(Order, Order.id == OrderName.order_id)
        .where(
            Order.status.in_(VALIDATING),
            OrderName.verified_at.is_(None),
            OrderName.next_check_at.is_not(None),
            OrderName.next_check_at <= now,
            # Names of upstream ACME orders are pre-checked by their upstream steps.
            ~exists().where(UpstreamOrder.order_id == Order.id),
        )
        .subquery("by_account")
    )
    a = by_account.c
    ranked = (
        select(
            a.id,
            a.busy,
            a.account_rank,
            func.row_number()
            .over(partition_by=(a.name, a.busy), order_by=(a.due, a.id))
            .label("target_rank"),
            func.sum(a.busy).over(partition_by=a.name).label("target_busy"),
        )
        .where((a.busy == 1) | (a.account_rank + a.account_busy <= bindparam("per_account")))
        .subquery("ranked")
    )
    # Locking and the window functions sit at different levels: PostgreSQL refuses FOR UPDATE
    # beside window functions. The lease condition is repeated outside so that a row another
    # worker leased meanwhile is re-checked (and dropped) when it is locked.
    return (
        select(
            OrderName.id,
            OrderName.name,
            OrderName.dcv_method,
            Order.csr_pem,
            Order.unique_value,
            OrderName.lease_owner,
            Order.account_id,
        )
        .join(ranked, ranked.c.id == OrderName.id)
        .join(Order, Order.id == OrderName.order_id)
        .where(
            ranked.c.busy == 0,
            ranked.c.target_rank + ranked.c.target_busy <= bindparam("per_target"),
            OrderName.verified_at.is_(None),
            (OrderName.lease_until.is_(None)) | (OrderName.lease_until < now),
        )
        .order_by(ranked.c.account_rank, OrderName.next_check_at, OrderName.id)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True, of=OrderName)
    )


def claim_due_names(ctx: OrdersContext, owner: str, limit: int | None = None) -> list[NameCheck]:
    """Lease up to `limit` due names (default: the global cap), within the policy's caps per
    account and per target, counting names any worker holds a lease on."""
    policy = ctx.policy
    now = ctx.clock.now()
    params = {
        "now": now,
        "limit": policy.dcv_max_checks if limit is None else limit,
        "per_account": policy.dcv_max_per_account,
        "per_target": policy.dcv_max_per_target,
    }
    with ctx.db.transaction() as session:
        rows = session.execute(_due_names(), params).all()
        if rows:
            session.execute(
                update(OrderName)
                .where(OrderName.id.in_([r[0] for r in rows]))
                .values(lease_owner=owner, lease_until=now + policy.lease)
            )
    # A previous owner's lease ran out (it crashed or stalled): this claim takes the work over.
    metrics.lease_taken_over("dcv", sum(1 for row in rows if row.lease_owner is not None))
    blocks: dict[tuple[str, str | None], DcvBlock] = {}
    out = []
    for name_id, name, method, csr_pem, unique, _previous_owner, account_id in rows:
        key = (csr_pem, unique)
        if key not in blocks:
            blocks[key] = dcv_block(csr_pem, unique, policy.dcv_ca_domain)
        out.append(
            NameCheck(
                name_id=name_id,
                name=name,
                method=method,
                block=blocks[key],
                account_id=account_id,
            )
        )
    return out


def release_leases(ctx: OrdersContext, owner: str, name_ids: Sequence[int]) -> None:
    """Give back names whose checks were stopped unfinished (the worker is shutting down), so
    any worker checks them at once instead of when the lease runs out."""
    if not name_ids:
        return
    with ctx.db.transaction() as session:
        session.execute(
            update(OrderName)
            .where(OrderName.id.in_(sorted(name_ids)), OrderName.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )


@functools.cache
def _address_policy(allow_networks: tuple[str, ...]) -> AddressPolicy:
    return AddressPolicy(tuple(ip_network(n) for n in allow_networks))


@functools.cache
def _resolver(address: str | None, timeout: float) -> Resolver:
    return make_address_resolver(address, timeout)


async def run_check(ctx: OrdersContext, check: NameCheck) -> CheckResult:
    policy = ctx.policy
    refused = name_refusal(check.name, policy.names)
    if refused is not None:
        # Placed before a policy change (a new blocklist entry or PSL): never contacted.
        return CheckResult(ok=False, detail=refused.reason)
    if check.method in FILE_METHODS:
        return await check_http_file(
            check.name,
            check.block.file_name,
            check.block.file_content,
            scheme="https" if check.method == "HTTPS_CSR_HASH" else "http",
            http_port=policy.dcv_http_port,
            https_port=policy.dcv_https_port,
            policy=_address_policy(policy.dcv_allow_networks),
            resolve=_resolver(policy.dcv_resolver, policy.dcv_timeout_seconds),
            timeout=policy.dcv_timeout_seconds,
        )
    if check.method == "EMAIL":
        # Imported here: email_dcv uses this module (mark_ready_if_complete).
        from certbroker.orders import email_dcv

        return await asyncio.to_thread(email_dcv.start_email_validation, ctx, check.name_id)
    if check.method == "CNAME_CSR_HASH":
        return await check_cname(
            check.name,
            check.block.dns_host,
            check.block.dns_value,
            resolver_address=policy.dcv_resolver,
            timeout=policy.dcv_timeout_seconds,
        )
    return CheckResult(ok=False, detail=f"{check.method} is not a method this server checks")


def next_delay(policy: Policy, attempts: int) -> timedelta:
    """Back-off after the n-th failed check: the schedule, then its last step forever."""
    schedule = policy.dcv_retry
    return schedule[min(attempts - 1, len(schedule) - 1)]


# Results recorded in one transaction at most: bounds how long one holds the write lock.
RECORD_CHUNK = 50


def record_result(ctx: OrdersContext, check: NameCheck, owner: str, result: CheckResult) -> None:
    record_results(ctx, owner, [(check, result)])


def record_results(
    ctx: OrdersContext, owner: str, results: Sequence[tuple[NameCheck, CheckResult]]
) -> None:
    """Store checks' outcomes, up to RECORD_CHUNK per transaction (docs/PERFORMANCE.md P6);
    each name as if alone: only while `owner` holds its lease, never for a verified name or an
    order no longer validating, with back-off after a failure and an event per new reason."""
    for first in range(0, len(results), RECORD_CHUNK):
        _record_chunk(ctx, owner, results[first : first + RECORD_CHUNK])


def _record_chunk(
    ctx: OrdersContext, owner: str, results: Sequence[tuple[NameCheck, CheckResult]]
) -> None:
    now = ctx.clock.now()
    name_ids = sorted({check.name_id for check, _ in results})
    with ctx.db.transaction() as session:
        order_of = {
            name_id: order_id
            for name_id, order_id in session.execute(
                select(OrderName.id, OrderName.order_id).where(OrderName.id.in_(name_ids))
            )
        }
        # The orders first, then the names (one lock order everywhere), each in id order so
        # two batches cannot wait for each other: checks of two names of one order finishing
        # at once must not both see the other unverified and never mark it ready.
        orders_query = (
            select(Order)
            .where(Order.id.in_(sorted(set(order_of.values()))))
            .order_by(Order.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if any(result.ok for _, result in results):
            # mark_ready_if_complete reads every name of the order: one query, not one each.
            orders_query = orders_query.options(selectinload(Order.names))
        orders = {order.id: order for order in session.scalars(orders_query)}
        names = {
            row.id: row
            for row in session.scalars(
                select(OrderName)
                .where(OrderName.id.in_(name_ids))
                .order_by(OrderName.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        }
        for check, result in results:
            row = names.get(check.name_id)
            order = orders.get(order_of.get(check.name_id, -1))
            _apply_result(ctx, session, order, row, owner, result, now)


def _apply_result(
    ctx: OrdersContext,
    session: Session,
    order: Order | None,
    row: OrderName | None,
    owner: str,
    result: CheckResult,
    now: datetime,
) -> None:
    if row is None or row.lease_owner != owner or row.verified_at is not None:
        return
    if order is None or order.status not in VALIDATING:
        row.lease_owner = None
        row.lease_until = None
        return
    row.attempts += 1
    row.last_checked_at = now
    changed = row.last_result != result.detail
    row.last_result = result.detail
    row.lease_owner = None
    row.lease_until = None
    if not result.ok:
        row.next_check_at = now + next_delay(ctx.policy, row.attempts)
        if changed:  # a new reason, not every hourly repeat of the same one
            record_event(
                session,
                order,
                "domain.check_failed",
                {"domainName": row.name, "error": result.detail},
                now,
            )
        return
    row.verified_at = now
    row.verified_how = row.dcv_method
    row.next_check_at = None
    record_event(session, order, "domain.verified", {"domainName": row.name}, now)
    mark_ready_if_complete(order, now)


def mark_ready_if_complete(order: Order, now: datetime) -> None:
    """Queue issuance once every name is verified and the organization is vetted."""
    if order.ov_status == "done" and all(n.verified_at is not None for n in order.names):
        order.issue_due_at = order.issue_due_at or now


def fail_expired_orders(ctx: OrdersContext, limit: int = 100) -> int:
    """Orders whose validation window ended: FAILED and refunded in one transaction each."""
    return expire_orders(ctx, limit)[0]


def expire_orders(ctx: OrdersContext, limit: int = 100) -> tuple[int, datetime | None]:
    """fail_expired_orders, and when the next window of a PENDING order ends (None: no
    PENDING order), so that a worker scanning on a timer can also come back right then."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        ids = list(
            session.scalars(
                select(Order.id)
                .where(Order.status == Status.PENDING, Order.validation_deadline < now)
                .limit(limit)
            )
        )
        following = session.scalar(
            select(func.min(Order.validation_deadline)).where(
                Order.status == Status.PENDING, Order.validation_deadline >= now
            )
        )
    for order_id in ids:
        with ctx.db.transaction() as session:
            # Locked: an issuance or a second worker finishing this order at the same moment
            # must see FAILED (or make us see COMPLETE), never both.
            order = lock_row(session, Order, order_id)
            if order is None or order.status != Status.PENDING or order.validation_deadline >= now:
                continue
            order.status = Status.FAILED
            order.failure_reason = "the validation window ended before every name was validated"
            order.updated_at = now
            settle_failure(ctx, session, order, now, "validation window ended")
            record_event(session, order, "order.failed", {"reason": order.failure_reason}, now)
    if len(ids) == limit:
        following = now  # more are due than one call takes
    return len(ids), following
