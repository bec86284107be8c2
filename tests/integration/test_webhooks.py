"""Webhooks end to end: a real receiver on loopback, the worker delivering from the outbox, the
injected clock making retries due."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import select
from typer.testing import CliRunner

from certbroker.cli import app
from certbroker.orders import webhook_settings
from certbroker.orders.errors import ApiError
from certbroker.pki.csr import build_csr
from certbroker.pki.keys import generate_private_key
from certbroker.store.models import Event, WebhookDelivery, WebhookEndpoint
from tests.conftest import START, Service
from tests.helpers.dcv_http_server import refused_port
from tests.helpers.webhook_receiver import WebhookReceiver, verify_signature

HOOK_HOST = "hooks.example.net"  # the test DNS server answers 127.0.0.1 for it


def place(service: Service, name: str = "shop.example.com") -> dict[str, Any]:
    csr = build_csr(generate_private_key("ec256"), [name]).pem
    params = {
        "server": "nginx",
        "csr": csr,
        "domainInfo": [{"domainName": name, "dcvMethod": "HTTP_CSR_HASH"}],
    }
    placed = service.call("place", productCode="comodo-ssl", years="1", params=params)
    assert placed["code"] == 1, placed
    data: dict[str, Any] = placed["data"]
    return data


def set_webhook(service: Service, receiver: WebhookReceiver, **fields: Any) -> dict[str, Any]:
    answer = service.call("webhookSet", url=receiver.url(host=HOOK_HOST), **fields)
    assert answer["code"] == 1, answer
    data: dict[str, Any] = answer["data"]
    return data


def deliveries(service: Service, **fields: Any) -> list[dict[str, Any]]:
    answer = service.call("webhookDeliveries", **fields)
    assert answer["code"] == 1, answer
    items: list[dict[str, Any]] = answer["data"]["deliveries"]
    return items


def event_ids(service: Service) -> dict[str, str]:
    """event id → type of every event of the service's account."""
    with service.ctx.db.transaction() as session:
        rows = session.execute(
            select(Event.event_id, Event.type).where(Event.account_id == service.account_id)
        ).all()
    return {event_id: kind for event_id, kind in rows}


def work_until_delivered(service: Service, step: timedelta, passes: int = 20) -> None:
    for _ in range(passes):
        if all(d["status"] == "delivered" for d in deliveries(service)):
            return
        service.advance(step)
        service.work()
    raise AssertionError(f"not delivered after {passes} passes: {deliveries(service)}")


STATUS_OF_ANSWER = {"fail": 500, "lose": None, "processed": 200, "duplicate": 200}


