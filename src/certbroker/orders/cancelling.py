"""cancel (SPEC 4.5) and the operator's organization decisions: refunds through the ledger."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from certbroker.orders.accounts import AccountRef
from certbroker.orders.context import OrdersContext
from certbroker.orders.dcv import mark_ready_if_complete
from certbroker.orders.errors import ApiError, Code
from certbroker.orders.events import record_event
from certbroker.orders.lifecycle import publish_revocations
from certbroker.orders.refunds import refund_purchase, settle_failure
from certbroker.orders.states import Operation, Status, require_allowed
from certbroker.orders.upstream_orders import mark_for_deactivation
from certbroker.orders.upstream_revocation import (
    require_revoked_upstream,
    revoke_upstream,
    subscription_order_ids,
    upstream_certificates,
)
from certbroker.orders.views import load_order
from certbroker.store.models import Certificate, Order

# RFC 5280 5.3.1 CRLReason: the subscriber no longer needs the certificate.
REASON_CESSATION_OF_OPERATION = 5


def _subscription_start(session: Session, order: Order) -> datetime | None:
    """When the purchase's first certificate was issued (None: never issued, full refund)."""
    if order.subscription_cert_id and order.subscription_cert_id != order.cert_id:
        first = session.scalar(
            select(Order.completed_at).where(Order.cert_id == order.subscription_cert_id)
        )
        if first is not None:
            return first
    return order.completed_at


def cancel(ctx: OrdersContext, account: AccountRef, cert_id: object, reason: object) -> None:
    now = ctx.clock.now()
    reason_text = str(reason).strip() if reason is not None else ""
    with ctx.db.read() as session:
        order = load_order(session, account, cert_id)
        require_allowed(Operation.CANCEL, order.status)
        if not reason_text:
            raise ApiError(Code.INVALID, {"reason": ["reason is required"]})
        upstream = upstream_certificates(session, subscription_order_ids(session, order))
    # An upstream's certificates are revoked there first, outside the transaction.
    done = revoke_upstream(ctx, upstream, REASON_CESSATION_OF_OPERATION) if upstream else set()
    with ctx.db.transaction() as session:
        order = load_order(session, account, cert_id, lock=True)
        require_allowed(Operation.CANCEL, order.status)
        if not reason_text:
            raise ApiError(Code.INVALID, {"reason": ["reason is required"]})
        issued_at = _subscription_start(session, order)
        if issued_at is not None and now - issued_at > ctx.policy.cancel_refund_window:
            days = ctx.policy.cancel_refund_window.days
            raise ApiError(
                Code.CERT_STATE,
                f"the certificate was issued more than {days} days ago; it can no longer be "
                "cancelled (use revoke)",
            )
        # The purchase ends: every certificate of it (earlier certIds included) is revoked.
        for cert in session.scalars(
            select(Certificate)
            .join(Order, Order.id == Certificate.order_id)
            .where(
                Order.subscription_cert_id == (order.subscription_cert_id or order.cert_id),
                Certificate.state == "issued",
                Certificate.revoked_at.is_(None),
            )
        ):
            require_revoked_upstream([cert], done)
            cert.revoked_at = now
            cert.revocation_reason = REASON_CESSATION_OF_OPERATION
        # A signature in progress for this order must never be stored now.
        for cert in session.scalars(
            select(Certificate).where(
                Certificate.order_id == order.id, Certificate.state == "signing"
            )
        ):
            cert.state = "abandoned"
        if order.status == Status.PENDING:
            # RFC 8555 7.5.2: the worker deactivates its upstream authorizations once this
            # commits (outside any transaction; an unreachable upstream is retried there).
            mark_for_deactivation(session, order.id, now)
        order.renew_due_at = None
        order.status = Status.CANCELLED
        order.cancelled_at = now
        order.cancel_reason = reason_text[:1000]
        order.issue_due_at = None
        order.updated_at = now
        refund_purchase(session, order, now, "cancelled")
        record_event(session, order, "order.cancelled", {"reason": order.cancel_reason}, now)
    publish_revocations(ctx)


def _pending_ov_order(session: Session, cert_id: str) -> Order:
    order = session.scalar(select(Order).where(Order.cert_id == cert_id))
    if order is None:
        raise LookupError(f"no order {cert_id}")
    require_allowed(Operation.OV_DECISION, order.status)
    if order.validation_level == "dv":
        raise ApiError(Code.CERT_STATE, f"{cert_id} is a DV order: there is no organization to vet")
    if order.ov_status != "processing":
        raise ApiError(
            Code.CERT_STATE, f"the organization of {cert_id} is already {order.ov_status}"
        )
    return order


def approve_organization(ctx: OrdersContext, cert_id: str, note: str) -> None:
    """Operator vetted the company data; issuance follows once DCV is complete too."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        order = _pending_ov_order(session, cert_id)
        order.ov_status = "done"
        order.ov_note = note or None
        order.updated_at = now
        record_event(session, order, "organization.approved", {"note": note}, now)
        mark_ready_if_complete(order, now)


def reject_organization(ctx: OrdersContext, cert_id: str, note: str) -> None:
    """Operator refused the company data: the order fails and is refunded."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        order = _pending_ov_order(session, cert_id)
        order.ov_status = "failed"
        order.ov_note = note or None
        order.status = Status.FAILED
        order.failure_reason = (
            f"organization validation rejected: {note}"
            if note
            else ("organization validation rejected")
        )
        order.issue_due_at = None
        order.updated_at = now
        settle_failure(ctx, session, order, now, "organization validation rejected")
        record_event(session, order, "organization.rejected", {"note": note}, now)
