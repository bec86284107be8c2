"""Approver e-mail DCV (BR 3.2.2.4.4) end to end: the worker mails a real SMTP server
(aiosmtpd on loopback), the test reads the message and answers through the approval pages."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from certbroker.orders import email_dcv
from certbroker.orders.accounts import AccountRef
from certbroker.orders.errors import ApiError, Code
from certbroker.store.models import Base, DcvEmailApproval, Event, OrderName, OutgoingMail
from tests.conftest import Service
from tests.helpers.smtp_sink import ReceivedMail, SmtpSink

DOMAIN = "shop.example.com"
APPROVER = "admin@shop.example.com"
LINK = re.compile(r"(https?://\S+)/dcv/approve/([A-Za-z0-9_-]{43})")
CODE = re.compile(r"Code:\s+([0-9]{8})")


def place_email_order(service: Service, email: str = APPROVER) -> str:
    service.topup(100)
    params = {
        "server": "nginx",
        "domainInfo": [{"domainName": DOMAIN, "dcvMethod": "EMAIL", "dcvEmail": email}],
    }
    placed = service.call("place", productCode="comodo-ssl", years=1, params=params)
    assert placed["code"] == 1, placed
    cert_id: str = placed["data"]["certId"]
    return cert_id


def mails_for(sink: SmtpSink, cert_id: str, address: str = APPROVER) -> list[ReceivedMail]:
    return [m for m in sink.to(address) if cert_id in m.body]


def link_of(mail: ReceivedMail) -> tuple[str, str]:
    """(path of the approval link, its token)."""
    found = LINK.search(mail.body)
    assert found is not None, mail.body
    return f"/dcv/approve/{found.group(2)}", found.group(2)


def code_of(mail: ReceivedMail) -> str:
    found = CODE.search(mail.body)
    assert found is not None, mail.body
    return found.group(1)


def dcv_row(service: Service, cert_id: str) -> dict[str, Any]:
    collected = service.call("collect", certId=cert_id)
    assert collected["code"] == 1, collected
    row: dict[str, Any] = collected["data"]["dcvList"][0]
    return row


def status_of(service: Service, cert_id: str) -> str:
    status: str = service.call("collect", certId=cert_id)["status"]
    return status


def submit_code(service: Service, cert_id: str, code: str, domain: str = DOMAIN) -> Any:
    return service.client.post(
        "/dcv/code", data={"certId": cert_id, "domain": domain, "code": code}
    )


def account(service: Service) -> AccountRef:
    return AccountRef(id=service.account_id, name="default", sandbox=False)


def all_stored_text(service: Service) -> str:
    """Every value of every table, as text: secrets must not appear anywhere in it."""
    parts: list[str] = []
    with service.ctx.db.transaction() as session:
        for table in Base.metadata.sorted_tables:
            parts.extend(repr(tuple(row)) for row in session.execute(select(table)))
    return "\n".join(parts)


@contextmanager
def smtp_at(service: Service, port: int) -> Iterator[None]:
    """Point the service's mail delivery at another SMTP port for one test."""
    original = service.ctx.policy
    service.ctx.policy = dataclasses.replace(original, smtp_port=port)
    try:
        yield
    finally:
        service.ctx.policy = original


