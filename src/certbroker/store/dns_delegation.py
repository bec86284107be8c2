"""Queries of the delegation tables (store/models.py DnsDelegation, DnsTxt).

Names are stored lower case without the final dot; callers pass them that way
(dns_delegation.labels.base_domain, `fqdn_key`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import Connection, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from certbroker.store.models import DnsDelegation, DnsTxt


def fqdn_key(name: str) -> str:
    """DNS names compare case-insensitively (RFC 4343): the stored form of `name`."""
    return name.strip().lower().rstrip(".")


def _connection(session: Session | Connection) -> Connection:
    return session.connection() if isinstance(session, Session) else session


def _insert(connection: Connection) -> Callable[..., postgresql.Insert | sqlite.Insert]:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert  # type: ignore[no-any-return]


def delegation(session: Session | Connection, account_id: int, base: str) -> DnsDelegation | None:
    row = session.execute(
        select(DnsDelegation).where(
            DnsDelegation.account_id == account_id, DnsDelegation.base_domain == base
        )
    ).first()
    return None if row is None else row[0]


def label_of(session: Session | Connection, account_id: int, base: str) -> str | None:
    """The stored label of the account's delegation for `base` (Core or ORM callers)."""
    label = session.execute(
        select(DnsDelegation.label).where(
            DnsDelegation.account_id == account_id, DnsDelegation.base_domain == base
        )
    ).scalar()
    return None if label is None else str(label)


def ensure_delegation(
    session: Session, account_id: int, base: str, label: str, *, now: datetime
) -> DnsDelegation:
    """The account's delegation for `base`, created with `label` when there is none. A
    concurrent creation is not an error: the first row wins and is returned."""
    connection = session.connection()
    statement = (
        _insert(connection)(DnsDelegation)
        .values(account_id=account_id, base_domain=base, label=label, created_at=now)
        .on_conflict_do_nothing(index_elements=["account_id", "base_domain"])
    )
    connection.execute(statement)
    found = delegation(session, account_id, base)
    assert found is not None
    return found


def by_label(session: Session | Connection, label: str) -> DnsDelegation | None:
    row = session.execute(select(DnsDelegation).where(DnsDelegation.label == label)).first()
    return None if row is None else row[0]


def replace_txt(
    session: Session, fqdn: str, values: Sequence[str], *, now: datetime, expires_at: datetime
) -> None:
    """Make `values` the TXT record set at `fqdn` until `expires_at`; expired rows anywhere are
    removed on the way."""
    key = fqdn_key(fqdn)
    session.execute(delete(DnsTxt).where((DnsTxt.fqdn == key) | (DnsTxt.expires_at <= now)))
    for value in dict.fromkeys(values):
        session.add(DnsTxt(fqdn=key, value=value, expires_at=expires_at, created_at=now))


def remove_txt(session: Session, fqdn: str) -> None:
    session.execute(delete(DnsTxt).where(DnsTxt.fqdn == fqdn_key(fqdn)))


def txt_values(session: Session | Connection, fqdn: str, *, now: datetime) -> list[str]:
    """The unexpired TXT values at `fqdn`, in the order they were published."""
    rows = session.execute(
        select(DnsTxt.value)
        .where(DnsTxt.fqdn == fqdn_key(fqdn), DnsTxt.expires_at > now)
        .order_by(DnsTxt.id)
    )
    return [row[0] for row in rows]


def has_names_below(session: Session | Connection, fqdn: str, *, now: datetime) -> bool:
    """Whether any unexpired TXT lives under `fqdn`: an empty non-terminal exists (RFC 8020)."""
    suffix = "." + fqdn_key(fqdn)
    found = session.execute(
        select(DnsTxt.id)
        .where(DnsTxt.fqdn.endswith(suffix, autoescape=True), DnsTxt.expires_at > now)
        .limit(1)
    ).first()
    return found is not None
