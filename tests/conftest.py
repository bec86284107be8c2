"""Shared fixtures: a real DNS server (pebble-challtestsrv), a real DCV web server, and an
in-process certbroker whose clock the test controls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from certbroker import bootstrap
from certbroker.api.limits import ApiGuard, ApiLimits
from certbroker.api.racent.routes import configure_limits
from certbroker.app import create_app
from certbroker.clock import ManualClock
from certbroker.orders import accounts, ledger
from certbroker.orders.context import OrdersContext
from certbroker.settings import Settings
from certbroker.store.models import LedgerEntry, Order
from certbroker.worker.runner import Worker
from tests.helpers.challtestsrv import ChallTestSrv
from tests.helpers.dcv_http_server import DcvHttpServer
from tests.helpers.postgres import PostgresServer, require_postgres
from tests.helpers.smtp_sink import SmtpSink

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def dns_server() -> Iterator[ChallTestSrv]:
    with ChallTestSrv() as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL per session (skipped when not installed; a failure under CI=true)."""
    require_postgres()
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None: the embedded SQLite default; else a migrated PostgreSQL database of this test."""
    if request.param == "sqlite":
        yield None
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name, url = server.fresh_database()
    yield url
    server.drop_database(name)


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[SmtpSink]:
    """The mail server every `service` sends to (approver e-mail DCV)."""
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def site() -> Iterator[DcvHttpServer]:
    with DcvHttpServer() as server:
        yield server


@dataclass
class Service:
    """certbroker in-process: its API through TestClient, its worker run on demand."""

    ctx: OrdersContext
    client: TestClient
    clock: ManualClock
    token: str
    account_id: int
    site: DcvHttpServer
    dns_server: ChallTestSrv

    def call(self, endpoint: str, token: str | None = None, **fields: Any) -> dict[str, Any]:
        body = {"api_token": token or self.token}
        for key, value in fields.items():
            body[key] = json.dumps(value) if isinstance(value, dict | list) else value
        response = self.client.post(f"/ssl/{endpoint}", data=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def work(self) -> int:
        """One worker pass (DCV checks, issuance, expiry)."""
        return asyncio.run(Worker(self.ctx).run_once())

    def topup(self, usd: int, account_id: int | None = None) -> None:
        with self.ctx.db.transaction() as session:
            ledger.post(
                session,
                account_id=account_id or self.account_id,
                amount_cents=usd * 100,
                kind="topup",
                op_key=f"topup:test:{self.clock.now().isoformat()}:{usd}:{account_id}",
                now=self.clock.now(),
            )

    def balance(self, account_id: int | None = None) -> int:
        with self.ctx.db.transaction() as session:
            kept = ledger.balance_cents(session, account_id or self.account_id)
            # Every test that looks at a balance also checks it against the ledger itself.
            assert kept == ledger.ledger_total_cents(session, account_id or self.account_id)
            return kept

    def new_account(self, name: str, *, sandbox: bool = False) -> tuple[int, str]:
        with self.ctx.db.transaction() as session:
            account = accounts.create_account(session, name, sandbox=sandbox, now=self.clock.now())
            _row, token = accounts.create_token(session, account, label="t", now=self.clock.now())
            return account.id, token

    def counts(self) -> tuple[int, int]:
        """(orders, ledger charges) across all accounts."""
        with self.ctx.db.transaction() as session:
            orders = session.scalar(select(func.count()).select_from(Order)) or 0
            charges = (
                session.scalar(
                    select(func.count())
                    .select_from(LedgerEntry)
                    .where(LedgerEntry.kind == "charge")
                )
                or 0
            )
            return orders, charges

    def publish(self, placed: dict[str, Any]) -> None:
        """Put the order's DCV file on the web server."""
        self.site.serve_file(placed["DCVfileName"], placed["DCVfileContent"])

    def advance(self, delta: timedelta) -> None:
        self.clock.advance(delta)


@pytest.fixture
def service(
    tmp_path: Path,
    dns_server: ChallTestSrv,
    site: DcvHttpServer,
    database_url: str | None,
    smtp_sink: SmtpSink,
) -> Iterator[Service]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        dcv_http_port=site.port,
        dcv_resolver=dns_server.resolver,
        dcv_allow_networks=["127.0.0.0/8"],
        dcv_timeout_seconds=3,
        smtp_port=smtp_sink.port,
        # The key pool has tests of its own (test_key_pool*.py); a pool process per test here
        # would only cost CPU.
        key_pool_size=0,
    )
    clock = ManualClock(START)
    ctx = bootstrap.build_context(settings, clock)
    first = bootstrap.ensure_first_account(ctx)
    assert first is not None
    with ctx.db.transaction() as session:
        account_id = accounts.find_account(session, first.name).id
    app = create_app(ctx, worker=False)
    # Rate limits have tests of their own; here they would only throttle long scenarios.
    configure_limits(app, ApiGuard(replace(ApiLimits(), per_token=None, per_address=None)))
    with TestClient(app) as client:
        yield Service(ctx, client, clock, first.token, account_id, site, dns_server)