def test_link_approval_validates_the_name_and_the_order_issues(
    service: Service, smtp_sink: SmtpSink
) -> None:
    with capture_logs() as logs:
        cert_id = place_email_order(service)
        service.work()  # creates the approval and delivers its mail in the same pass

        mails = mails_for(smtp_sink, cert_id)
        assert len(mails) == 1
        mail = mails[0]
        body = mail.body
        assert mail.message["To"] == APPROVER
        assert mail.message["From"] == "certbroker@example.com"
        assert mail.message["Subject"] == f"Approve the SSL certificate request for {DOMAIN}"
        assert mail.message["Auto-Submitted"] == "auto-generated"
        path, token = link_of(mail)
        code = code_of(mail)
        assert f"http://certbroker.example.com{path}" in body
        assert f"Random Value:    {token}" in body
        assert "comodo-ssl" in body and DOMAIN in body
        assert "ignore this message" in body
        assert f"http://certbroker.example.com/dcv/code?certId={cert_id}&domain={DOMAIN}" in body

        row = dcv_row(service, cert_id)
        assert row["lastError"] == (
            f"approval e-mail sent to {APPROVER} at 2026-12-01 09:00 UTC; waiting for the "
            "approver (link and code valid until 2026-12-08 09:00 UTC)"
        )
        assert row["is_verify"] == ""

        # GET shows what is approved and validates nothing (mail scanners open links).
        for _ in range(2):
            page = service.client.get(path)
            assert page.status_code == 200
            assert DOMAIN in page.text and cert_id in page.text and APPROVER in page.text
            assert '<form method="post"' in page.text and "Confirm" in page.text
            assert page.headers["cache-control"] == "no-store"
            assert page.headers["referrer-policy"] == "no-referrer"
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert dcv_row(service, cert_id)["is_verify"] == ""

        confirmed = service.client.post(path)
        assert confirmed.status_code == 200, confirmed.text
        assert "Domain approved" in confirmed.text
        row = dcv_row(service, cert_id)
        assert row["is_verify"] == "verified"
        assert row["verifiedBy"] == f"EMAIL {APPROVER}"

        service.work()
        assert status_of(service, cert_id) == "COMPLETE"

        # Single use: the link is spent, whichever way it is opened.
        again = service.client.post(path)
        assert again.status_code == 410
        assert "already given on 2026-12-01 09:00 UTC" in again.text
        assert service.client.get(path).status_code == 410
        assert submit_code(service, cert_id, code).status_code == 410

    with service.ctx.db.transaction() as session:
        outbox = session.scalars(select(OutgoingMail)).all()
        assert [(m.state, m.body_encrypted) for m in outbox] == [("sent", None)]
        approval = session.scalars(select(DcvEmailApproval)).one()
        assert approval.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert approval.used_at is not None
        events = session.scalars(select(Event.type).where(Event.type == "domain.verified")).all()
        assert events == ["domain.verified"]
    stored = all_stored_text(service)
    assert token not in stored and code not in stored
    assert logs, "the flow logs something"
    logged = repr(logs)
    assert token not in logged and code not in logged


def test_code_approval_counts_wrong_codes(service: Service, smtp_sink: SmtpSink) -> None:
    cert_id = place_email_order(service)
    service.work()
    (mail,) = mails_for(smtp_sink, cert_id)
    code = code_of(mail)

    form = service.client.get("/dcv/code", params={"certId": cert_id, "domain": DOMAIN})
    assert form.status_code == 200
    assert f'value="{cert_id}"' in form.text and f'value="{DOMAIN}"' in form.text

    wrong = "00000000" if code != "00000000" else "11111111"
    refused = submit_code(service, cert_id, wrong)
    assert refused.status_code == 400
    assert "Wrong code; 4 attempts left." in refused.text
    assert submit_code(service, cert_id, "12ab").status_code == 400  # malformed: not counted
    assert submit_code(service, "999999zzzzzzzzzz", code).status_code == 404
    assert submit_code(service, cert_id, code, domain="other.example.com").status_code == 404

    accepted = submit_code(service, cert_id, f"{code[:4]} {code[4:]}")  # spaces are forgiven
    assert accepted.status_code == 200, accepted.text
    assert DOMAIN in accepted.text
    with service.ctx.db.transaction() as session:
        approval = session.scalars(select(DcvEmailApproval)).one()
        assert approval.failed_code_attempts == 1
    service.work()
    assert status_of(service, cert_id) == "COMPLETE"


