"""cancel (SPEC 4.5) and the operator's organization decisions: refunds through the ledger."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from certbroker.orders import ledger
from certbroker.orders.accounts import AccountRef
from certbroker.orders.context import OrdersContext
from certbroker.orders.dcv import mark_ready_if_complete
from certbroker.orders.errors import ApiError, Code
from certbroker.orders.events import record_event
from certbroker.orders.states import Operation, Status, require_allowed
from certbroker.orders.views import load_order
from certbroker.store.models import Certificate, Order

# RFC 5280 5.3.1 CRLReason: the subscriber no longer needs the certificate.
REASON_CESSATION_OF_OPERATION = 5


def _refund(session: Session, order: Order, now: datetime, note: str) -> None:
    ledger.post(
        session,
        account_id=order.account_id,
        amount_cents=order.price_cents,
        kind="refund",
        op_key=f"refund:{order.cert_id}",
        order_id=order.id,
        now=now,
        note=note,
    )


def cancel(ctx: OrdersContext, account: AccountRef, cert_id: object, reason: object) -> None:
    now = ctx.clock.now()
    reason_text = str(reason).strip() if reason is not None else ""
    with ctx.db.transaction() as session:
        order = load_order(session, account, cert_id)
        require_allowed(Operation.CANCEL, order.status)
        if not reason_text:
            raise ApiError(Code.INVALID, {"reason": ["reason is required"]})
        if order.status == Status.COMPLETE:
            issued_at = order.completed_at or order.created_at
            if now - issued_at > ctx.policy.cancel_refund_window:
                days = ctx.policy.cancel_refund_window.days
                raise ApiError(
                    Code.CERT_STATE,
                    f"the certificate was issued more than {days} days ago; it can no longer be "
                    "cancelled (use revoke)",
                )
            for cert in session.scalars(
                select(Certificate).where(
                    Certificate.order_id == order.id,
                    Certificate.state == "issued",
                    Certificate.revoked_at.is_(None),
                )
            ):
                cert.revoked_at = now
                cert.revocation_reason = REASON_CESSATION_OF_OPERATION
        order.status = Status.CANCELLED
        order.cancelled_at = now
        order.cancel_reason = reason_text[:1000]
        order.issue_due_at = None
        order.updated_at = now
        _refund(session, order, now, "cancelled")
        record_event(session, order, "order.cancelled", {"reason": order.cancel_reason}, now)


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
        _refund(session, order, now, "organization validation rejected")
        record_event(session, order, "organization.rejected", {"note": note}, now)
