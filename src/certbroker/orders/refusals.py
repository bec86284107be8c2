"""What happens when the CA refuses to sign an order's certificate (issuance.SigningRefused).

A refusal does not go away by retrying, so the order must not stay `processing` for ever with
the reason only in the server log. In one transaction per order: the `signing` row is abandoned
(its serial was never signed by the issuer key), the reason is kept for `collect` (`lastError`),
and then
- a new order (PENDING) becomes FAILED and is settled like any failure (a purchase refunded,
  keyed `refund:<certId>` so a retry cannot refund twice; a reissue or replace reinstates the
  certificate it superseded) with an `order.failed` event;
- a subscription's automatic reissue (COMPLETE) stays COMPLETE with its current certificate,
  which is still valid: the reissue is dropped, not retried and not refunded (the purchase is
  still being served); a `subscription.reissue_failed` event tells the customer, who can
  `reissue` with another request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from certbroker.orders.context import OrdersContext
from certbroker.orders.events import record_event
from certbroker.orders.refunds import settle_failure
from certbroker.orders.states import VALIDATING, Status
from certbroker.store.db import lock_row
from certbroker.store.models import Certificate, Order

log = structlog.get_logger("certbroker.issuance")

FAILURE_PREFIX = "the CA refused to sign the certificate: "


@dataclass(frozen=True)
class Refusal:
    order_id: int
    serial_hex: str
    reason: str


def settle_refusals(
    ctx: OrdersContext, refusals: Sequence[Refusal], owner: str, now: datetime
) -> set[int]:
    """Settle each refusal in its own transaction; returns the orders settled. One that fails
    (a database error) keeps its `signing` row and lease: it is signed, refused and settled
    again later."""
    settled: set[int] = set()
    for refusal in refusals:
        try:
            with ctx.db.transaction() as session:
                if _settle(ctx, session, refusal, owner, now):
                    settled.add(refusal.order_id)
        except Exception:
            log.exception("issuance failed", order_id=refusal.order_id, step="refused")
    return settled


def _settle(
    ctx: OrdersContext, session: Session, refusal: Refusal, owner: str, now: datetime
) -> bool:
    order = lock_row(session, Order, refusal.order_id)
    if order is None or order.lease_owner != owner or order.status not in VALIDATING:
        # Taken over (its new owner meets the same refusal) or ended meanwhile (a cancel
        # abandons the row itself).
        return False
    row = session.scalars(
        select(Certificate)
        .where(Certificate.serial_hex == refusal.serial_hex, Certificate.state == "signing")
        .with_for_update()
    ).one_or_none()
    if row is not None:
        row.state = "abandoned"
    order.last_error = refusal.reason
    order.issue_due_at = None
    order.lease_owner = None
    order.lease_until = None
    order.updated_at = now
    if order.status == Status.PENDING:
        order.status = Status.FAILED
        order.failure_reason = FAILURE_PREFIX + refusal.reason
        settle_failure(ctx, session, order, now, "signing refused")
        record_event(session, order, "order.failed", {"reason": order.failure_reason}, now)
        log.warning(
            "signing refused: order failed",
            order_id=order.id,
            cert_id=order.cert_id,
            reason=refusal.reason,
        )
    else:
        record_event(session, order, "subscription.reissue_failed", {"reason": refusal.reason}, now)
        log.warning(
            "signing refused: automatic reissue dropped, current certificate kept",
            order_id=order.id,
            cert_id=order.cert_id,
            reason=refusal.reason,
        )
    return True