def test_every_event_arrives_signed_and_is_processed_once(service: Service) -> None:
    with WebhookReceiver() as receiver:
        receiver.script += ["fail", "fail"]
        receiver.lose_types.add("order.cancelled")  # processed, but its 2xx is lost
        created = set_webhook(service, receiver)
        receiver.secret = created["secret"]
        assert created["secret"].startswith("whsec_") and created["enabled"] is True

        service.topup(100)
        order = place(service)
        cert_id = order["certId"]
        service.work()  # the DCV file is not there yet
        service.publish(order)
        service.advance(timedelta(minutes=1))
        service.work()  # validated and issued
        assert service.call("collect", certId=cert_id)["status"] == "COMPLETE"
        assert service.call("cancel", certId=cert_id, reason="test")["code"] == 1
        service.work()
        work_until_delivered(service, timedelta(minutes=1))

        events = event_ids(service)
        assert {"order.placed", "domain.verified", "certificate.issued", "order.cancelled"} <= set(
            events.values()
        )
        # Every event arrived, each signature verifies, each event id was processed once.
        assert set(receiver.processed) == set(events)
        assert all(count == 1 for count in receiver.processed.values())
        assert [r.answer for r in receiver.requests[:2]] == ["fail", "fail"]
        assert receiver.requests and all(r.signature_ok for r in receiver.requests)
        assert all(
            verify_signature(created["secret"], r.signature, r.body) for r in receiver.requests
        )
        assert all(r.host == f"{HOOK_HOST}:{receiver.port}" for r in receiver.requests)
        assert all(r.event_type == events[r.delivery_id] for r in receiver.requests)
        cancelled_id = next(i for i, kind in events.items() if kind == "order.cancelled")
        answers = [r.answer for r in receiver.requests if r.delivery_id == cancelled_id]
        assert answers == ["lose", "duplicate"], "delivered twice, processed once"

        placed_id = next(i for i, kind in events.items() if kind == "order.placed")
        first = next(e for e in receiver.events if e["id"] == placed_id)
        assert set(first) == {"id", "type", "createdAt", "certId", "data"}
        assert (first["type"], first["createdAt"], first["certId"]) == (
            "order.placed",
            "2026-12-01T09:00:00.000Z",
            cert_id,
        )
        assert first["data"]["status"] == "PENDING"
        assert first["data"]["productCode"] == "comodo-ssl"

        # The log shows every attempt the receiver saw, with what it answered.
        log = {d["eventId"]: d for d in deliveries(service, certId=cert_id)}
        assert set(log) == set(events)
        for event_id, item in log.items():
            seen = [r.answer for r in receiver.requests if r.delivery_id == event_id]
            assert [a["httpStatus"] for a in item["log"]] == [STATUS_OF_ANSWER[a] for a in seen]
            assert item["status"] == "delivered" and item["certId"] == cert_id
            assert item["attempts"] == len(seen) and item["deliveredTime"]
        failed = next(a for d in log.values() for a in d["log"] if a["httpStatus"] == 500)
        assert failed["error"] == "HTTP 500: try again later"
        lost = log[cancelled_id]["log"][0]
        assert lost["httpStatus"] is None and "invalid HTTP answer" in lost["error"]


def test_secret_shown_once_never_logged_and_rotatable(service: Service) -> None:
    with WebhookReceiver() as receiver, structlog.testing.capture_logs() as logs:
        created = set_webhook(service, receiver)
        secret = created["secret"]
        receiver.secret = secret
        service.topup(100)
        order = place(service)
        service.work()
        changed = service.call("webhookSet", url=receiver.url(host=HOOK_HOST, path="/v2"))
        assert changed["code"] == 1 and "secret" not in changed["data"]
        service.call("cancel", certId=order["certId"], reason="x")
        service.work()
        assert receiver.requests[-1].path == "/v2"
        assert receiver.requests[-1].event_type == "order.cancelled"

        rotated = service.call("webhookSet", url=receiver.url(host=HOOK_HOST), rotateSecret="1")
        new_secret = rotated["data"]["secret"]
        assert new_secret != secret
        receiver.secret = new_secret
        place(service, "other.example.com")
        service.work()
        assert receiver.requests[-1].signature_ok
        assert not verify_signature(
            secret, receiver.requests[-1].signature, receiver.requests[-1].body
        )

        own = service.call(
            "webhookSet", url=receiver.url(host=HOOK_HOST), secret="my-own-secret-0123456789"
        )
        assert own["code"] == 1 and "secret" not in own["data"]
        short = service.call("webhookSet", url=receiver.url(host=HOOK_HOST), secret="short")
        assert short["code"] == -1 and "secret" in short["errors"]
        listing = service.call("webhookDeliveries")
        assert listing["data"]["deliveries"]
        assert all(d["status"] == "delivered" for d in listing["data"]["deliveries"])

    text = repr(logs) + json.dumps(listing)
    for value in (secret, new_secret, "my-own-secret-0123456789"):
        assert value not in text
    assert any(entry.get("event") == "webhook delivery" for entry in logs)
    with service.ctx.db.transaction() as session:
        stored = session.scalars(select(WebhookEndpoint.secret_encrypted)).one()
    assert stored.startswith("v1:") and "my-own-secret" not in stored


