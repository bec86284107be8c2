"""Batch issuance on prebuilt Core statements (orders/issuing.py): the guarantees the ORM used
to give by itself, checked on both databases. The optimistic lock still sees issuance, a
`signing` row is signed again with its serial and validity whoever retries it, an order that
ended while it was signed is abandoned, and a write that fails for one order fails it alone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import func, select
from sqlalchemy.orm.exc import StaleDataError

from certbroker.issuance.builtin import LeafRequest
from certbroker.orders import events, issuing, terms
from certbroker.orders.context import OrdersContext
from certbroker.orders.states import Status
from certbroker.store.models import Certificate, Event, Order, OrderName
from tests.conftest import Service
from tests.integration.test_worker_batching import (
    counted_transactions,
    order_of,
    place,
    sandbox_orders,
)


def certificates_of(ctx: OrdersContext, cert_id: str) -> list[Certificate]:
    with ctx.db.transaction() as session:
        order = order_of(session, cert_id)
        return list(
            session.scalars(
                select(Certificate).where(Certificate.order_id == order.id).order_by(Certificate.id)
            )
        )


def order_id_of(ctx: OrdersContext, cert_id: str) -> int:
    with ctx.db.transaction() as session:
        return order_of(session, cert_id).id


def events_of(ctx: OrdersContext, cert_id: str, kind: str) -> list[dict[str, Any]]:
    with ctx.db.transaction() as session:
        order = order_of(session, cert_id)
        return [
            e.payload
            for e in session.scalars(
                select(Event).where(Event.order_id == order.id, Event.type == kind)
            )
        ]


@pytest.fixture
def while_signing(service: Service) -> Iterator[Callable[[Callable[[], None]], None]]:
    """Runs `action` once, in step 2 of the next issuance (between its two transactions)."""
    ca = service.ctx.ca
    real = ca.sign
    actions: list[Callable[[], None]] = []

    def sign(request: LeafRequest) -> x509.Certificate:
        while actions:
            actions.pop()()
        return real(request)

    ca.sign = sign  # type: ignore[method-assign]
    yield actions.append
    del ca.sign  # the class's method again


def test_issuance_moves_the_version_on_and_a_stale_orm_write_is_refused(
    service: Service,
) -> None:
    ctx = service.ctx
    [cert_id] = sandbox_orders(service, 1)
    with ctx.db.transaction() as session:
        stale = order_of(session, cert_id)  # kept after the commit (expire_on_commit=False)
    version = stale.version
    [ready] = issuing.claim_issuance(ctx, "w")
    assert issuing.issue_orders(ctx, [ready.order_id], "w") == {ready.order_id: True}
    with ctx.db.transaction() as session:
        order = order_of(session, cert_id)
        # Step 1 stored the subscription's end, step 3 completed the order: two changes.
        assert order.version == version + 2
        assert order.status == Status.COMPLETE and order.due_at is not None
        assert (order.lease_owner, order.lease_until, order.issue_due_at) == (None, None, None)
        [cert] = session.scalars(select(Certificate).where(Certificate.order_id == order.id))
        assert order.renew_due_at == terms.next_renewal(ctx, cert, order.due_at)
    assert events_of(ctx, cert_id, "certificate.issued") == [
        {
            "certId": cert_id,
            "status": "COMPLETE",
            "serial": cert.serial_hex,
            "generation": 1,
            "automatic": False,
        }
    ]
    # A writer that read the order before the issuance must not overwrite it (cancel of a
    # PENDING order, here) on the strength of that read.
    with pytest.raises(StaleDataError), ctx.db.transaction() as session:
        session.add(stale)
        stale.status = Status.CANCELLED
        session.flush()
    with ctx.db.transaction() as session:
        assert order_of(session, cert_id).status == Status.COMPLETE


def test_a_signing_row_left_by_a_crash_is_signed_again_with_its_serial_by_the_next_owner(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = service.ctx
    [cert_id] = sandbox_orders(service, 1)
    [ready] = issuing.claim_issuance(ctx, "w1")

    def power_cut(_request: LeafRequest) -> x509.Certificate:
        raise RuntimeError("power cut")

    monkeypatch.setattr(ctx.ca, "sign", power_cut)
    assert issuing.issue_orders(ctx, [ready.order_id], "w1") == {ready.order_id: False}
    monkeypatch.undo()
    [left] = certificates_of(ctx, cert_id)
    assert left.state == "signing" and left.pem is None
    assert issuing.claim_issuance(ctx, "w2") == [], "w1's lease still runs"

    service.advance(ctx.policy.lease + timedelta(seconds=1))
    [again] = issuing.claim_issuance(ctx, "w2")
    assert issuing.issue_orders(ctx, [again.order_id], "w2") == {again.order_id: True}
    [cert] = certificates_of(ctx, cert_id)
    assert (cert.id, cert.state, cert.generation) == (left.id, "issued", 1)
    assert cert.pem is not None
    leaf = x509.load_pem_x509_certificate(cert.pem.encode("ascii"))
    assert format(leaf.serial_number, "x") == left.serial_hex == cert.serial_hex
    assert (leaf.not_valid_before_utc, leaf.not_valid_after_utc) == (
        left.not_before,
        left.not_after,
    )
    assert issuing.issue_orders(ctx, [again.order_id], "w1") == {again.order_id: False}
    assert len(certificates_of(ctx, cert_id)) == 1


def test_a_lease_taken_over_while_signing_leaves_one_certificate(
    service: Service, while_signing: Callable[[Callable[[], None]], None]
) -> None:
    ctx = service.ctx
    [cert_id] = sandbox_orders(service, 1)
    [ready] = issuing.claim_issuance(ctx, "w1")
    taken_over: dict[int, bool] = {}

    def stall_then_lose_the_lease() -> None:
        service.advance(ctx.policy.lease + timedelta(seconds=1))
        [again] = issuing.claim_issuance(ctx, "w2")
        taken_over.update(issuing.issue_orders(ctx, [again.order_id], "w2"))

    while_signing(stall_then_lose_the_lease)
    assert issuing.issue_orders(ctx, [ready.order_id], "w1") == {ready.order_id: False}
    assert taken_over == {ready.order_id: True}
    [cert] = certificates_of(ctx, cert_id)
    assert cert.state == "issued"
    assert len(events_of(ctx, cert_id, "certificate.issued")) == 1


def test_an_order_that_failed_while_it_was_signed_has_its_row_abandoned(
    service: Service, while_signing: Callable[[Callable[[], None]], None]
) -> None:
    ctx = service.ctx
    [cert_id] = sandbox_orders(service, 1)
    [ready] = issuing.claim_issuance(ctx, "w")

    def fail_the_order() -> None:
        with ctx.db.transaction() as session:
            order_of(session, cert_id).status = Status.FAILED

    while_signing(fail_the_order)
    assert issuing.issue_orders(ctx, [ready.order_id], "w") == {ready.order_id: False}
    [cert] = certificates_of(ctx, cert_id)
    assert (cert.state, cert.pem) == ("abandoned", None)
    with ctx.db.transaction() as session:
        order = order_of(session, cert_id)
        assert order.status == Status.FAILED
        assert (order.lease_owner, order.lease_until, order.issue_due_at) == (None, None, None)
    assert events_of(ctx, cert_id, "certificate.issued") == []


def test_a_serial_that_cannot_be_stored_fails_its_order_alone(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = service.ctx
    first, *batch = sandbox_orders(service, 4)
    [ready] = issuing.claim_issuance(ctx, "w", limit=1)
    assert issuing.issue_order(ctx, ready.order_id, "w")
    [taken] = certificates_of(ctx, first)
    # The second order of the batch draws a serial already used: its insert breaks the unique
    # constraint, which makes the batch's one executemany fail.
    serials = iter([0x1111, int(taken.serial_hex, 16), 0x3333])
    monkeypatch.setattr(ctx.ca, "new_serial", lambda: next(serials))
    ready_ids = sorted(r.order_id for r in issuing.claim_issuance(ctx, "w"))
    assert ready_ids == sorted(order_id_of(ctx, c) for c in batch)
    with counted_transactions(ctx) as count:
        issued = issuing.issue_orders(ctx, ready_ids, "w")
    assert count == [2]
    unlucky = ready_ids[1]
    assert issued == {ready_ids[0]: True, unlucky: False, ready_ids[2]: True}
    with ctx.db.transaction() as session:
        order = session.get_one(Order, unlucky)
        assert (order.status, order.lease_owner) == (Status.PENDING, "w")
        assert order.due_at is None, "its whole step was rolled back"
        assert session.scalar(select(func.count()).where(Certificate.order_id == unlucky)) == 0
        serials_stored = set(session.scalars(select(Certificate.serial_hex)))
    assert {"1111", "3333", taken.serial_hex} == serials_stored


def test_a_completion_that_cannot_be_stored_fails_its_order_alone(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = service.ctx
    _first, *batch = sandbox_orders(service, 3)
    [ready] = issuing.claim_issuance(ctx, "w", limit=1)
    assert issuing.issue_order(ctx, ready.order_id, "w")
    with ctx.db.transaction() as session:
        used = session.scalars(select(Event.event_id).where(Event.order_id == ready.order_id))
        used_id = next(iter(used))
    # The second order's `certificate.issued` event gets an id already taken (unique).
    event_ids = iter(["evt_fresh_one", used_id])
    monkeypatch.setattr(events, "new_event_id", lambda: next(event_ids))
    ready_ids = sorted(r.order_id for r in issuing.claim_issuance(ctx, "w"))
    issued = issuing.issue_orders(ctx, ready_ids, "w")
    assert issued == {ready_ids[0]: True, ready_ids[1]: False}
    unlucky = {order_id_of(ctx, c): c for c in batch}[ready_ids[1]]
    [left] = certificates_of(ctx, unlucky)
    assert (left.state, left.pem) == ("signing", None), "step 3 rolled back for it alone"
    with ctx.db.transaction() as session:
        order = session.get_one(Order, ready_ids[1])
        assert (order.status, order.lease_owner) == (Status.PENDING, "w")
    monkeypatch.undo()
    service.advance(ctx.policy.lease + timedelta(seconds=1))
    [again] = issuing.claim_issuance(ctx, "w2")
    assert issuing.issue_orders(ctx, [again.order_id], "w2") == {again.order_id: True}
    [cert] = certificates_of(ctx, unlucky)
    assert (cert.state, cert.serial_hex) == ("issued", left.serial_hex)


def test_a_validation_older_than_the_reuse_period_is_checked_again_not_signed(
    service: Service,
) -> None:
    ctx = service.ctx
    service.topup(100)
    cert_id = place(service, ["old.example.com", "new.example.com"])
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        order = order_of(session, cert_id)
        for row in order.names:
            row.verified_at = now - timedelta(days=400 if row.name == "old.example.com" else 1)
            row.verified_how = "HTTP_CSR_HASH"
            row.next_check_at = None
        order.issue_due_at = now
    with ctx.db.transaction() as session:
        version = order_of(session, cert_id).version
    [ready] = issuing.claim_issuance(ctx, "w")
    assert ready.caa_names == ("old.example.com", "new.example.com")
    assert issuing.issue_orders(ctx, [ready.order_id], "w") == {ready.order_id: False}
    assert certificates_of(ctx, cert_id) == []
    with ctx.db.transaction() as session:
        order = order_of(session, cert_id)
        assert (order.issue_due_at, order.lease_owner) == (None, None)
        assert order.version == version + 1
        names = {row.name: row for row in session.scalars(select(OrderName))}
    old, new = names["old.example.com"], names["new.example.com"]
    assert (old.verified_at, old.verified_how, old.attempts, old.next_check_at) == (
        None,
        None,
        0,
        now,
    )
    assert "older than the reuse period" in (old.last_result or "")
    assert new.verified_at == now - timedelta(days=1), "a fresh validation is kept"
