"""Prepaid balance as a ledger: signed entries keyed to the operation that caused them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from certbroker.store.models import LedgerEntry


def balance_cents(session: Session, account_id: int) -> int:
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount_cents), 0)).where(
            LedgerEntry.account_id == account_id
        )
    )
    return int(total or 0)


def post(
    session: Session,
    *,
    account_id: int,
    amount_cents: int,
    kind: str,
    op_key: str,
    now: datetime,
    order_id: int | None = None,
    note: str = "",
) -> LedgerEntry:
    """Add one entry. `op_key` is unique: posting the same operation twice violates it."""
    entry = LedgerEntry(
        account_id=account_id,
        amount_cents=amount_cents,
        kind=kind,
        op_key=op_key,
        order_id=order_id,
        note=note[:255],
        created_at=now,
    )
    session.add(entry)
    return entry


def format_cents(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"
