"""Issue 7: input limits, slow clients, rate limits, tenant isolation, audit log, no leaked
secrets. Everything runs against the real app (TestClient, raw ASGI or uvicorn on loopback)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import select, update
from typer.testing import CliRunner

from certbroker import logs
from certbroker.api.http_protocol import LimitedHttpToolsProtocol
from certbroker.api.limits import FIELD_MAX_CHARS, ApiGuard, ApiLimits, Rate, TokenBuckets
from certbroker.api.racent.endpoints import ENDPOINTS, Endpoint
from certbroker.api.racent.routes import SPEC_STATE_CHANGING, audited, configure_limits
from certbroker.cli import app as cli_app
from certbroker.cli import uvicorn_options
from certbroker.pki.csr import MAX_CSR_PEM_BYTES
from certbroker.settings import Settings
from certbroker.store.models import AppendOnlyError, AuditEntry, Order
from tests.conftest import Service
from tests.helpers.live_uvicorn import LiveUvicorn

ONE = [{"domainName": "shop.example.com", "dcvMethod": "HTTP_CSR_HASH"}]
PARAMS = {"server": "other", "domainInfo": ONE}


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def place(service: Service, token: str | None = None, **extra: Any) -> dict[str, Any]:
    return service.call(
        "place", token=token, productCode="comodo-ssl", years="1", params=PARAMS, **extra
    )


# --- body and field limits -------------------------------------------------------------------


def _asgi_post(
    app: Any, path: str, chunks: Iterator[bytes], headers: list[tuple[bytes, bytes]]
) -> tuple[int, dict[str, Any], int]:
    """POST a streamed body straight into the ASGI app; returns (status, JSON, chunks read)."""
    consumed = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal consumed
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        consumed += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), consumed


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b"],
)
def test_chunked_body_is_not_read_past_the_limit(service: Service, content_type: str) -> None:
    app = service.client.app
    configure_limits(app, ApiGuard(ApiLimits(max_body_bytes=256 * 1024)))
    chunk = b"a" * 65536
    endless = (chunk for _ in range(1000))  # 64 MiB if anyone read it all
    headers = [(b"content-type", content_type.encode()), (b"transfer-encoding", b"chunked")]
    status, answer, consumed = _asgi_post(app, "/ssl/place", endless, headers)
    assert (status, answer) == (
        200,
        {
            "code": -1,
            "errors": "request body is larger than 262144 bytes",
            "msg": "request body is larger than 262144 bytes",
        },
    )
    assert consumed <= 5  # 4 chunks fill the limit, the 5th passes it: reading stops there


def test_declared_length_over_the_limit_is_refused_unread(service: Service) -> None:
    app = service.client.app
    configure_limits(app, ApiGuard(ApiLimits(max_body_bytes=1024)))
    headers = [(b"content-type", b"application/json"), (b"content-length", b"999999")]
    _status, answer, consumed = _asgi_post(app, "/ssl/collect", iter([b"{}"]), headers)
    assert answer == {
        "code": -1,
        "errors": "request body is larger than 1024 bytes",
        "msg": "request body is larger than 1024 bytes",
    }
    assert consumed == 0


def test_over_long_scalar_fields_are_refused_without_echo(service: Service) -> None:
    long_token = "cb_" + "x" * 200
    answer = service.client.post("/ssl/collect", data={"api_token": long_token}).json()
    assert answer == {
        "code": -1,
        "errors": {"api_token": ["api_token is 203 characters long; at most 128 allowed"]},
        "msg": "api_token: api_token is 203 characters long; at most 128 allowed",
    }
    fields = {"certId": "c" * 65, "reason": "r" * 1025, "refId": "f" * 129}
    answer = service.call("cancel", **fields)
    assert answer["code"] == -1
    assert answer["errors"] == {
        name: [f"{name} is {len(value)} characters long; at most {FIELD_MAX_CHARS[name]} allowed"]
        for name, value in fields.items()
    }
    assert "ccccc" not in json.dumps(answer)


def test_names_per_order_and_csr_size_are_limited(service: Service) -> None:
    service.topup(100)
    many = [{"domainName": f"n{i}.example.com", "dcvMethod": "HTTP_CSR_HASH"} for i in range(1001)]
    answer = service.call(
        "validate",
        productCode="sectigo-multi-domain",
        years=1,
        params={"server": "other", "domainInfo": many},
    )
    assert answer["code"] == -1
    assert answer["errors"]["domainInfo"] == [
        "domainInfo has 1001 entries; at most 1000 are accepted"
    ]
    names = ["shop.example.com"] + [f"{'a' * 60}{i}.example.com" for i in range(450)]
    huge = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    assert len(huge) > MAX_CSR_PEM_BYTES
    answer = service.call(
        "place", productCode="comodo-ssl", years=1, params={**PARAMS, "csr": huge}
    )
    assert answer["code"] == -1
    (message,) = answer["errors"]["csr"]
    assert "at most 32768" in message
    assert service.counts() == (0, 0)


# --- slow and half-open clients against uvicorn on loopback ---------------------------------


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_uvicorn_runs_with_the_configured_connection_limits() -> None:
    settings = Settings(
        http_keepalive_seconds=3, http_max_concurrency=7, http_max_header_bytes=2048
    )
    options = uvicorn_options(settings)
    assert options["http"] is LimitedHttpToolsProtocol  # the head limit: test_http_head_limit.py
    assert options["timeout_keep_alive"] == 3
    assert options["limit_concurrency"] == 7
    assert options["h11_max_incomplete_event_size"] == 2048


# h11 answers its generic 400 to an oversized head; httptools' protocol (api/http_protocol.py)
# the specific 431 (RFC 6585) with the API envelope.
@pytest.mark.parametrize(("parser", "status"), [("httptools", b"431"), ("h11", b"400")])
def test_oversized_headers_and_idle_connections_are_cut(
    service: Service, parser: Literal["httptools", "h11"], status: bytes
) -> None:
    settings = Settings(http_keepalive_seconds=1, http_max_header_bytes=2048, http_parser=parser)
    with LiveUvicorn(service.client.app, **uvicorn_options(settings)) as live:
        with live.connect() as sock:
            sock.sendall(b"POST /ssl/country HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 4096)
            answer = _read_all(sock)  # the server answers and closes without the header end
        assert answer.startswith(b"HTTP/1.1 " + status)
        with live.connect() as sock:
            body = f"api_token={service.token}".encode()
            sock.sendall(
                b"POST /ssl/country HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            answer = _read_all(sock)  # keep-alive: closed by the server once idle, not by us
        assert answer.startswith(b"HTTP/1.1 200") and b'"code":1' in answer


def test_a_stalled_body_is_answered_after_the_body_timeout(service: Service) -> None:
    configure_limits(service.client.app, ApiGuard(ApiLimits(body_timeout_seconds=0.3)))
    with LiveUvicorn(service.client.app, http="h11") as live, live.connect() as sock:
        sock.sendall(
            b"POST /ssl/collect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"api_token": '
        )
        head = sock.recv(65536)  # nothing more is sent: the server must answer by itself
    assert head.startswith(b"HTTP/1.1 200")
    assert b'"errors":"the request body did not arrive within 0.3 seconds"' in head


# --- rate limits -----------------------------------------------------------------------------


def test_per_address_rate_limit_answers_429_with_retry_after(service: Service) -> None:
    clock = FakeMonotonic()
    guard = ApiGuard(ApiLimits(per_address=Rate(0.5, 2), per_token=None), monotonic=clock)
    configure_limits(service.client.app, guard)
    sample = ("certbroker_api_results_total", {"endpoint": "country", "code": "429"})
    counted = REGISTRY.get_sample_value(*sample) or 0
    assert service.call("country")["code"] == 1
    assert service.call("country")["code"] == 1
    limited = service.client.post("/ssl/country", data={"api_token": service.token})
    assert limited.status_code == 429
    assert REGISTRY.get_sample_value(*sample) == counted + 1
    assert limited.headers["retry-after"] == "2"
    assert limited.json() == {
        "code": 429,
        "errors": "too many requests from this address; retry after 2 seconds",
        "msg": "too many requests from this address; retry after 2 seconds",
    }
    clock.now += 2  # one token back at 0.5 per second
    assert service.call("country")["code"] == 1


def test_per_token_rate_limit_is_per_token(service: Service) -> None:
    clock = FakeMonotonic()
    guard = ApiGuard(ApiLimits(per_address=None, per_token=Rate(1, 1)), monotonic=clock)
    configure_limits(service.client.app, guard)
    _other_id, other_token = service.new_account("other")
    assert service.call("country")["code"] == 1
    limited = service.client.post("/ssl/country", data={"api_token": service.token})
    assert limited.status_code == 429
    assert limited.json()["errors"] == "too many requests from this token; retry after 1 seconds"
    assert service.call("country", token=other_token)["code"] == 1
    # Unknown tokens are not bucketed (the address limit covers them); they stay 400.
    assert service.call("country", token="cb_wrong")["code"] == 400
    clock.now += 1
    assert service.call("country")["code"] == 1


def test_rate_limit_setting_syntax() -> None:
    assert Rate.parse("20,200") == Rate(20, 200)
    assert Rate.parse("0.5") == Rate(0.5, 1)
    assert Rate.parse("off") is None
    for bad in ("fast", "-1,5", "1,0", "1,2,3", "nan,3"):
        with pytest.raises(ValueError, match="requests per second"):
            Rate.parse(bad)
    with pytest.raises(ValueError, match="rate limit"):
        Settings(rate_limit_per_token="lots")
    limits = ApiLimits.from_settings(Settings(rate_limit_per_address="off"))
    assert limits.per_address is None and limits.per_token == Rate(20, 200)


def test_buckets_stay_bounded_under_a_flood_of_keys() -> None:
    clock = FakeMonotonic()
    buckets = TokenBuckets(Rate(1, 1), monotonic=clock, max_keys=100)
    for i in range(1000):
        assert buckets.take(f"10.0.{i // 256}.{i % 256}") is None
    assert len(buckets) <= 100
    assert buckets.take("10.0.3.231") is not None  # the newest ones are still remembered


def test_openapi_documents_the_429_answer(service: Service) -> None:
    doc = service.client.get("/openapi.json").json()
    for endpoint in ENDPOINTS:
        responses = doc["paths"][f"/ssl/{endpoint.name}"]["post"]["responses"]
        assert "Retry-After" in responses["429"]["headers"]


# --- tenant isolation: generic over ENDPOINTS -------------------------------------------------

# Values for other required fields, so that only the id decides the answer.
SAMPLES: dict[str, Any] = {
    "reason": "no longer needed",
    "dcvMethod": "HTTP_CSR_HASH",
    "dcvEmail": "admin@shop.example.com",
    "domainName": "shop.example.com",
    "domain": "shop.example.com",
    "productCode": "comodo-ssl",
    "years": "1",
    "params": PARAMS,
}
CERT_ID_FIELDS = ("certId", "orderId", "renewId")


def lookup_fields(endpoint: Endpoint) -> list[str]:
    """Fields naming an existing order. refId counts only where it is a required lookup key
    (place and validate take it as the reference of a new order)."""
    model = endpoint.fields.model_fields
    return [
        name
        for name, info in model.items()
        if name in CERT_ID_FIELDS or (name == "refId" and info.is_required())
    ]


def _call(service: Service, endpoint: Endpoint, token: str, field: str, value: str) -> str:
    fields = {
        name: SAMPLES.get(name, "1")
        for name, info in endpoint.fields.model_fields.items()
        if info.is_required() and name not in ("api_token", field)
    }
    fields[field] = value
    return json.dumps(service.call(endpoint.name, token=token, **fields), sort_keys=True)


def _collect(service: Service, token: str, cert_id: str) -> dict[str, Any]:
    answer = service.call("collect", token=token, certId=cert_id)
    answer["data"].pop("certPath", None)  # a fresh signed download link on every call
    return answer


def test_another_accounts_ids_are_answered_like_unknown_ones(service: Service) -> None:
    other_id, other_token = service.new_account("other")
    service.topup(200, other_id)
    service.topup(200)
    pending = place(service, other_token, refId="b-pending")["data"]
    complete = place(service, other_token, refId="b-complete")["data"]
    service.publish(complete)
    service.work()
    complete_view = _collect(service, other_token, complete["certId"])
    assert complete_view["status"] == "COMPLETE"
    before = (
        service.counts(),
        service.balance(),
        service.balance(other_id),
        _collect(service, other_token, pending["certId"]),
    )
    targets = {
        "cert": [(pending["certId"], "261201zzzzzzzzzz"), (complete["certId"], "261201yyyyyyyyyy")],
        "ref": [("b-pending", "b-unknown"), ("b-complete", "b-unknown-2")],
    }
    covered = set()
    for endpoint in ENDPOINTS:
        for field in lookup_fields(endpoint):
            kind = "ref" if field == "refId" else "cert"
            for foreign, unknown in targets[kind]:
                seen = _call(service, endpoint, service.token, field, foreign)
                absent = _call(service, endpoint, service.token, field, unknown)
                assert seen.replace(foreign, "<ID>") == absent.replace(unknown, "<ID>"), (
                    endpoint.name,
                    field,
                )
                if endpoint.fields.model_fields[field].is_required():
                    assert json.loads(seen)["code"] != 1, (endpoint.name, field)
            covered.add(endpoint.name)
    assert {"collect", "cancel", "certIdByrefId", "validatefile", "validatedns"} <= covered
    after = (
        service.counts(),
        service.balance(),
        service.balance(other_id),
        _collect(service, other_token, pending["certId"]),
    )
    assert after == before
    assert _collect(service, other_token, complete["certId"]) == complete_view


# --- audit log -------------------------------------------------------------------------------

LOOKUPS = {"productList", "validate", "collect", "certIdByrefId", "country", "list"}


def test_state_changing_endpoints_are_audited_and_lookups_are_not() -> None:
    names = {e.name for e in ENDPOINTS}
    assert {"place", "cancel"} <= names
    for endpoint in ENDPOINTS:
        if endpoint.name in SPEC_STATE_CHANGING:
            assert audited(endpoint), endpoint.name
        if endpoint.name in LOOKUPS | {"validatefile", "validatedns"}:
            assert not endpoint.changes_state and not audited(endpoint), endpoint.name
    assert all(e.changes_state for e in ENDPOINTS if e.name in ("place", "cancel"))


def _audit_rows(service: Service) -> list[tuple[Any, ...]]:
    with service.ctx.db.transaction() as session:
        return [
            (r.account_id, r.token_id, r.source_address, r.action, r.cert_id, r.code)
            for r in session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        ]


def test_every_state_changing_call_is_audited(
    service: Service, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert place(service)["code"] == -4  # no balance yet: a failed attempt
    service.topup(100)
    cert_id = place(service, refId="r1")["data"]["certId"]
    assert service.call("cancel", certId=cert_id)["code"] == -1  # reason missing
    assert service.call("cancel", token="cb_bad", certId=cert_id, reason="x")["code"] == 400
    assert service.call("cancel", certId=cert_id, reason="test")["code"] == 1
    assert service.call("collect", certId=cert_id)["code"] == 1  # a lookup: not audited
    configure_limits(
        service.client.app, ApiGuard(ApiLimits(per_address=Rate(1, 1), per_token=None))
    )
    assert service.client.post("/ssl/cancel", data={"api_token": "x"}).status_code == 200
    assert service.client.post("/ssl/cancel", data={"api_token": "x"}).status_code == 429
    me = service.account_id
    assert _audit_rows(service) == [
        (me, 1, "testclient", "place", None, -4),
        (me, 1, "testclient", "place", cert_id, 1),
        (me, 1, "testclient", "cancel", cert_id, -1),
        (None, None, "testclient", "cancel", cert_id, 400),
        (me, 1, "testclient", "cancel", cert_id, 1),
        (None, None, "testclient", "cancel", None, 400),  # the 429 after it is not recorded
    ]
    monkeypatch.setenv("CERTBROKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CERTBROKER_DATABASE_URL", service.ctx.db.url)
    result = CliRunner().invoke(
        cli_app, ["audit", "list", "--account", "default", "--cert-id", cert_id, "--limit", "2"]
    )
    assert result.exit_code == 0, result.output
    time = f"{service.clock.now():%Y-%m-%d %H:%M:%S}"
    assert result.output.splitlines() == [
        f"{time} account={me} token=1 address=testclient action=cancel certId={cert_id} code=1",
        f"{time} account={me} token=1 address=testclient action=cancel certId={cert_id} code=-1",
    ]
    every = CliRunner().invoke(cli_app, ["audit", "list"])
    assert every.output.count("address=testclient") == 6
    assert "account=- token=- address=testclient action=cancel certId=- code=400" in every.output
    unknown = CliRunner().invoke(cli_app, ["audit", "list", "--account", "nobody"])
    assert unknown.exit_code == 1 and "no account 'nobody'" in unknown.output


def test_the_audit_log_cannot_be_rewritten(service: Service) -> None:
    place(service)
    with pytest.raises(AppendOnlyError), service.ctx.db.transaction() as session:
        row = session.scalars(select(AuditEntry)).one()
        row.code = 1
    with pytest.raises(AppendOnlyError), service.ctx.db.transaction() as session:
        session.delete(session.scalars(select(AuditEntry)).one())
    with pytest.raises(AppendOnlyError), service.ctx.db.transaction() as session:
        session.execute(update(AuditEntry).values(code=1))
    assert [r[-1] for r in _audit_rows(service)] == [-4]


# --- secrets never reach logs or answers ------------------------------------------------------


@pytest.fixture
def captured_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", buffer)
        logs.configure("DEBUG", "json")
    yield buffer
    structlog.reset_defaults()
    root.handlers[:], root.level = saved[0], saved[1]


def test_error_paths_leak_no_token_or_key(
    service: Service, captured_logs: io.StringIO, tmp_path: Path
) -> None:
    token = service.token
    master_key = (tmp_path / "data" / "master.key").read_text().strip()
    near_miss = token[:-1] + ("X" if token[-1] != "X" else "Y")
    answers = [
        service.client.post("/ssl/collect", data={"api_token": near_miss}).text,
        service.client.post("/ssl/collect", data={"api_token": token * 3}).text,
        service.client.post("/ssl/collect", content=f"api_token={token}&%%%").text,
        service.client.post(
            "/ssl/place",
            content=f'--b\r\nContent-Disposition: form-data; name="api_token"\r\n\r\n{token}',
            headers={"content-type": "multipart/form-data; boundary=b"},
        ).text,
        service.client.post(
            "/ssl/cancel",
            content=json.dumps({"api_token": token, "certId": ["x"], "reason": {"a": token}}),
            headers={"content-type": "application/json"},
        ).text,
    ]
    assert all(json.loads(a)["code"] in (-1, 400) for a in answers)
    # The token sent in the wrong field reaches the log path too (it is echoed to its sender).
    service.client.post("/ssl/collect", data={"api_token": token, "certId": token})
    # A real internal error: a key whose ciphertext was damaged in the database.
    service.topup(100)
    cert_id = place(service)["data"]["certId"]
    service.publish(service.call("collect", certId=cert_id)["data"])
    service.work()
    with service.ctx.db.transaction() as session:
        session.execute(
            update(Order).where(Order.cert_id == cert_id).values(key_encrypted="v1:k1:AAAA" * 8)
        )
    lenient = TestClient(service.client.app, raise_server_exceptions=False)
    broken = lenient.post("/ssl/collect", data={"api_token": token, "certId": cert_id})
    assert broken.json()["code"] == -2
    log = captured_logs.getvalue()
    assert '"event": "request"' in log and "unhandled error" in log and "SecretBoxError" in log
    for secret in (token, near_miss, master_key):
        assert secret not in log
    for marker in ("PRIVATE KEY", "pkcsPass", "jksPass"):
        assert marker not in log
    for answer in answers:
        assert token[:-1] not in answer, answer


def test_audit_time_is_the_service_clock(service: Service) -> None:
    service.clock.advance(timedelta(days=3))
    place(service)
    with service.ctx.db.transaction() as session:
        row = session.scalars(select(AuditEntry)).one()
    assert row.created_at == service.clock.now()
