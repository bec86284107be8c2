"""Queries of the compromised-key list (store/models.py CompromisedKey)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from certbroker.store.models import CompromisedKey


def is_compromised(session: Session | Connection, spki_sha256: str) -> bool:
    found = session.execute(
        select(CompromisedKey.spki_sha256).where(CompromisedKey.spki_sha256 == spki_sha256)
    ).first()
    return found is not None


def among(session: Session | Connection, digests: Iterable[str]) -> set[str]:
    """Which of `digests` are on the list: one query for a batch of orders."""
    wanted = sorted(set(digests))
    if not wanted:
        return set()
    rows = session.execute(
        select(CompromisedKey.spki_sha256).where(CompromisedKey.spki_sha256.in_(wanted))
    )
    return {row[0] for row in rows}


def add(
    session: Session | Connection, spki_sha256: str, *, source: str, note: str, now: datetime
) -> bool:
    """Put a key on the list; False when it was there already (the first entry is kept, and
    a concurrent insert of the same key is not an error)."""
    connection = session.connection() if isinstance(session, Session) else session
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(CompromisedKey)
        .values(spki_sha256=spki_sha256, source=source, note=note[:255], created_at=now)
        .on_conflict_do_nothing(index_elements=["spki_sha256"])
        .returning(CompromisedKey.spki_sha256)
    )
    return connection.execute(statement).first() is not None


def listed(session: Session | Connection) -> list[CompromisedKey]:
    rows = session.execute(select(CompromisedKey).order_by(CompromisedKey.created_at)).scalars()
    return list(rows)
