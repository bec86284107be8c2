"""Issuance, crash-safe the way Boulder does it (docs/ISSUANCE-CYCLE.md).

1. In one transaction: allocate the serial and store the to-be-signed data (row `signing`).
2. Sign in memory.
3. In one transaction: store the certificate, complete the order, write the event.
A crash between 1 and 3 leaves a `signing` row whose signature never left the process; the retry
signs the same serial and validity again, so no certificate exists that the database does not
know, and an order never gets two.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import func, select, update
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
from certbroker.store.models import Certificate, Order
from certbroker.validation.caa import check_caa

# Marks a name's last result as a CAA refusal (shown in collect until issuance succeeds).
CAA_PREFIX = "CAA: "

# Certificates start a little in the past so that clients with slow clocks accept them.
BACKDATE = timedelta(minutes=5)


def add_years(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year + years, day=28)


def claim_ready_orders(ctx: OrdersContext, owner: str, limit: int = 20) -> list[int]:
    """Lease orders that are ready to sign (PostgreSQL: SKIP LOCKED lets workers share)."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        ids = list(
            session.scalars(
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
        )
        if ids:
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
    return ids


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


def issue_order(ctx: OrdersContext, order_id: int, owner: str) -> bool:
    """Sign the order's certificate if it is still ready and ours; True when it was issued."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        # Row-locked (PostgreSQL): a worker that took over an expired lease waits here instead of
        # allocating a second serial beside ours.
        order = lock_row(session, Order, order_id)
        if order is None or order.lease_owner != owner:
            return False
        cert = _prepare(ctx, session, order, now)
        if cert is None:
            order.issue_due_at = None
            order.lease_owner = order.lease_until = None
            return False
        names = [n.name for n in order.names]
        request = LeafRequest(
            serial=int(cert.serial_hex, 16),
            public_key=x509.load_pem_x509_csr(order.csr_pem.encode("ascii")).public_key(),
            names=names,
            not_before=cert.not_before,
            not_after=cert.not_after,
            validation_level=order.validation_level,
            organization=organization_of(order),
            sandbox=order.sandbox,
        )
        cert_row_id = cert.id
    leaf = ctx.ca.sign(request)
    with ctx.db.transaction() as session:
        # The order's row lock puts us after a cancel or a competing issuance of this order,
        # and the reads below see what they committed.
        order = lock_row(session, Order, order_id)
        cert = lock_row(session, Certificate, cert_row_id)
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


def caa_names(ctx: OrdersContext, order_id: int) -> list[str]:
    """Names whose CAA must allow us before signing; none for the untrusted sandbox CA."""
    with ctx.db.transaction() as session:
        order = session.get(Order, order_id)
        if order is None or order.sandbox:
            return []
        return [n.name for n in order.names]


async def caa_failures(ctx: OrdersContext, order_id: int) -> dict[str, str]:
    """BR 3.2.2.8: CAA checked for every name right before issuance (well inside 8 hours)."""
    names = await asyncio.to_thread(caa_names, ctx, order_id)
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
    return {
        name: result.detail for name, result in zip(names, results, strict=True) if not result.ok
    }


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
