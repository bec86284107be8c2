"""Upstream failures surfaced, not swallowed: 429 with Retry-After and 503 injected by a proxy
between certbroker and Debian's Pebble, a circuit breaker, and Pebble restarted mid-order
(its accounts and orders vanish) with re-registration and a new attempt.

Timing is the injected clock's: nothing here waits on wall time except Pebble's own work.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from certbroker.orders import upstream_orders
from certbroker.store.models import Event, UpstreamOrder
from tests.conftest import START, Service
from tests.helpers.acme_proxy import AcmeProxy
from tests.helpers.challtestsrv import ChallTestSrv
from tests.helpers.dcv_http_server import DcvHttpServer
from tests.helpers.pebble import Pebble
from tests.integration.test_upstream_acme import (
    _certificates,
    _charges,
    _place,
    _place_dns,
    _publish,
    _service,
    _verify_chain,
    _work_until,
    acme_service,  # noqa: F401  # a fixture
    dns_service,  # noqa: F401  # a fixture
    pebble,  # noqa: F401  # a fixture
)

NEW_ORDER, FINALIZE = "/order-plz", "/finalize-order/"


@pytest.fixture
def proxy(pebble: Pebble) -> Iterator[AcmeProxy]:  # noqa: F811
    found = AcmeProxy(pebble.port, pebble.ca_bundle, pebble.tls_cert, pebble.tls_key)
    yield found
    found.close()


@pytest.fixture
def proxied_service(
    tmp_path: Path,
    pebble: Pebble,  # noqa: F811
    proxy: AcmeProxy,
    dns_server: ChallTestSrv,
    site: DcvHttpServer,
) -> Iterator[Service]:
    yield from _service(
        tmp_path,
        pebble,
        dns_server,
        site,
        hmac_key=pebble.eab_hmac_key,
        directory=proxy.directory,
        circuit_failures=2,
    )


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _rows(service: Service) -> list[tuple[int, str]]:
    with service.ctx.db.read() as session:
        return [
            (a, s)
            for a, s in session.execute(
                select(UpstreamOrder.attempt, UpstreamOrder.status).order_by(UpstreamOrder.id)
            )
        ]


def test_429_waits_for_retry_after_and_503_backs_off_and_opens_the_circuit(
    proxied_service: Service,
    pebble: Pebble,  # noqa: F811
    proxy: AcmeProxy,
    tmp_path: Path,
) -> None:
    service = proxied_service
    limited = _sample("certbroker_upstream_steps_total", upstream="pebble", outcome="rate_limited")
    cert_id = _place(service)["certId"]

    # newOrder answered 429 with Retry-After: 120 (RFC 8555 6.6).
    proxy.fail(NEW_ORDER, 429, retry_after="120")
    service.work()
    assert proxy.requests_to(NEW_ORDER) == [429]
    shown = service.call("collect", certId=cert_id)
    assert shown["status"] == "PENDING"
    retry_at = (START + timedelta(seconds=120)).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert "limits how fast" in shown["data"]["lastError"]
    assert f"retries at {retry_at}" in shown["data"]["lastError"]
    assert (
        _sample("certbroker_upstream_steps_total", upstream="pebble", outcome="rate_limited")
        == limited + 1
    )

    # One second before Retry-After by the injected clock: nothing is asked upstream.
    service.advance(timedelta(seconds=119))
    service.work()
    assert proxy.requests_to(NEW_ORDER) == [429]
    service.advance(timedelta(seconds=1))
    service.work()
    assert proxy.requests_to(NEW_ORDER) == [429, 201]
    shown = service.call("collect", certId=cert_id)["data"]
    assert shown["lastError"] == ""  # the next success takes it off
    _publish(service, shown)

    # finalize answered 503 twice: back-off (30 s + jitter), then the circuit opens (2 in a row).
    proxy.fail(FINALIZE, 503, count=2)
    for _ in range(60):
        service.advance(upstream_orders.POLL_DELAY)
        service.work()
        if proxy.requests_to(FINALIZE):
            break
        time.sleep(0.05)
    assert proxy.requests_to(FINALIZE) == [503]
    last = service.call("collect", certId=cert_id)["data"]["lastError"]
    assert "is not answering properly" in last and "nothing to do on your side" in last
    service.advance(timedelta(seconds=29))
    service.work()
    assert proxy.requests_to(FINALIZE) == [503]  # backing off
    service.advance(timedelta(seconds=9))  # past 30 s + at most a quarter of jitter
    service.work()
    assert proxy.requests_to(FINALIZE) == [503, 503]
    assert "pebble" in service.ctx.upstream_health.paused(service.clock.now())
    assert _sample("certbroker_upstream_circuit_open", upstream="pebble") == 1.0

    # Past the order's back-off (60-75 s) but inside the cool-down: no step is claimed.
    service.advance(timedelta(seconds=80))
    service.work()
    assert proxy.requests_to(FINALIZE) == [503, 503]
    service.advance(timedelta(seconds=300))
    done = _work_until(service, cert_id, "COMPLETE")["data"]
    assert proxy.requests_to(FINALIZE)[-1] == 200
    assert done["lastError"] == ""
    assert _sample("certbroker_upstream_circuit_open", upstream="pebble") == 0.0
    _verify_chain(tmp_path, pebble, done)
    assert _certificates(service) == 1
    assert _charges(service) == [-12_00]
    assert pebble.log().count("Issued certificate serial") == 1


def test_pebble_restarted_mid_order_dns01_completes_without_the_customer(
    dns_service: Service,  # noqa: F811
    pebble: Pebble,  # noqa: F811
    tmp_path: Path,
) -> None:
    service = dns_service
    base = "restart-d.example.com"
    record = f"_acme-challenge.{base}"
    data = _place_dns(service, base)
    cert_id = data["certId"]
    service.dns_server.set_cname(record, data["DCVdnsValue"])
    try:
        service.work()  # newOrder at the first Pebble
        assert _rows(service) == [(1, "pending")]
        pebble.restart()  # accounts, orders and authorizations are gone
        done = _work_until(service, cert_id, "COMPLETE")["data"]
        assert _rows(service) == [(1, "lost"), (2, "downloaded")]
        _verify_chain(tmp_path, pebble, done)
        assert _certificates(service) == 1
        assert len(_charges(service)) == 1
        assert pebble.log().count("Issued certificate serial") == 1
    finally:
        service.dns_server.clear_cname(record)


def test_pebble_restarted_mid_order_http01_shows_the_new_token(
    acme_service: Service,  # noqa: F811
    pebble: Pebble,  # noqa: F811
    tmp_path: Path,
) -> None:
    service = acme_service
    cert_id = _place(service)["certId"]
    service.work()
    old = service.call("collect", certId=cert_id)["data"]
    pebble.restart()
    for _ in range(3):
        service.advance(upstream_orders.POLL_DELAY)
        service.work()
    shown = service.call("collect", certId=cert_id)["data"]
    assert shown["DCVfileName"] and shown["DCVfileName"] != old["DCVfileName"]
    assert _rows(service)[0] == (1, "lost")
    with service.ctx.db.read() as session:
        kinds = session.scalars(select(Event.type)).all()
    assert "dcv.updated" in kinds
    _publish(service, shown)
    done = _work_until(service, cert_id, "COMPLETE")["data"]
    _verify_chain(tmp_path, pebble, done)
    assert _certificates(service) == 1
    assert _charges(service) == [-12_00]
