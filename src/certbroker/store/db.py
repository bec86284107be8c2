"""Engine, sessions and migrations for SQLite (default) and PostgreSQL (psycopg 3).

Concurrency model. SQLite: every transaction starts with `BEGIN IMMEDIATE`, so writers run one
at a time and a read-then-write inside a transaction cannot interleave with another writer.
PostgreSQL: READ COMMITTED, many writers at once; a transaction that reads a row and then
changes it on the strength of what it read must lock the row first (`lock_row`, i.e.
`SELECT ... FOR UPDATE`), and work is claimed with `FOR UPDATE SKIP LOCKED`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
T = TypeVar("T")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while the worker writes; busy_timeout queues writers instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# Execution option marking the connections of `Database.read()`.
READ_ONLY = "certbroker_read_only"


def _sqlite_begin(conn: Any) -> None:
    if conn.get_execution_options().get(READ_ONLY):
        # A deferred BEGIN takes no lock: in WAL mode readers see the last commit and never
        # wait for the writer (https://sqlite.org/wal.html, "Concurrency").
        conn.exec_driver_sql("BEGIN")
        return
    # Take the write lock at BEGIN: a read-then-write transaction (balance check, then debit)
    # must not interleave with another writer.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def normalize_url(url: str) -> str:
    """`postgresql://` without a driver means psycopg 3, the driver certbroker ships with."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        # pysqlite's own transaction handling is switched off so BEGIN IMMEDIATE is ours.
        engine.dialect.isolation_level = None  # type: ignore[attr-defined]

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None
            _sqlite_pragmas(dbapi_connection, record)

        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        # A database that does not answer must fail /readyz and requests, not hang them.
        connect_args={"connect_timeout": 10, "application_name": "certbroker"},
    )


class Database:
    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_engine = self.engine.execution_options(**{READ_ONLY: True})
        self._readers = sessionmaker(self._read_engine, expire_on_commit=False)
        event.listen(self._readers, "before_flush", _refuse_flush)
        self._writer: threading.RLock | None = threading.RLock() if self.is_sqlite else None

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: committed on success, rolled back on any exception."""
        if self._writer is None:
            with self._sessions() as session, session.begin():
                yield session
            return
        # SQLite has one writer and every transaction here takes the write lock at BEGIN:
        # threads queue on a lock instead of in SQLite's sleeping busy handler, whose
        # back-off made p99 latency several times worse (docs/PERFORMANCE.md, P2).
        with self._writer, self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work: one consistent snapshot, no write lock taken or waited for
        (SQLite), so polling reads (`collect`, authentication) never queue behind writers.
        Flushing changes from it is an error: use `transaction()` to write."""
        # Closing the session ends the snapshot (the pool rolls the connection back).
        with self._readers() as session:
            yield session

    @contextmanager
    def read_connection(self) -> Iterator[Connection]:
        """`read()` without an ORM session, for Core statements on the hottest paths."""
        with self._read_engine.connect() as connection:
            yield connection

    def ping(self) -> None:
        """Raise unless the database answers a query (readiness)."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def upgrade(self) -> None:
        upgrade(self.url, self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def _refuse_flush(session: Session, _context: Any, _instances: Any) -> None:
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("Database.read() is read-only; write in Database.transaction()")


def lock_row(session: Session, model: type[T], ident: object) -> T | None:
    """Load a row under its row lock and with its latest committed values (PostgreSQL
    `SELECT ... FOR UPDATE`; SQLite renders no clause: BEGIN IMMEDIATE serialised the writer).

    Use it before changing a row on the strength of what was read, e.g. an order's status, so
    two processes cannot both act on the same old state."""
    return session.get(model, ident, with_for_update=True, populate_existing=True)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# pg_advisory_xact_lock key: processes starting together migrate one after another.
MIGRATION_LOCK_KEY = 0x63657274_62726B72  # "certbrkr"


def upgrade(url: str, engine: Engine | None = None) -> None:
    cfg = alembic_config(url)
    own_engine = engine is None
    engine = engine or make_engine(url)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                # Held until the commit below; SQLite's BEGIN IMMEDIATE serialises by itself.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
            connection.commit()
    finally:
        if own_engine:
            engine.dispose()