def test_older_events_are_skipped_and_a_disabled_webhook_delivers_nothing(
    service: Service,
) -> None:
    service.topup(100)
    with WebhookReceiver() as receiver:
        before = place(service)
        skipped = set(event_ids(service))  # recorded before set-up: never delivered
        receiver.secret = set_webhook(service, receiver)["secret"]
        service.work()
        assert skipped.isdisjoint(r.delivery_id for r in receiver.requests)
        assert {d["eventId"] for d in deliveries(service)}.isdisjoint(skipped)

        receiver.script.append("fail")
        service.call("cancel", certId=before["certId"], reason="x")
        service.work()
        assert receiver.requests[-1].event_type == "order.cancelled"
        assert receiver.requests[-1].answer == "fail"
        seen = len(receiver.requests)

        disabled = service.call("webhookDisable")
        assert disabled["code"] == 1 and disabled["data"]["enabled"] is False
        cancelled = next(d for d in deliveries(service) if d["type"] == "order.cancelled")
        assert cancelled["status"] == "cancelled" and cancelled["nextAttemptTime"] == ""
        assert "disabled" in cancelled["lastError"]
        during = place(service, "other.example.com")
        for _ in range(3):
            service.advance(timedelta(hours=1))
            service.work()
        assert len(receiver.requests) == seen, "disabled: nothing is sent, retries included"
        while_disabled = set(event_ids(service)) - skipped
        while_disabled -= {d["eventId"] for d in deliveries(service)}
        assert while_disabled, "events happened while the webhook was off"

        again = set_webhook(service, receiver)
        assert "secret" not in again, "the secret stays; it is not shown again"
        service.call("cancel", certId=during["certId"], reason="x")
        service.work()
        received = {r.delivery_id for r in receiver.requests[seen:]}
        assert received.isdisjoint(while_disabled), "events of the disabled period are skipped"
        assert receiver.requests[-1].answer == "processed"
        assert receiver.events[-1]["type"] == "order.cancelled"
        assert receiver.events[-1]["certId"] == during["certId"]


def test_private_addresses_are_refused_unless_allowed(service: Service) -> None:
    refused = {
        "http://10.1.2.3/hook": "10.1.2.3 is a private address",
        "http://[::1]:8080/hook": "::1 is a loopback address",
        "http://169.254.169.254/latest": "link-local",
        "http://private.example.net/hook": "resolves to 192.168.5.5, which is a private",
        "ftp://hooks.example.net/": "https:// or http://",
        "http://user:pw@hooks.example.net/": "user name or password",
    }
    service.dns_server.add_a("private.example.net", "192.168.5.5")
    try:
        for url, reason in refused.items():
            answer = service.call("webhookSet", url=url)
            assert answer["code"] == -1, url
            assert reason in answer["errors"]["url"][0], answer
        assert service.call("webhookDeliveries")["data"]["webhook"] is None
    finally:
        service.dns_server.clear_a("private.example.net")

    # Loopback passes here only because the service allows 127.0.0.0/8 (as tests do).
    strict = replace(service.ctx, policy=replace(service.ctx.policy, dcv_allow_networks=()))
    with pytest.raises(ApiError, match="loopback"):
        webhook_settings.set_webhook(strict, service.account_id, "http://127.0.0.1:9/hook")
    assert webhook_settings.show_webhook(service.ctx, service.account_id) is None


def test_addresses_are_checked_again_at_every_delivery(service: Service) -> None:
    host = "rebind.example.net"
    with WebhookReceiver() as receiver:
        answer = service.call("webhookSet", url=receiver.url(host=host))
        assert answer["code"] == 1, answer
        receiver.secret = answer["data"]["secret"]
        service.dns_server.add_a(host, "10.9.8.7")  # the name now points inside
        try:
            service.topup(100)
            place(service)
            service.work()
        finally:
            service.dns_server.clear_a(host)
        assert receiver.requests == []
        oldest = deliveries(service)[-1]
        assert oldest["type"] == "order.placed" and oldest["status"] == "pending"
        assert oldest["attempts"] == 1 and oldest["log"][0]["httpStatus"] is None
        assert "resolves to 10.9.8.7, which is a private address" in oldest["log"][0]["error"]
        service.advance(timedelta(seconds=10))
        service.work()
        assert receiver.requests and all(r.answer == "processed" for r in receiver.requests)
        assert all(d["status"] == "delivered" for d in deliveries(service))


