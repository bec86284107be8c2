"""An order the CA refuses at signing (issuance.SigningRefused) ends visibly: FAILED with the
reason in collect, refunded, announced by its webhook; a subscription's automatic reissue that
is refused is dropped while the order keeps its certificate (orders/refusals.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from certbroker.orders.refunds import RENEW_RETRY
from certbroker.orders.states import Status
from certbroker.pki.csr import build_csr
from certbroker.pki.keys import generate_private_key
from certbroker.store.models import LedgerEntry, Order
from tests.conftest import Service
from tests.helpers.bad_profile import name_constraints, signing_keys
from tests.helpers.webhook_receiver import WebhookReceiver
from tests.integration.test_issuance_core import certificates_of, events_of
from tests.integration.test_lifecycle import issue
from tests.integration.test_webhooks import place, set_webhook, work_until_delivered

LINT_FINDING = "ERROR cabf.serverauth.subscriber.name_constraints_extension_present"


def ledger_of(service: Service, cert_id: str) -> list[tuple[str, int, str]]:
    with service.ctx.db.transaction() as session:
        rows = session.execute(
            select(LedgerEntry.kind, LedgerEntry.amount_cents, LedgerEntry.op_key)
            .where(LedgerEntry.op_key.endswith(cert_id))
            .order_by(LedgerEntry.id)
        ).all()
    return [(kind, amount, op_key) for kind, amount, op_key in rows]


def failed_webhooks(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    return [e for e in receiver.events if e["type"] == "order.failed"]


def test_an_order_refused_at_signing_shows_its_reason_in_collect_is_refunded_and_fires_its_webhook(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pre-issuance lint: a deliberately bad profile is refused before signing. The refusal
    cannot be caught earlier (the request itself is fine): it comes from the lint of the
    to-be-signed certificate, and the issuer key never signs."""
    ca = service.ctx.ca
    issuer_key = ca.issuer(False).key
    with WebhookReceiver() as receiver:
        receiver.secret = set_webhook(service, receiver)["secret"]
        service.topup(100)
        before = service.balance()
        placed = place(service)
        cert_id = placed["certId"]
        service.publish(placed)
        ca.tamper_for_tests = name_constraints
        try:
            with signing_keys(monkeypatch) as keys:
                service.work()  # validated, linted, refused
                service.advance(timedelta(minutes=5))
                service.work()  # not retried
        finally:
            ca.tamper_for_tests = None
        work_until_delivered(service, timedelta(minutes=1))

    assert keys and issuer_key not in keys, "linted once with the throwaway key only"
    assert len(keys) == 1
    collected = service.call("collect", certId=cert_id)
    data: dict[str, Any] = collected["data"]
    assert collected["status"] == Status.FAILED
    assert data["lastError"].startswith("pre-issuance lint (BR 4.3.1.2): ERROR ")
    assert LINT_FINDING in data["lastError"]
    assert data["failureReason"] == f"the CA refused to sign the certificate: {data['lastError']}"
    assert data["issued"] == {"status": "notdone"} and "certificate" not in data
    # Refunded, once.
    assert service.balance() == before
    assert [kind for kind, _, _ in ledger_of(service, cert_id)] == ["charge", "refund"]
    # The serial allocated for signing was never issued.
    [row] = certificates_of(service.ctx, cert_id)
    assert (row.state, row.pem, row.issued_at) == ("abandoned", None, None)
    with service.ctx.db.transaction() as session:
        order = session.scalars(select(Order).where(Order.cert_id == cert_id)).one()
        assert (order.issue_due_at, order.lease_owner) == (None, None)
    # The webhook says why.
    [hook] = failed_webhooks(receiver)
    assert hook["certId"] == cert_id
    assert hook["data"] == {"status": "FAILED", "reason": data["failureReason"]}


def test_a_refused_automatic_reissue_keeps_the_current_certificate_and_refunds_nothing(
    service: Service,
) -> None:
    """A subscription's reissue refused at signing is dropped: the order stays COMPLETE with the
    certificate it has, lastError and an event say why, and nothing is refunded."""
    first = issue(service, years=2)
    cert_id = first["certId"]
    balance = service.balance()
    with service.ctx.db.transaction() as session:
        due = session.scalars(select(Order.renew_due_at).where(Order.cert_id == cert_id)).one()
    assert due is not None
    service.clock.set(due)
    service.ctx.ca.tamper_for_tests = name_constraints
    try:
        # The reissue starts; the validation is older than the reuse period in force then
        # (BR 4.2.1), so it is checked again first and the reissue is signed in the next pass.
        service.work()
        service.work()
    finally:
        service.ctx.ca.tamper_for_tests = None

    collected = service.call("collect", certId=cert_id)
    data: dict[str, Any] = collected["data"]
    assert collected["status"] == Status.COMPLETE
    assert data["serialNumber"] == first["serialNumber"]
    assert data["certificate"] == first["certificate"]
    assert data["lastError"].startswith("pre-issuance lint (BR 4.3.1.2): ERROR ")
    assert LINT_FINDING in data["lastError"]
    assert "failureReason" not in data
    assert service.balance() == balance
    assert [c.state for c in certificates_of(service.ctx, cert_id)] == ["issued", "abandoned"]
    assert events_of(service.ctx, cert_id, "subscription.reissue_failed") == [
        {"certId": cert_id, "status": "COMPLETE", "reason": data["lastError"]}
    ]
    with service.ctx.db.transaction() as session:
        order = session.scalars(select(Order).where(Order.cert_id == cert_id)).one()
        assert (order.renew_due_at, order.issue_due_at, order.lease_owner) == (None, None, None)


