"""The audit log: who changed what, from where, with which result. Append-only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from certbroker.store.models import AuditEntry

MAX_LIST = 10_000
# Built once: every state-changing call writes one row, and a Core insert on the session's
# connection costs a fraction of an ORM flush (docs/PERFORMANCE.md). Still insert-only.
_INSERT = insert(AuditEntry)


@dataclass(frozen=True)
class AuditRecord:
    id: int
    created_at: datetime
    account_id: int | None
    token_id: int | None
    source_address: str
    action: str
    cert_id: str | None
    code: int


def record(
    session: Session,
    *,
    now: datetime,
    account_id: int | None,
    token_id: int | None,
    source_address: str,
    action: str,
    cert_id: str | None,
    code: int,
) -> None:
    """Append one entry. Values are clipped to their columns: an entry is never refused."""
    session.connection().execute(
        _INSERT,
        {
            "created_at": now,
            "account_id": account_id,
            "token_id": token_id,
            "source_address": source_address[:64],
            "action": action[:40],
            "cert_id": cert_id[:64] if cert_id else None,
            "code": code,
        },
    )


def list_entries(
    session: Session,
    *,
    account_id: int | None = None,
    cert_id: str | None = None,
    limit: int = 50,
) -> list[AuditRecord]:
    """The newest entries first, optionally of one account or one certId."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(max(1, min(limit, MAX_LIST)))
    if account_id is not None:
        query = query.where(AuditEntry.account_id == account_id)
    if cert_id is not None:
        query = query.where(AuditEntry.cert_id == cert_id)
    return [
        AuditRecord(
            id=row.id,
            created_at=row.created_at,
            account_id=row.account_id,
            token_id=row.token_id,
            source_address=row.source_address,
            action=row.action,
            cert_id=row.cert_id,
            code=row.code,
        )
        for row in session.scalars(query)
    ]