def test_unreachable_endpoint_holds_the_accounts_queue_together(service: Service) -> None:
    service.topup(100)
    with refused_port() as port:
        assert service.call("webhookSet", url=f"http://{HOOK_HOST}:{port}/hook")["code"] == 1
        place(service)
        place(service, "other.example.com")
        service.work()
    *later, oldest = deliveries(service)  # newest first
    assert later, "several deliveries were due"
    # The oldest event is the one attempted (event order); the others wait unattempted.
    assert oldest["attempts"] == 1 and "could not connect" in oldest["log"][0]["error"]
    for item in later:
        assert item["attempts"] == 0 and item["log"] == [] and item["status"] == "pending"
        assert item["lastError"].startswith("not attempted: could not connect")
        assert item["nextAttemptTime"] == oldest["nextAttemptTime"] != ""


def test_retries_back_off_and_give_up_after_three_days(service: Service) -> None:
    with WebhookReceiver() as receiver:
        receiver.script += ["fail"] * 500
        receiver.secret = set_webhook(service, receiver)["secret"]
        service.topup(100)
        place(service)
        for _ in range(40):
            service.work()
            with service.ctx.db.transaction() as session:
                row = session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).first()
            assert row is not None
            if row.next_attempt_at is None:
                break
            service.clock.set(row.next_attempt_at)
        first = deliveries(service)[-1]
        attempts = [r for r in receiver.requests if r.delivery_id == first["eventId"]]
        # 0, 10 s, 1 min, 5 min, 30 min, 2 h after each failure, then every 6 h until 3 days.
        offsets = [0, 10, 70, 370, 2170, 9370] + [9370 + 21600 * k for k in range(1, 12)]
        assert first["type"] == "order.placed" and first["status"] == "failed"
        assert first["attempts"] == len(offsets) == len(attempts)
        assert first["lastError"].startswith("gave up after 3 days; last: HTTP 500")
        expected = [
            (START + timedelta(hours=8, seconds=s)).strftime("%Y-%m-%d %H:%M:%S") for s in offsets
        ]
        assert [a["time"] for a in first["log"]] == expected  # wire dates are UTC+8
        service.advance(timedelta(days=1))
        service.work()
        again = [r for r in receiver.requests if r.delivery_id == first["eventId"]]
        assert len(again) == len(offsets), "a failed delivery is not tried again"


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CERTBROKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CERTBROKER_DCV_ALLOW_NETWORKS", "127.0.0.0/8")
    monkeypatch.delenv("CERTBROKER_DATABASE_URL", raising=False)
    return tmp_path / "data"


def test_cli_sets_shows_and_disables_webhooks(cli_env: Path) -> None:
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    run("account", "create", "acme")
    created = run("webhook", "set", "acme", "http://127.0.0.1:8080/hook")
    secret = re.search(r"whsec_\S+", created)
    assert secret and "shown only now" in created
    shown = run("webhook", "show", "acme")
    assert "http://127.0.0.1:8080/hook (enabled)" in shown and "whsec_" not in shown
    again = run("webhook", "set", "acme", "http://127.0.0.1:8081/hook")
    assert "whsec_" not in again
    rotated = run("webhook", "set", "acme", "http://127.0.0.1:8081/hook", "--rotate-secret")
    assert "whsec_" in rotated and secret.group(0) not in rotated
    private = runner.invoke(app, ["webhook", "set", "acme", "http://10.0.0.1/hook"])
    assert private.exit_code == 1 and "private address" in private.output
    assert "disabled" in run("webhook", "disable", "acme")
    assert "disabled since" in run("webhook", "show", "acme")
    assert "event" in run("webhook", "deliveries", "acme")
    unknown = runner.invoke(app, ["webhook", "show", "nobody"])
    assert unknown.exit_code == 1 and "no account" in unknown.output
