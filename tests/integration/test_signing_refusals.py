"""An order the CA refuses at signing (issuance.SigningRefused) ends visibly: FAILED with the
reason in collect, refunded, announced by its webhook; a subscription's automatic reissue that
is refused is dropped while the order keeps its certificate (orders/refusals.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from certbroker.orders.states import Status
from certbroker.pki.csr import build_csr
from certbroker.pki.keys import generate_private_key
from certbroker.store.models import LedgerEntry
from tests.conftest import Service
from tests.helpers.webhook_receiver import WebhookReceiver
from tests.integration.test_issuance_core import certificates_of, events_of
from tests.integration.test_webhooks import set_webhook, work_until_delivered


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


def test_an_order_refused_at_the_profile_for_a_reserved_ip_fails_with_its_reason(
    service: Service,
) -> None:
    """BR 7.1.2.7.12: a reserved address validates over HTTP on loopback (allow-listed for DCV
    in tests) and is refused by the certificate profile. When place refuses such names itself
    this path needs another trigger (the bad-profile test below does not depend on place)."""
    service.topup(100)
    csr = build_csr(generate_private_key("ec256"), ["127.0.0.1"]).pem
    params = {
        "server": "nginx",
        "csr": csr,
        "domainInfo": [{"domainName": "127.0.0.1", "dcvMethod": "HTTP_CSR_HASH"}],
    }
    with WebhookReceiver() as receiver:
        receiver.secret = set_webhook(service, receiver)["secret"]
        placed = service.call(
            "place", productCode="ssltrus-multi-domain-dv", years=1, params=params
        )
        assert placed["code"] == 1, placed
        cert_id = placed["data"]["certId"]
        service.publish(placed["data"])
        before = service.balance()
        service.work()  # validated over HTTP, then refused by the profile
        work_until_delivered(service, timedelta(minutes=1))

    collected = service.call("collect", certId=cert_id)
    data: dict[str, Any] = collected["data"]
    reason = "IP address 127.0.0.1 is a reserved address and cannot be certified (BR 7.1.2.7.12)"
    assert data["dcvList"][0]["is_verify"] == "verified"
    assert collected["status"] == Status.FAILED
    assert data["lastError"] == reason
    assert data["failureReason"] == f"the CA refused to sign the certificate: {reason}"
    assert data["issued"] == {"status": "notdone"} and "certificate" not in data
    assert service.balance() == before + 2000
    assert ledger_of(service, cert_id) == [
        ("charge", -2000, f"charge:{cert_id}"),
        ("refund", 2000, f"refund:{cert_id}"),
    ]
    assert [c.state for c in certificates_of(service.ctx, cert_id)] == ["abandoned"]
    assert events_of(service.ctx, cert_id, "order.failed") == [
        {"certId": cert_id, "status": "FAILED", "reason": data["failureReason"]}
    ]
    [hook] = failed_webhooks(receiver)
    assert hook["certId"] == cert_id and hook["data"]["reason"] == data["failureReason"]