def test_five_wrong_codes_lock_the_approval_until_a_resend(
    service: Service, smtp_sink: SmtpSink
) -> None:
    cert_id = place_email_order(service)
    service.work()
    (first,) = mails_for(smtp_sink, cert_id)
    code = code_of(first)
    path, _token = link_of(first)
    wrong = "00000000" if code != "00000000" else "11111111"

    statuses = [submit_code(service, cert_id, wrong).status_code for _ in range(5)]
    assert statuses == [400, 400, 400, 400, 410]
    locked = submit_code(service, cert_id, code)
    assert locked.status_code == 410 and "locked" in locked.text
    assert service.client.post(path).status_code == 410

    service.advance(timedelta(minutes=1))
    service.work()
    assert (
        "locked at 2026-12-01 09:00 UTC after 5 wrong codes"
        in dcv_row(service, cert_id)["lastError"]
    )
    assert len(mails_for(smtp_sink, cert_id)) == 1, "no new mail without a resend"

    sent = email_dcv.resend(service.ctx, account(service), cert_id, DOMAIN, None)
    assert sent.email == APPROVER
    service.work()
    second = mails_for(smtp_sink, cert_id)[-1]
    assert link_of(second) != link_of(first)
    assert submit_code(service, cert_id, code_of(second)).status_code == 200
    service.work()
    assert status_of(service, cert_id) == "COMPLETE"


def test_expired_link_is_refused_and_a_resend_works(service: Service, smtp_sink: SmtpSink) -> None:
    cert_id = place_email_order(service)
    service.work()
    (first,) = mails_for(smtp_sink, cert_id)
    old_path, _ = link_of(first)

    service.advance(timedelta(days=7, minutes=1))
    expired = service.client.get(old_path)
    assert expired.status_code == 410
    assert "expired on 2026-12-08 09:00 UTC" in expired.text
    assert service.client.post(old_path).status_code == 410
    assert submit_code(service, cert_id, code_of(first)).status_code == 410

    service.work()
    assert len(mails_for(smtp_sink, cert_id)) == 1, "ignoring the mail refuses: no repeat"
    assert (
        "expired at 2026-12-08 09:00 UTC unanswered; send a new one with DCVemail"
        in (dcv_row(service, cert_id)["lastError"])
    )

    # The reseller asks for a new mail, to another approver address this time.
    sent = email_dcv.resend(service.ctx, account(service), cert_id, DOMAIN, "admin@example.com")
    assert (sent.domain, sent.email) == (DOMAIN, "admin@example.com")
    service.work()
    (second,) = mails_for(smtp_sink, cert_id, "admin@example.com")
    new_path, _ = link_of(second)
    replaced = service.client.post(old_path)
    assert replaced.status_code == 410 and "replaced by a newer e-mail" in replaced.text

    assert service.client.get(new_path).status_code == 200
    assert service.client.post(new_path).status_code == 200
    row = dcv_row(service, cert_id)
    assert (row["dcvEmail"], row["verifiedBy"]) == ("admin@example.com", "EMAIL admin@example.com")
    service.work()
    assert status_of(service, cert_id) == "COMPLETE"


def test_resend_replaces_a_live_approval(service: Service, smtp_sink: SmtpSink) -> None:
    cert_id = place_email_order(service)
    service.work()
    (first,) = mails_for(smtp_sink, cert_id)
    email_dcv.resend(service.ctx, account(service), cert_id, None, None)  # the only name
    service.work()
    first_path, _ = link_of(first)
    second_path, _ = link_of(mails_for(smtp_sink, cert_id)[-1])
    assert first_path != second_path
    assert service.client.get(first_path).status_code == 410
    stale = submit_code(service, cert_id, code_of(first))  # checked against the new approval
    assert stale.status_code == 400 and "Wrong code" in stale.text
    assert service.client.post(second_path).status_code == 200


