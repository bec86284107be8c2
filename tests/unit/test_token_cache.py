"""TokenCache: trusted for its TTL, never caches failures, records use once a minute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from certbroker.orders import accounts
from certbroker.orders.errors import ApiError
from certbroker.store.db import Database
from certbroker.store.models import ApiToken

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    database.upgrade()
    return database


def _token(db: Database) -> tuple[int, str]:
    with db.transaction() as session:
        account = accounts.create_account(session, "reseller", sandbox=False, now=NOW)
        row, token = accounts.create_token(session, account, label="t", now=NOW)
        return row.id, token


def _revoke(db: Database, token_id: int) -> None:
    with db.transaction() as session:
        accounts.revoke_token(session, token_id, now=NOW)


def test_a_revoked_token_works_until_the_ttl_ends(db: Database) -> None:
    token_id, token = _token(db)
    clock = FakeMonotonic()
    cache = accounts.TokenCache(5.0, monotonic=clock)
    assert cache.authenticate(db, token, NOW).token_id == token_id
    _revoke(db, token_id)  # as the CLI does, from another process
    clock.now += 4.9
    assert cache.authenticate(db, token, NOW).token_id == token_id
    clock.now += 0.2
    with pytest.raises(ApiError) as refused:
        cache.authenticate(db, token, NOW)
    assert refused.value.code == 400


def test_forget_token_ends_trust_at_once(db: Database) -> None:
    token_id, token = _token(db)
    cache = accounts.TokenCache(60.0)
    cache.authenticate(db, token, NOW)
    _revoke(db, token_id)
    cache.forget_token(token_id)
    with pytest.raises(ApiError):
        cache.authenticate(db, token, NOW)


def test_failures_are_not_cached_and_ttl_zero_reads_every_time(db: Database) -> None:
    token_id, token = _token(db)
    cache = accounts.TokenCache(0.0)
    with pytest.raises(ApiError):
        cache.authenticate(db, token + "x", NOW)
    with pytest.raises(ApiError):
        cache.authenticate(db, "", NOW)
    assert cache.authenticate(db, token, NOW).token_id == token_id
    _revoke(db, token_id)
    with pytest.raises(ApiError):
        cache.authenticate(db, token, NOW)


def test_last_use_is_recorded_once_a_minute(db: Database) -> None:
    token_id, token = _token(db)
    cache = accounts.TokenCache(0.0)

    def last_used() -> datetime | None:
        with db.read() as session:
            value = session.scalar(select(ApiToken.last_used_at).where(ApiToken.id == token_id))
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    cache.authenticate(db, token, NOW)
    assert last_used() == NOW
    cache.authenticate(db, token, NOW + timedelta(seconds=30))
    assert last_used() == NOW
    cache.authenticate(db, token, NOW + timedelta(minutes=2))
    assert last_used() == NOW + timedelta(minutes=2)


def test_the_cache_is_bounded(db: Database) -> None:
    _token_id, token = _token(db)
    cache = accounts.TokenCache(60.0, max_entries=1)
    ref = cache.authenticate(db, token, NOW)
    cache._put("other", ref)
    assert cache._get(accounts.hash_token(token)) is None
    assert cache._get("other") == ref


def test_read_sessions_refuse_writes(db: Database) -> None:
    token_id, _token_text = _token(db)
    with pytest.raises(RuntimeError, match="read-only"), db.read() as session:
        row = session.get(ApiToken, token_id)
        assert row is not None
        row.label = "changed"
        session.flush()
    with db.read() as session:
        assert session.scalar(select(ApiToken.label).where(ApiToken.id == token_id)) == "t"


def test_reads_do_not_wait_for_the_writer(db: Database) -> None:
    import threading

    token_id, _token_text = _token(db)
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with db.transaction() as session:
            row = session.get(ApiToken, token_id)
            assert row is not None
            row.label = "new"
            session.flush()
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(30)
        # The writer holds SQLite's write lock (and the process's writer lock) right now.
        with db.read() as session:
            seen = session.scalar(select(ApiToken.label).where(ApiToken.id == token_id))
        assert seen == "t"  # the last commit, not the writer's uncommitted change
        assert thread.is_alive()
    finally:
        release.set()
        thread.join()
    with db.read() as session:
        assert session.scalar(select(ApiToken.label).where(ApiToken.id == token_id)) == "new"
