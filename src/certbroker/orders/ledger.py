"""Prepaid balance as a ledger: signed entries keyed to the operation that caused them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from certbroker.store.models import Account, LedgerEntry

_BALANCE = select(Account.balance_cents).where(Account.id == bindparam("account"))


def balance_cents(session: Session, account_id: int) -> int:
    """The account's balance as `post` keeps it (one row read, whatever the ledger's size)."""
    balance = session.connection().execute(_BALANCE, {"account": account_id}).scalar()
    return int(balance or 0)


def ledger_total_cents(session: Session, account_id: int) -> int:
    """The sum of the ledger itself: what `balance_cents` must always equal (checks, audits)."""
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount_cents), 0)).where(
            LedgerEntry.account_id == account_id
        )
    )
    return int(total or 0)


_INSERT = insert(LedgerEntry)
_ADD_TO_BALANCE = (
    update(Account)
    .where(Account.id == bindparam("account"))
    .values(balance_cents=Account.balance_cents + bindparam("amount"))
)


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
) -> None:
    """Add one entry and move the balance by it, in the session's transaction: both are kept
    or neither. `op_key` is unique: posting the same operation twice raises IntegrityError
    (at once: the statements run now, not at the next flush)."""
    connection = session.connection()
    connection.execute(
        _INSERT,
        {
            "account_id": account_id,
            "amount_cents": amount_cents,
            "kind": kind,
            "op_key": op_key,
            "order_id": order_id,
            "note": note[:255],
            "created_at": now,
        },
    )
    connection.execute(_ADD_TO_BALANCE, {"account": account_id, "amount": amount_cents})


def format_cents(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"
