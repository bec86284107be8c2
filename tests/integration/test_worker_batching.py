"""The worker's cheap passes (docs/PERFORMANCE.md P6, P7): a pass's DCV results recorded in few
transactions with each name's rules kept, issuance in one transaction per step for the whole
batch, and the periodic scans on timers of their own."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from certbroker.notify import webhooks
from certbroker.orders import dcv, email_dcv, issuing, revocation_lists, subscriptions
from certbroker.orders.context import OrdersContext
from certbroker.orders.states import Status
from certbroker.pki.csr import build_csr
from certbroker.pki.keys import generate_private_key
from certbroker.store.models import Certificate, Event, Order, OrderName
from certbroker.validation.results import CheckResult
from certbroker.worker import runner
from certbroker.worker.runner import Worker
from tests.conftest import Service

PASSED = CheckResult(ok=True, detail="found")


def place(
    service: Service, names: list[str], *, token: str | None = None, publish: bool = True
) -> str:
    csr = build_csr(generate_private_key("ec256"), names).pem
    params = {
        "server": "nginx",
        "csr": csr,
        "domainInfo": [{"domainName": n, "dcvMethod": "HTTP_CSR_HASH"} for n in names],
    }
    placed = service.call(
        "place",
        token=token,
        productCode="sectigo-multi-domain" if len(names) > 1 else "comodo-ssl",
        years=1,
        params=params,
    )
    assert placed["code"] == 1, placed
    if publish:
        service.publish(placed["data"])
    return str(placed["data"]["certId"])


def order_of(session: Session, cert_id: str) -> Order:
    return session.scalars(select(Order).where(Order.cert_id == cert_id)).one()


def name_rows(ctx: OrdersContext) -> dict[str, OrderName]:
    with ctx.db.transaction() as session:
        return {row.name: row for row in session.scalars(select(OrderName))}


def event_kinds(ctx: OrdersContext) -> Counter[tuple[str, str]]:
    """(type, domainName or certId) of every event so far."""
    with ctx.db.transaction() as session:
        return Counter(
            (e.type, str(e.payload.get("domainName") or e.payload["certId"]))
            for e in session.scalars(select(Event))
        )


@contextmanager
def counted_transactions(ctx: OrdersContext) -> Iterator[list[int]]:
    """Counts the transactions opened inside the block (the database's own method, wrapped)."""
    count = [0]
    real = ctx.db.transaction

    @contextmanager
    def transaction() -> Iterator[Session]:
        count[0] += 1
        with real() as session:
            yield session

    ctx.db.transaction = transaction  # type: ignore[method-assign]
    try:
        yield count
    finally:
        del ctx.db.transaction  # the class's method again


# --- P6: a pass's results in few transactions ---------------------------------------------


def test_one_batch_records_each_name_by_the_rules_of_one(service: Service) -> None:
    ctx = service.ctx
    service.topup(200)
    place(service, ["a1.example.com", "a2.example.com"])
    place(service, ["b1.example.com"])
    cancelled = place(service, ["c1.example.com"])
    place(service, ["d1.example.com"])
    checks = {c.name: c for c in dcv.claim_due_names(ctx, "w")}
    assert len(checks) == 5
    assert service.call("cancel", certId=cancelled, reason="test")["code"] == 1
    with ctx.db.transaction() as session:  # d1's lease ran out and another worker took it
        session.get_one(OrderName, checks["d1.example.com"].name_id).lease_owner = "other"

    results = [
        (checks["a1.example.com"], PASSED),
        (checks["b1.example.com"], CheckResult(ok=False, detail="404 at the file URL")),
        (checks["c1.example.com"], PASSED),
        (checks["a2.example.com"], PASSED),
        (checks["d1.example.com"], PASSED),
    ]
    with counted_transactions(ctx) as count:
        dcv.record_results(ctx, "w", results)
    assert count == [1]

    now = ctx.clock.now()
    rows = name_rows(ctx)
    # Two names of one order verified in one transaction: the order is ready to sign.
    assert rows["a1.example.com"].verified_at == rows["a2.example.com"].verified_at == now
    with ctx.db.transaction() as session:
        ready = session.scalars(select(Order.cert_id).where(Order.issue_due_at.is_not(None)))
        assert len(list(ready)) == 1
    failed = rows["b1.example.com"]
    assert (failed.attempts, failed.last_result) == (1, "404 at the file URL")
    assert failed.next_check_at == now + ctx.policy.dcv_retry[0]
    assert failed.verified_at is None and failed.lease_owner is None
    # The cancelled order's name: lease released, nothing recorded.
    gone = rows["c1.example.com"]
    assert (gone.verified_at, gone.attempts, gone.lease_owner) == (None, 0, None)
    # Not our lease: untouched.
    other = rows["d1.example.com"]
    assert (other.verified_at, other.attempts, other.lease_owner) == (None, 0, "other")
    kinds = event_kinds(ctx)
    assert kinds[("domain.verified", "a1.example.com")] == 1
    assert kinds[("domain.verified", "a2.example.com")] == 1
    assert kinds[("domain.check_failed", "b1.example.com")] == 1
    assert not any(name in ("c1.example.com", "d1.example.com") for _kind, name in kinds)


def test_a_repeated_failure_backs_off_and_is_told_once(service: Service) -> None:
    ctx = service.ctx
    service.topup(100)
    place(service, ["slow.example.com"])
    retry = ctx.policy.dcv_retry

    def fail_with(detail: str) -> OrderName:
        [check] = dcv.claim_due_names(ctx, "w")
        dcv.record_results(ctx, "w", [(check, CheckResult(ok=False, detail=detail))])
        return name_rows(ctx)["slow.example.com"]

    first = fail_with("timed out")
    assert first.next_check_at == ctx.clock.now() + retry[0]
    assert dcv.claim_due_names(ctx, "w") == [], "not due before its back-off"
    service.advance(retry[0])
    second = fail_with("timed out")
    assert (second.attempts, second.next_check_at) == (2, ctx.clock.now() + retry[1])
    assert event_kinds(ctx)[("domain.check_failed", "slow.example.com")] == 1
    service.advance(retry[1])
    fail_with("connection refused")
    assert event_kinds(ctx)[("domain.check_failed", "slow.example.com")] == 2


def test_results_beyond_one_chunk_take_one_transaction_per_chunk(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = service.ctx
    service.topup(200)
    names = [f"n{i}.chunk.example.com" for i in range(5)]
    place(service, names)
    checks = dcv.claim_due_names(ctx, "w")
    monkeypatch.setattr(dcv, "RECORD_CHUNK", 2)
    with counted_transactions(ctx) as count:
        dcv.record_results(ctx, "w", [(c, PASSED) for c in checks])
    assert count == [3]
    assert all(name_rows(ctx)[n].verified_at is not None for n in names)
    with ctx.db.transaction() as session:
        assert session.scalar(select(func.count()).where(Order.issue_due_at.is_not(None))) == 1


@contextmanager
def held_connections(host: str, port: int) -> Iterator[socket.socket]:
    """A listener that completes TCP handshakes and never answers: a check against it waits
    until the listener is closed (which resets its connections)."""
    listener = socket.create_server((host, port))
    try:
        yield listener
    finally:
        listener.close()


def test_a_slow_check_does_not_hold_back_the_results_of_fast_ones(service: Service) -> None:
    # The slow name's check only ends when the test closes the listener, which it does once it
    # has seen the fast name recorded: the order of events, not a timing, is asserted.
    ctx = service.ctx
    ctx.policy = dataclasses.replace(ctx.policy, dcv_timeout_seconds=60)
    service.topup(100)
    service.dns_server.add_a("held.example.com", "127.0.0.3")
    try:
        place(service, ["held.example.com"])
        fast = place(service, ["fast.example.com"])

        def fast_recorded() -> bool:
            with ctx.db.transaction() as session:
                return all(n.verified_at is not None for n in order_of(session, fast).names)

        async def scenario() -> tuple[bool, int]:
            with held_connections("127.0.0.3", service.site.port):
                work = asyncio.create_task(Worker(ctx).run_scheduled())
                deadline = time.monotonic() + 60
                while not await asyncio.to_thread(fast_recorded):
                    assert time.monotonic() < deadline and not work.done()
                    await asyncio.sleep(0.01)
                still_checking = not work.done()
            return still_checking, await work

        still_checking, handled = asyncio.run(scenario())
    finally:
        service.dns_server.clear_a("held.example.com")
    assert still_checking, "the fast name was recorded while the slow one was still checked"
    assert handled >= 2
    rows = name_rows(ctx)
    assert rows["held.example.com"].verified_at is None
    assert rows["held.example.com"].attempts == 1
    with ctx.db.transaction() as session:
        assert order_of(session, fast).status == Status.COMPLETE


# --- issuance in one transaction per step --------------------------------------------------


def sandbox_orders(service: Service, count: int) -> list[str]:
    account_id, token = service.new_account("sandbox", sandbox=True)
    service.topup(100, account_id=account_id)
    return [place(service, [f"s{i}.example.com"], token=token) for i in range(count)]


def test_a_batch_is_issued_in_two_transactions_and_a_bad_order_fails_alone(
    service: Service,
) -> None:
    ctx = service.ctx
    good_one, bad, good_two = sandbox_orders(service, 3)  # ready to sign at once
    with ctx.db.transaction() as session:
        order_of(session, bad).csr_pem = "not a CSR"  # signing it raises
    ready = issuing.claim_issuance(ctx, "w")
    assert len(ready) == 3 and all(r.caa_names == () for r in ready), "sandbox: no CAA"
    with counted_transactions(ctx) as count:
        issued = issuing.issue_orders(ctx, [r.order_id for r in ready], "w")
    assert count == [2]
    with ctx.db.transaction() as session:
        by_cert = {cert_id: order_of(session, cert_id) for cert_id in (good_one, bad, good_two)}
        assert {c: issued[o.id] for c, o in by_cert.items()} == {
            good_one: True,
            bad: False,
            good_two: True,
        }
        assert [by_cert[c].status for c in (good_one, bad, good_two)] == [
            Status.COMPLETE,
            Status.PENDING,
            Status.COMPLETE,
        ]
        # The bad order's savepoint was rolled back: no serial allocated; it keeps its lease
        # until it runs out, like any failed issuance.
        assert by_cert[bad].lease_owner == "w"
        certificates = Counter(session.scalars(select(Certificate.order_id)))
        assert certificates == Counter({by_cert[good_one].id: 1, by_cert[good_two].id: 1})
    kinds = event_kinds(ctx)
    assert kinds[("certificate.issued", good_one)] == kinds[("certificate.issued", good_two)] == 1
    assert issuing.issue_orders(ctx, [r.order_id for r in ready], "w") == {
        r.order_id: False for r in ready
    }, "issued once only"


def test_caa_refusing_one_order_defers_it_and_the_others_issue(service: Service) -> None:
    ctx = service.ctx
    service.topup(100)
    service.dns_server.add_caa("refused.example.com", ("issue", "other-ca.example.net"))
    try:
        allowed = place(service, ["allowed.example.com"])
        refused = place(service, ["refused.example.com"])
        service.work()
        with ctx.db.transaction() as session:
            assert order_of(session, allowed).status == Status.COMPLETE
            waiting = order_of(session, refused)
            assert waiting.status == Status.PENDING
            assert waiting.issue_due_at == ctx.clock.now() + ctx.policy.caa_retry
            [row] = waiting.names
            assert (row.last_result or "").startswith(issuing.CAA_PREFIX)
    finally:
        service.dns_server.clear_caa("refused.example.com")
    service.advance(ctx.policy.caa_retry)
    service.work()
    with ctx.db.transaction() as session:
        assert order_of(session, refused).status == Status.COMPLETE
        assert order_of(session, refused).names[0].last_result == "CAA allows issuance"


# --- P7: the scans on timers ---------------------------------------------------------------

SCANS: dict[str, tuple[Any, str]] = {
    "mail": (email_dcv, "deliver_pending_mail"),
    "subscriptions": (subscriptions, "run_subscription_steps"),
    "expiry": (dcv, "expire_orders"),
    "webhooks": (webhooks, "run_step"),
    "crls": (revocation_lists, "refresh_crls"),
}


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each scan ran: the real functions, counted."""
    runs: Counter[str] = Counter()

    def counted(label: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            runs[label] += 1
            return real(*args, **kwargs)

        return call

    for label, (module, attribute) in SCANS.items():
        monkeypatch.setattr(module, attribute, counted(label, getattr(module, attribute)))
    return runs


def test_each_scan_runs_once_per_interval(service: Service, scans: Counter[str]) -> None:
    worker = Worker(service.ctx)
    asyncio.run(worker.run_scheduled())
    assert scans == Counter(dict.fromkeys(SCANS, 1)), "all due at the first pass"
    asyncio.run(worker.run_scheduled())
    asyncio.run(worker.run_scheduled())
    assert scans == Counter(dict.fromkeys(SCANS, 1)), "none again inside its interval"

    service.advance(runner.MAIL_INTERVAL)
    asyncio.run(worker.run_scheduled())
    assert scans == Counter(mail=2, webhooks=2, subscriptions=1, expiry=1, crls=1)
    service.advance(runner.SUBSCRIPTION_INTERVAL)
    asyncio.run(worker.run_scheduled())
    assert scans == Counter(mail=3, webhooks=3, subscriptions=2, expiry=2, crls=1)
    service.advance(runner.CRL_INTERVAL)
    asyncio.run(worker.run_scheduled())
    assert scans == Counter(mail=4, webhooks=4, subscriptions=3, expiry=3, crls=2)

    asyncio.run(worker.run_once())
    asyncio.run(worker.run_once())
    assert scans == Counter(mail=6, webhooks=6, subscriptions=5, expiry=5, crls=4), (
        "run_once runs everything"
    )


def test_a_clock_set_back_does_not_stall_the_scans(service: Service, scans: Counter[str]) -> None:
    worker = Worker(service.ctx)
    asyncio.run(worker.run_scheduled())
    service.clock.set(service.clock.now() - timedelta(hours=1))
    asyncio.run(worker.run_scheduled())
    assert scans == Counter(dict.fromkeys(SCANS, 2))


def test_webhooks_follow_a_pass_that_did_work(service: Service, scans: Counter[str]) -> None:
    worker = Worker(service.ctx, poll_seconds=1.0)
    asyncio.run(worker.run_scheduled())
    [cert_id] = sandbox_orders(service, 1)
    assert asyncio.run(worker.run_scheduled()) == 1, "the order was issued"
    assert scans["webhooks"] == 1, "not twice within the busy gap"
    assert worker._idle_seconds() <= runner.WEBHOOK_BUSY_GAP.total_seconds()
    service.advance(runner.WEBHOOK_BUSY_GAP)
    asyncio.run(worker.run_scheduled())
    assert scans["webhooks"] == 2, "the issued event's delivery step ran"
    assert scans["mail"] == 1 and scans["subscriptions"] == 1
    with service.ctx.db.transaction() as session:
        assert order_of(session, cert_id).status == Status.COMPLETE


def test_an_email_check_sends_its_mail_in_the_same_pass(
    service: Service, scans: Counter[str]
) -> None:
    worker = Worker(service.ctx)
    asyncio.run(worker.run_scheduled())
    service.topup(100)
    params = {
        "server": "nginx",
        "domainInfo": [
            {
                "domainName": "mail.example.com",
                "dcvMethod": "EMAIL",
                "dcvEmail": "admin@mail.example.com",
            }
        ],
    }
    placed = service.call("place", productCode="comodo-ssl", years=1, params=params)
    assert placed["code"] == 1, placed
    asyncio.run(worker.run_scheduled())
    assert scans["mail"] == 2, "delivered before the mail timer came round"
    with service.ctx.db.transaction() as session:
        [row] = order_of(session, placed["data"]["certId"]).names
        assert "sent" in (row.last_result or ""), row.last_result


def test_an_order_fails_when_its_window_ends_not_at_the_next_expiry_scan(
    service: Service, scans: Counter[str]
) -> None:
    ctx = service.ctx
    window = runner.EXPIRY_INTERVAL / 3
    ctx.policy = dataclasses.replace(ctx.policy, dcv_window=window)
    service.topup(100)
    cert_id = place(service, ["late.example.com"], publish=False)  # checks keep failing
    worker = Worker(ctx)
    asyncio.run(worker.run_scheduled())
    assert scans["expiry"] == 1
    service.advance(window / 2)
    asyncio.run(worker.run_scheduled())
    assert scans["expiry"] == 1, "inside its interval and before the window ends"
    service.advance(window)
    asyncio.run(worker.run_scheduled())
    assert scans["expiry"] == 2
    with ctx.db.transaction() as session:
        assert order_of(session, cert_id).status == Status.FAILED