def test_resend_errors(service: Service, smtp_sink: SmtpSink) -> None:
    cert_id = place_email_order(service)
    ref = account(service)

    def code_for(*args: Any) -> tuple[Code, Any]:
        with pytest.raises(ApiError) as caught:
            email_dcv.resend(service.ctx, ref, *args)
        return caught.value.code, caught.value.errors

    code, errors = code_for(cert_id, "other.example.com", None)
    assert code == Code.INVALID and "is not a name of" in errors["domainName"][0]
    code, errors = code_for(cert_id, DOMAIN, "admin@evil.example.net")
    assert code == Code.INVALID and "not an approver address" in errors["dcvEmail"][0]
    code, errors = code_for("2612019999aaaaaaaaaa", DOMAIN, None)
    assert code == Code.INVALID and "certId" in errors

    http = service.call(
        "place",
        productCode="comodo-ssl",
        years=1,
        params={
            "server": "nginx",
            "domainInfo": [{"domainName": "web.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
        },
    )
    code, errors = code_for(http["data"]["certId"], "web.example.com", None)
    assert code == Code.INVALID and "not EMAIL" in errors["domainName"][0]

    assert service.call("cancel", certId=cert_id, reason="test")["code"] == 1
    code, _errors = code_for(cert_id, DOMAIN, None)
    assert code == Code.CERT_STATE


def test_cancelled_order_refuses_its_link(service: Service, smtp_sink: SmtpSink) -> None:
    cert_id = place_email_order(service)
    service.work()
    path, _ = link_of(mails_for(smtp_sink, cert_id)[0])
    assert service.call("cancel", certId=cert_id, reason="changed my mind")["code"] == 1
    page = service.client.get(path)
    assert page.status_code == 410 and "CANCELLED" in page.text
    assert service.client.get("/dcv/approve/" + "A" * 43).status_code == 404
    assert service.client.get("/dcv/approve/not-a-token").status_code == 404


def test_smtp_server_down_then_mail_is_retried_and_delivered(service: Service) -> None:
    down = SmtpSink()  # not started yet: connections are refused
    with smtp_at(service, down.port):
        cert_id = place_email_order(service)
        service.work()
        row = dcv_row(service, cert_id)
        assert row["lastError"].startswith(
            f"approval e-mail to {APPROVER} not delivered yet (attempt 1: SMTP server "
            f"127.0.0.1:{down.port} refused the connection); next attempt at 2026-12-01 09:01 UTC"
        ), row
        with service.ctx.db.transaction() as session:
            mail = session.scalars(select(OutgoingMail)).one()
            assert mail.state == "queued" and mail.attempts == 1
            assert mail.body_encrypted is not None, "kept (encrypted) until it is sent"

        with down:
            service.work()
            assert down.messages == [], "the retry waits for its back-off"
            service.advance(timedelta(minutes=1))
            service.work()
            (mail_received,) = down.to(APPROVER)
    assert cert_id in mail_received.body
    assert dcv_row(service, cert_id)["lastError"].startswith(
        f"approval e-mail sent to {APPROVER} at 2026-12-01 09:01 UTC"
    )
    with service.ctx.db.transaction() as session:
        mail = session.scalars(select(OutgoingMail)).one()
        assert (mail.state, mail.attempts, mail.body_encrypted) == ("sent", 2, None)
    path, _ = link_of(mail_received)
    assert service.client.post(path).status_code == 200


def test_recipient_refused_permanently_is_not_retried(
    service: Service, smtp_sink: SmtpSink
) -> None:
    smtp_sink.refused_recipients.add("hostmaster@shop.example.com")
    try:
        cert_id = place_email_order(service, "hostmaster@shop.example.com")
        service.work()
    finally:
        smtp_sink.refused_recipients.clear()
    last = dcv_row(service, cert_id)["lastError"]
    assert "could not be delivered" in last and "550" in last and "DCVemail" in last
    with service.ctx.db.transaction() as session:
        mail = session.scalars(select(OutgoingMail)).one()
        assert (mail.state, mail.body_encrypted, mail.next_attempt_at) == ("failed", None, None)
        name = session.scalars(select(OrderName)).one()
        assert name.verified_at is None
