"""Outbox rows: written in the transaction of the state change they report (DESIGN.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from certbroker.orders.ids import new_event_id
from certbroker.store.models import Event, Order

# Built once; a Core insert on the session's connection costs a fraction of an ORM flush and
# every order writes several events (docs/PERFORMANCE.md).
INSERT_EVENT = insert(Event)


def record_event(
    session: Session, order: Order, kind: str, payload: dict[str, Any], now: datetime
) -> None:
    """Write the event now, in the session's transaction (the order must have its id)."""
    session.connection().execute(
        INSERT_EVENT,
        event_values(
            account_id=order.account_id,
            order_id=order.id,
            cert_id=order.cert_id,
            status=order.status,
            kind=kind,
            payload=payload,
            now=now,
        ),
    )


def event_values(
    *,
    account_id: int,
    order_id: int,
    cert_id: str,
    status: str,
    kind: str,
    payload: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """One outbox row for INSERT_EVENT: record_event writes one, place and issuance write theirs
    without ORM objects (issuance a batch in one executemany)."""
    return {
        "event_id": new_event_id(),
        "account_id": account_id,
        "order_id": order_id,
        "type": kind,
        "payload": {"certId": cert_id, "status": status, **payload},
        "created_at": now,
        "delivered_at": None,
        "webhook_state": None,
    }
