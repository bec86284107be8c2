"""Issuance, crash-safe the way Boulder does it (docs/ISSUANCE-CYCLE.md).

1. In one transaction: allocate the serial and store the to-be-signed data (row `signing`).
2. Sign in memory.
3. In one transaction: store the certificate, complete the order, write the event.
A crash between 1 and 3 leaves a `signing` row whose signature never left the process; the retry
signs the same serial and validity again, so no certificate exists that the database does not
know, and an order never gets two. The worker takes each step for its whole batch of orders in
one transaction (`issue_orders`), which keeps all of this.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import Select, bindparam, func, select, update
from sqlalchemy.orm import Session

from certbroker import metrics
from certbroker.issuance.builtin import LeafRequest
from certbroker.issuance.profile import SubjectOrganization
from certbroker.issuance.validity import leaf_not_after
from certbroker.orders.context import OrdersContext
from certbroker.orders.events import record_event
from certbroker.orders.reuse import still_fresh
from certbroker.orders.states import VALIDATING, Status
from certbroker.pki.bundles import make_jks, make_pkcs12, random_password
from certbroker.pki.keys import PrivateKey, load_private_key_pem
from certbroker.store.db import lock_row
from certbroker.store.models import Certificate, Order, OrderName, UtcDateTime
from certbroker.validation.caa import check_caa

log = structlog.get_logger("certbroker.issuance")

# Marks a name's last result as a CAA refusal (shown in collect until issuance succeeds).
CAA_PREFIX = "CAA: "

# Certificates start a little in the past so that clients with slow clocks accept them.
BACKDATE = timedelta(minutes=5)


def add_years(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year + years, day=28)


@dataclass(frozen=True)
class ReadyOrder:
    """An order leased for signing, with the names whose CAA must allow us first (none for the
    untrusted sandbox CA). Read at the claim: names are only ever removed from an order, so a
    name removed meanwhile is checked needlessly and none goes unchecked."""

    order_id: int
    caa_names: tuple[str, ...]


def claim_ready_orders(ctx: OrdersContext, owner: str, limit: int = 20) -> list[int]:
    """Lease orders that are ready to sign (PostgreSQL: SKIP LOCKED lets workers share)."""
    return [ready.order_id for ready in claim_issuance(ctx, owner, limit)]


@functools.cache
def _ready_orders(limit: int) -> Select[int]:
    """The claim's query, built once: it runs on every pass (`now` is a parameter)."""
    now = bindparam("now", type_=UtcDateTime)
    return (
        select(Order.id)
        .where(
            Order.status.in_(VALIDATING),
            Order.issue_due_at.is_not(None),
            Order.issue_due_at <= now,
            (Order.lease_until.is_(None)) | (Order.lease_until < now),
        )
        .order_by(Order.issue_due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def claim_issuance(ctx: OrdersContext, owner: str, limit: int = 20) -> list[ReadyOrder]:
    """claim_ready_orders with each order's CAA names, in the claim's one transaction."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        ids = list(session.scalars(_ready_orders(limit), {"now": now}))
        if not ids:
            return []
        # An earlier owner's lease ran out (it crashed or stalled): its work is taken over.
        taken = session.scalar(
            select(func.count()).where(Order.id.in_(ids), Order.lease_owner.is_not(None))
        )
        metrics.lease_taken_over("issuance", int(taken or 0))
        session.execute(
            update(Order)
            .where(Order.id.in_(ids))
            .values(lease_owner=owner, lease_until=now + ctx.policy.lease)
        )
        names: dict[int, list[str]] = {order_id: [] for order_id in ids}
        for order_id, name in session.execute(
            select(OrderName.order_id, OrderName.name)
            .join(Order, Order.id == OrderName.order_id)
            .where(OrderName.order_id.in_(ids), Order.sandbox.is_(False))
            .order_by(OrderName.id)
        ):
            names[order_id].append(name)
    return [ReadyOrder(order_id, tuple(names[order_id])) for order_id in ids]


def organization_of(order: Order) -> SubjectOrganization | None:
    if order.validation_level == "dv":
        return None
    info = order.apply_params.get("organizationInfo") or {}
    if not isinstance(info, dict):
        return None

    def opt(key: str) -> str | None:
        value = info.get(key)
        return str(value) if value else None

    return SubjectOrganization(
        name=str(info.get("organizationName", "")),
        country=str(info.get("organizationCountry", "")).upper(),
        state=opt("organizationState"),
        locality=opt("organizationCity"),
        postal_code=opt("organizationPostCode"),
        street=opt("organizationAddress"),
        registration_number=opt("organizationRegNumber"),
        jurisdiction_country=str(info.get("organizationCountry", "")).upper() or None,
        business_category="Private Organization" if order.validation_level == "ev" else None,
    )


def subscription_end(order: Order, start: datetime) -> datetime:
    """dueDate: start + purchased years (+ carried-over or bonus days); trials run trialDays."""
    start = start.replace(microsecond=0)
    if order.trial_days:
        return start + timedelta(days=order.trial_days)
    return add_years(start, order.years) + timedelta(days=order.bonus_days or 0)


def next_renewal(ctx: OrdersContext, cert: Certificate, due: datetime | None) -> datetime | None:
    """When to reissue inside the subscription: a lead time before the certificate ends (at most
    a third of its life, so short certificates are not replaced at once); None at the end."""
    if due is None or due - cert.not_after < timedelta(minutes=1):
        return None
    lead = min(ctx.policy.renew_lead, (cert.not_after - cert.not_before) / 3)
    return (cert.not_after - lead).replace(microsecond=0)


def expire_stale_validations(order: Order, now: datetime) -> list[str]:
    """BR 4.2.1: validation data older than the reuse period in force cannot back a certificate.
    Returns the names that must be validated again."""
    stale: list[str] = []
    for name in order.names:
        if name.verified_at is not None and not still_fresh(name.verified_at, now):
            name.last_result = (
                f"the validation of {name.verified_at:%Y-%m-%d} is older than the reuse period "
                "in force; checking again"
            )
            name.verified_at = None
            name.verified_how = None
            name.attempts = 0
            name.next_check_at = now
            stale.append(name.name)
    return stale


def _prepare(
    ctx: OrdersContext, session: Session, order: Order, now: datetime
) -> Certificate | None:
    if order.status not in VALIDATING or order.ov_status != "done":
        return None
    if not order.sandbox:
        expire_stale_validations(order, now)
    if any(name.verified_at is None for name in order.names):
        return None
    pending = session.scalar(
        select(Certificate).where(Certificate.order_id == order.id, Certificate.state == "signing")
    )
    if pending is not None:
        return pending  # an earlier attempt crashed after step 1: sign the same data again
    generation = 1 + len(
        session.scalars(select(Certificate.id).where(Certificate.order_id == order.id)).all()
    )
    # X.509 times have whole seconds: store exactly what the certificate will say.
    not_before = (now - BACKDATE).replace(microsecond=0)
    due = order.due_at or subscription_end(order, now)
    cert = Certificate(
        order_id=order.id,
        generation=generation,
        serial_hex=format(ctx.ca.new_serial(), "x"),
        issuer="sandbox" if order.sandbox else "production",
        state="signing",
        not_before=not_before,
        not_after=leaf_not_after(not_before, due),
        created_at=now,
    )
    order.due_at = due
    session.add(cert)
    session.flush()
    return cert


def _held_key(ctx: OrdersContext, order: Order) -> PrivateKey | None:
    if order.key_encrypted is None:
        return None
    pem = ctx.box.decrypt(order.key_encrypted, context=order.cert_id.encode("ascii"))
    # Keys in this column were made or checked by certbroker: skip the slow RSA re-validation.
    return load_private_key_pem(pem, trusted=True)


def _bundles(ctx: OrdersContext, order: Order, key: PrivateKey, leaf: x509.Certificate) -> str:
    issuer = ctx.ca.issuer(order.sandbox)
    chain = [issuer.certificate]
    p12_pass, jks_pass = random_password(), random_password()
    bundle = {
        "pkcs12": base64.b64encode(
            make_pkcs12(key, leaf, chain, p12_pass, friendly_name=order.cert_id)
        ).decode("ascii"),
        "pkcsPass": p12_pass,
        "jks": base64.b64encode(make_jks(key, leaf, chain, jks_pass, alias=order.cert_id)).decode(
            "ascii"
        ),
        "jksPass": jks_pass,
    }
    # The bundles hold the private key: encrypted at rest like the key itself.
    return ctx.box.encrypt(
        json.dumps(bundle).encode("utf-8"), context=f"bundle:{order.cert_id}".encode("ascii")
    )


@dataclass(frozen=True)
class _ToSign:
    order_id: int
    cert_row_id: int
    request: LeafRequest


def issue_order(ctx: OrdersContext, order_id: int, owner: str) -> bool:
    """Sign the order's certificate if it is still ready and ours; True when it was issued."""
    return issue_orders(ctx, [order_id], owner)[order_id]


def issue_orders(ctx: OrdersContext, order_ids: Sequence[int], owner: str) -> dict[int, bool]:
    """issue_order for several orders with the module docstring's steps taken together: step 1
    for all of them in one transaction, then each signature, then step 3 for all in one
    transaction. Every `signing` row is committed before any signature is made, so a crash
    still leaves only rows to sign again. Each order runs in a savepoint of its own: one
    that fails (logged) is rolled back alone and keeps its lease until it runs out, like a
    failure of issue_order, while the others go on. Returns order id -> issued."""
    now = ctx.clock.now()
    issued = dict.fromkeys(order_ids, False)
    to_sign: list[_ToSign] = []
    with ctx.db.transaction() as session:
        for order_id in sorted(issued):  # one lock order for batches of several workers
            try:
                with session.begin_nested():
                    item = _start_signing(ctx, session, order_id, owner, now)
            except Exception:
                log.exception("issuance failed", order_id=order_id, step="prepare")
                continue
            if item is not None:
                to_sign.append(item)
    signed: list[tuple[_ToSign, x509.Certificate]] = []
    for item in to_sign:
        try:
            signed.append((item, ctx.ca.sign(item.request)))
        except Exception:
            log.exception("issuance failed", order_id=item.order_id, step="sign")
    if not signed:
        return issued
    with ctx.db.transaction() as session:
        for item, leaf in signed:
            try:
                with session.begin_nested():
                    issued[item.order_id] = _store_signed(ctx, session, item, leaf, owner, now)
            except Exception:
                log.exception("issuance failed", order_id=item.order_id, step="store")
    return issued


def _start_signing(
    ctx: OrdersContext, session: Session, order_id: int, owner: str, now: datetime
) -> _ToSign | None:
    """Step 1: the `signing` row and what to sign, or None (not ours, or not ready any more)."""
    # Row-locked (PostgreSQL): a worker that took over an expired lease waits here instead of
    # allocating a second serial beside ours.
    order = lock_row(session, Order, order_id)
    if order is None or order.lease_owner != owner:
        return None
    cert = _prepare(ctx, session, order, now)
    if cert is None:
        order.issue_due_at = None
        order.lease_owner = order.lease_until = None
        return None
    request = LeafRequest(
        serial=int(cert.serial_hex, 16),
        public_key=x509.load_pem_x509_csr(order.csr_pem.encode("ascii")).public_key(),
        names=[n.name for n in order.names],
        not_before=cert.not_before,
        not_after=cert.not_after,
        validation_level=order.validation_level,
        organization=organization_of(order),
        sandbox=order.sandbox,
    )
    return _ToSign(order_id=order_id, cert_row_id=cert.id, request=request)


def _store_signed(
    ctx: OrdersContext,
    session: Session,
    item: _ToSign,
    leaf: x509.Certificate,
    owner: str,
    now: datetime,
) -> bool:
    """Step 3: store the certificate and complete the order; True when it was issued."""
    # The order's row lock puts us after a cancel or a competing issuance of this order,
    # and the reads below see what they committed.
    order = lock_row(session, Order, item.order_id)
    cert = lock_row(session, Certificate, item.cert_row_id)
    if order is None or cert is None or cert.state != "signing":
        return False
    if order.lease_owner != owner:
        return False  # taken over: the new owner signs this serial again and stores it
    if order.status not in VALIDATING:
        # Cancelled or failed while we signed: this signature never left the process.
        cert.state = "abandoned"
        order.issue_due_at = None
        order.lease_owner = order.lease_until = None
        return False
    first = order.status == Status.PENDING
    key = _held_key(ctx, order)
    issuer = ctx.ca.issuer(order.sandbox)
    cert.pem = leaf.public_bytes(Encoding.PEM).decode("ascii")
    cert.chain_pem = issuer.chain_pem
    cert.state = "issued"
    cert.issued_at = now
    if key is not None:
        cert.bundles_encrypted = _bundles(ctx, order, key, leaf)
    order.status = Status.COMPLETE
    order.completed_at = order.completed_at or now
    order.issue_due_at = None
    order.lease_owner = None
    order.lease_until = None
    order.updated_at = now
    order.renew_due_at = next_renewal(ctx, cert, order.due_at)
    for row in order.names:
        if (row.last_result or "").startswith(CAA_PREFIX):
            row.last_result = "CAA allows issuance"
    record_event(
        session,
        order,
        "certificate.issued" if first else "certificate.reissued",
        {"serial": cert.serial_hex, "generation": cert.generation, "automatic": not first},
        now,
    )
    return True


async def caa_refusals(
    ctx: OrdersContext, orders: Sequence[ReadyOrder]
) -> dict[int, dict[str, str]]:
    """BR 3.2.2.8: CAA checked for every name right before issuance (well inside 8 hours).
    Every name of the batch is looked up at once, each only once; returns, for each order CAA
    refuses, name -> reason. Nothing to look up (sandbox orders): no await at all."""
    names = sorted({name for order in orders for name in order.caa_names})
    if not names:
        return {}
    results = await asyncio.gather(
        *(
            check_caa(
                name,
                issuer_domains=ctx.policy.caa_domains,
                resolver_address=ctx.policy.dcv_resolver,
                timeout=ctx.policy.dcv_timeout_seconds,
            )
            for name in names
        )
    )
    refused = {
        name: result.detail for name, result in zip(names, results, strict=True) if not result.ok
    }
    out: dict[int, dict[str, str]] = {}
    for order in orders:
        failures = {name: refused[name] for name in order.caa_names if name in refused}
        if failures:
            out[order.order_id] = failures
    return out


def defer_for_caa(ctx: OrdersContext, order_id: int, owner: str, failures: dict[str, str]) -> None:
    """CAA refused (or could not be read): say so on each name and try again later."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        order = lock_row(session, Order, order_id)
        if order is None or order.lease_owner != owner:
            return
        for row in order.names:
            if row.name in failures:
                detail = f"{CAA_PREFIX}{failures[row.name]}"
                if row.last_result != detail:
                    record_event(
                        session,
                        order,
                        "domain.check_failed",
                        {"domainName": row.name, "error": detail},
                        now,
                    )
                row.last_result = detail
        order.issue_due_at = now + ctx.policy.caa_retry
        order.lease_owner = None
        order.lease_until = None
