"""Multi-year subscriptions: automatic reissue ahead of each certificate's end, the notice that
a subscription ends, and expiry (BR 6.3.2 caps each certificate, not the purchase)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from certbroker.orders.context import OrdersContext
from certbroker.orders.dcv import mark_ready_if_complete
from certbroker.orders.events import record_event
from certbroker.orders.issuing import expire_stale_validations
from certbroker.orders.lifecycle import renew_upstream
from certbroker.orders.states import Status
from certbroker.orders.upstream_rules import DNS01_METHOD
from certbroker.store.db import lock_row
from certbroker.store.models import Order


def _for_each_due(
    ctx: OrdersContext,
    where: list[Any],
    still_due: Callable[[Order], bool],
    act: Callable[[Session, Order], None],
    limit: int,
) -> int:
    """Select due orders, then act on each in its own transaction under the row lock, after
    checking again that it is still due (another worker or a call may have got there first)."""
    with ctx.db.transaction() as session:
        ids = list(session.scalars(select(Order.id).where(*where).limit(limit)))
    for order_id in ids:
        with ctx.db.transaction() as session:
            order = lock_row(session, Order, order_id)
            if order is not None and still_due(order):
                act(session, order)
    return len(ids)


def start_due_reissues(ctx: OrdersContext, limit: int = 50) -> int:
    """Orders whose certificate nears its end inside a running subscription: reissue under the
    same certId, reusing validation while the reuse period allows, else validating again. An
    upstream ACME product's certificate is reissued as a successor order with a new upstream
    order (RFC 9773 `replaces`), since only the upstream CA can validate and sign it."""
    now = ctx.clock.now()

    def reissue(session: Session, order: Order) -> None:
        order.renew_due_at = None
        successor = renew_upstream(ctx, session, order)
        if successor is not None:
            if any(n.dcv_method != DNS01_METHOD for n in successor.names):
                # http-01: the new upstream order brings new tokens the customer publishes.
                record_event(
                    session,
                    order,
                    "subscription.dcv_required",
                    {
                        "domains": [n.name for n in successor.names],
                        "newCertId": successor.cert_id,
                        "reason": "the upstream CA validates every renewal again",
                    },
                    now,
                )
            return
        stale = [] if order.sandbox else expire_stale_validations(order, now)
        if stale:
            reason = "the reuse period of the earlier validation has ended"
            record_event(
                session,
                order,
                "subscription.dcv_required",
                {"domains": stale, "reason": reason},
                now,
            )
        mark_ready_if_complete(order, now)

    return _for_each_due(
        ctx,
        [
            Order.status == Status.COMPLETE,
            Order.renew_due_at.is_not(None),
            Order.renew_due_at <= now,
        ],
        lambda o: (
            o.status == Status.COMPLETE and o.renew_due_at is not None and o.renew_due_at <= now
        ),
        reissue,
        limit,
    )


def notify_ending(ctx: OrdersContext, limit: int = 100) -> int:
    """One `subscription.ending` event per purchase, the lead time before its dueDate."""
    now = ctx.clock.now()
    horizon = now + ctx.policy.renew_lead

    def notify(session: Session, order: Order) -> None:
        order.subscription_notice_sent = True
        due = order.due_at.isoformat() if order.due_at else ""
        record_event(session, order, "subscription.ending", {"dueDate": due}, now)

    return _for_each_due(
        ctx,
        [
            Order.status == Status.COMPLETE,
            Order.due_at.is_not(None),
            Order.due_at <= horizon,
            Order.subscription_notice_sent.is_(False),
        ],
        lambda o: not o.subscription_notice_sent and o.due_at is not None,
        notify,
        limit,
    )


def expire_ended(ctx: OrdersContext, limit: int = 100) -> int:
    """A purchase whose dueDate passed is EXPIRED."""
    now = ctx.clock.now()

    def expire(session: Session, order: Order) -> None:
        order.status = Status.EXPIRED
        order.renew_due_at = None
        order.updated_at = now
        record_event(session, order, "certificate.expired", {}, now)

    return _for_each_due(
        ctx,
        [Order.status == Status.COMPLETE, Order.due_at.is_not(None), Order.due_at <= now],
        lambda o: o.status == Status.COMPLETE and o.due_at is not None and o.due_at <= now,
        expire,
        limit,
    )


def run_subscription_steps(ctx: OrdersContext) -> int:
    return start_due_reissues(ctx) + notify_ending(ctx) + expire_ended(ctx)
