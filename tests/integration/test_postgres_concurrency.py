"""Races that only PostgreSQL can have (SQLite runs one writer at a time): concurrent claims,
concurrent places under one refId, and a change based on a stale read."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm.exc import StaleDataError

from certbroker.orders import dcv, issuing
from certbroker.orders.states import Status
from certbroker.store.models import Certificate, LedgerEntry, Order
from tests.conftest import Service

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
T = TypeVar("T")
THREADS = 8


def all_at_once(count: int, job: Callable[[int], T]) -> list[T]:
    """Run `job(i)` in `count` threads released together."""
    start = threading.Barrier(count)

    def run(i: int) -> T:
        start.wait(timeout=30)
        return job(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def place(service: Service, names: list[str], token: str | None = None, **extra: Any) -> str:
    params = {
        "server": "nginx",
        "domainInfo": [{"domainName": n, "dcvMethod": "HTTP_CSR_HASH"} for n in names],
    }
    placed = service.call(
        "place",
        token=token,
        productCode="sectigo-multi-domain" if len(names) > 1 else "comodo-ssl",
        years=1,
        params=params,
        **extra,
    )
    assert placed["code"] == 1, placed
    return str(placed["data"]["certId"])


def test_workers_claiming_together_never_share_a_name_or_an_order(service: Service) -> None:
    service.topup(1000)
    for i in range(4):
        place(service, [f"n{j}.o{i}.example.com" for j in range(5)])
    claims = all_at_once(THREADS, lambda i: dcv.claim_due_names(service.ctx, f"w{i}", limit=4))
    claimed = [check.name_id for batch in claims for check in batch]
    assert len(claimed) == len(set(claimed)) == 20, Counter(claimed)

    sandbox_id, sandbox_token = service.new_account("sandbox", sandbox=True)
    service.topup(1000, account_id=sandbox_id)
    for i in range(12):
        place(service, [f"s{i}.example.com"], token=sandbox_token)  # ready to sign at once
    ready = all_at_once(THREADS, lambda i: issuing.claim_ready_orders(service.ctx, f"w{i}", 2))
    orders = [order_id for batch in ready for order_id in batch]
    assert len(orders) == len(set(orders)) == 12, Counter(orders)


def test_concurrent_places_with_one_ref_id_make_one_order_and_one_charge(
    service: Service,
) -> None:
    service.topup(1000)
    balance = service.balance()
    cert_ids = all_at_once(THREADS, lambda _i: place(service, ["race.example.com"], refId="R-1"))
    assert len(set(cert_ids)) == 1
    assert service.counts() == (1, 1)
    assert service.balance() == balance - 12_00


def test_a_change_based_on_a_stale_read_is_refused(service: Service) -> None:
    """A request reads the order, a worker issues it meanwhile, the request then writes what
    it decided from the old state (here: a cancel of a PENDING order, which would refund an
    issued certificate). The order's version column turns that into an error."""
    sandbox_id, token = service.new_account("sandbox", sandbox=True)
    service.topup(100, account_id=sandbox_id)
    cert_id = place(service, ["stale.example.com"], token=token)
    ctx = service.ctx
    with pytest.raises(StaleDataError), ctx.db.transaction() as session:
        stale = session.scalars(select(Order).where(Order.cert_id == cert_id)).one()
        assert stale.status == Status.PENDING
        [order_id] = issuing.claim_ready_orders(ctx, "worker")  # other connections
        assert issuing.issue_order(ctx, order_id, "worker")
        stale.status = Status.CANCELLED
        session.flush()
    with ctx.db.transaction() as session:
        order = session.scalars(select(Order).where(Order.cert_id == cert_id)).one()
        assert order.status == Status.COMPLETE
        assert session.scalar(select(func.count()).select_from(Certificate)) == 1
        kinds = session.scalars(select(LedgerEntry.kind).where(LedgerEntry.order_id == order.id))
        assert list(kinds) == ["charge"]
