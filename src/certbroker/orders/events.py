"""Outbox rows: written in the transaction of the state change they report (DESIGN.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from certbroker.orders.ids import new_event_id
from certbroker.store.models import Event, Order


def record_event(
    session: Session, order: Order, kind: str, payload: dict[str, Any], now: datetime
) -> Event:
    event = Event(
        event_id=new_event_id(),
        account_id=order.account_id,
        order_id=order.id,
        type=kind,
        payload={"certId": order.cert_id, "status": order.status, **payload},
        created_at=now,
    )
    session.add(event)
    return event