def test_a_refused_reissue_reinstates_the_certificate_it_superseded(service: Service) -> None:
    """A reissue (its own certId) refused at signing FAILS like any reissue: nothing refunded,
    the superseded order COMPLETE again."""
    first = issue(service)
    balance = service.balance()
    child = service.call("reissue", certId=first["certId"], reason="key lost")
    assert child["code"] == 1, child
    service.publish(child["data"])
    service.ctx.ca.tamper_for_tests = name_constraints
    try:
        service.work()
    finally:
        service.ctx.ca.tamper_for_tests = None
    refused = service.call("collect", certId=child["data"]["certId"])
    assert refused["status"] == Status.FAILED
    assert refused["data"]["lastError"].startswith("pre-issuance lint (BR 4.3.1.2): ")
    assert service.call("collect", certId=first["certId"])["status"] == Status.COMPLETE
    assert service.balance() == balance


def test_a_key_compromised_between_place_and_signing_fails_the_order_with_its_reason(
    service: Service,
) -> None:
    """BR 6.1.1.3: the key of a placed order is revoked for keyCompromise on another order
    before this one is validated; place could not know, the signature refuses it."""
    service.topup(100)
    key = generate_private_key("ec256")
    csr = build_csr(key, ["shop.example.com"]).pem
    params = {
        "server": "nginx",
        "csr": csr,
        "domainInfo": [{"domainName": "shop.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
    }
    with WebhookReceiver() as receiver:
        receiver.secret = set_webhook(service, receiver)["secret"]
        placed = service.call("place", productCode="comodo-ssl", years=1, params=params)
        assert placed["code"] == 1, placed
        cert_id = placed["data"]["certId"]
        service.work()  # its file is not published yet: the order waits
        other = issue(service, csr=build_csr(key, ["shop.example.com"]).pem)
        assert service.call("revoke", certId=other["certId"], reason="keyCompromise")["code"] == 1
        service.publish(placed["data"])
        service.advance(timedelta(minutes=2))
        before = service.balance()
        service.work()  # validated over HTTP, then refused right before the signature
        work_until_delivered(service, timedelta(minutes=1))

    collected = service.call("collect", certId=cert_id)
    data: dict[str, Any] = collected["data"]
    assert data["dcvList"][0]["is_verify"] == "verified"
    assert collected["status"] == Status.FAILED
    assert data["lastError"].startswith("this key is known to be compromised")
    assert data["failureReason"] == f"the CA refused to sign the certificate: {data['lastError']}"
    assert data["issued"] == {"status": "notdone"} and "certificate" not in data
    assert service.balance() == before + 1200
    assert ledger_of(service, cert_id) == [
        ("charge", -1200, f"charge:{cert_id}"),
        ("refund", 1200, f"refund:{cert_id}"),
    ]
    assert [c.state for c in certificates_of(service.ctx, cert_id)] == ["abandoned"]
    assert events_of(service.ctx, cert_id, "order.failed") == [
        {"certId": cert_id, "status": "FAILED", "reason": data["failureReason"]}
    ]
    [hook] = failed_webhooks(receiver)
    assert hook["certId"] == cert_id and hook["data"]["reason"] == data["failureReason"]


def test_a_failed_successor_due_for_renewal_waits_before_the_next_automatic_try(
    service: Service,
) -> None:
    """A reissue that fails when the superseded certificate is already inside its renewal lead
    time reinstates it, but its next automatic renewal waits RENEW_RETRY: a renewal that failed
    must not start again at the next pass (upstream renewals are successors, so that would
    order again and again)."""
    first = issue(service, years=2)
    service.advance(timedelta(days=190))  # inside the lead time of the ~200-day certificate
    child = service.call("reissue", certId=first["certId"], reason="key lost")
    assert child["code"] == 1, child
    service.publish(child["data"])
    service.ctx.ca.tamper_for_tests = name_constraints
    try:
        service.work()
    finally:
        service.ctx.ca.tamper_for_tests = None
    assert service.call("collect", certId=child["data"]["certId"])["status"] == Status.FAILED
    with service.ctx.db.read() as session:
        parent = session.scalars(select(Order).where(Order.cert_id == first["certId"])).one()
    assert parent.status == Status.COMPLETE
    assert parent.renew_due_at is not None
    assert parent.renew_due_at >= service.clock.now() + RENEW_RETRY
