"""/healthz, /readyz, /metrics and lease take-overs, on SQLite and on PostgreSQL."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from certbroker.app import create_app
from certbroker.orders import dcv, issuing
from certbroker.pki.csr import build_csr
from certbroker.pki.keys import generate_private_key
from certbroker.store.db import Database
from certbroker.store.models import Certificate, Order, OrderName
from certbroker.validation.results import CheckResult
from tests.conftest import Service
from tests.helpers.dcv_http_server import refused_port

TWO_NAMES = ["shop.example.com", "www.shop.example.com"]


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def place_two_names(service: Service) -> dict[str, Any]:
    csr = build_csr(generate_private_key("ec256"), TWO_NAMES).pem
    params = {
        "server": "nginx",
        "csr": csr,
        "domainInfo": [{"domainName": n, "dcvMethod": "HTTP_CSR_HASH"} for n in TWO_NAMES],
    }
    placed = service.call("place", productCode="sectigo-multi-domain", years=1, params=params)
    assert placed["code"] == 1, placed
    data: dict[str, Any] = placed["data"]
    return data


def test_health_and_readiness(service: Service) -> None:
    health = service.client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = service.client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "database": "ok"})


def test_readiness_fails_while_the_database_does_not_answer(service: Service) -> None:
    with refused_port() as port:
        gone = Database(f"postgresql+psycopg://certbroker@127.0.0.1:{port}/certbroker")
        app = create_app(dataclasses.replace(service.ctx, db=gone), worker=False)
        with TestClient(app) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"status": "unavailable", "database": "unreachable"}
            assert client.get("/healthz").status_code == 200  # alive, just not ready
            samples = scrape(client)
    assert value(samples, "certbroker_database_up") == 0
    assert value(samples, "certbroker_orders", status="PENDING") == 0  # not reported at all


def test_metrics_follow_requests_orders_checks_and_issuance(service: Service) -> None:
    service.topup(100)
    before = scrape(service.client)
    data = place_two_names(service)
    placed = scrape(service.client)
    place_key = {"endpoint": "/ssl/place", "code": "200"}
    assert value(placed, "certbroker_http_requests_total", **place_key) == (
        value(before, "certbroker_http_requests_total", **place_key) + 1
    )
    assert value(placed, "certbroker_database_up") == 1
    assert value(placed, "certbroker_orders", status="PENDING") == 1
    assert value(placed, "certbroker_orders", status="COMPLETE") == 0
    assert value(placed, "certbroker_queue_depth", queue="dcv_checks") == 2
    assert value(placed, "certbroker_queue_depth", queue="issuance") == 0

    assert service.work() == 2  # no file yet: two failed checks
    service.publish(data)
    service.advance(timedelta(minutes=1))
    assert service.work() == 3  # two checks pass, then the issuance
    after = scrape(service.client)
    checks = {"method": "HTTP_CSR_HASH"}
    assert (
        value(after, "certbroker_dcv_checks_total", **checks)
        - value(before, "certbroker_dcv_checks_total", **checks)
        == 4
    )
    assert (
        value(after, "certbroker_dcv_check_failures_total", **checks)
        - value(before, "certbroker_dcv_check_failures_total", **checks)
        == 2
    )
    assert (
        value(after, "certbroker_issuance_seconds_count")
        - value(before, "certbroker_issuance_seconds_count")
        == 1
    )
    assert value(after, "certbroker_orders", status="COMPLETE") == 1
    assert value(after, "certbroker_orders", status="PENDING") == 0
    assert value(after, "certbroker_queue_depth", queue="dcv_checks") == 0
    assert value(after, "certbroker_queue_depth", queue="issuance") == 0


def test_request_labels_are_route_templates(service: Service) -> None:
    before = scrape(service.client)
    # SPEC 1.1: endpoint names are case-insensitive; the label is the route's own spelling.
    assert service.client.post("/ssl/COLLECT", data={"api_token": "x"}).status_code == 200
    assert service.client.post("/ssl/no-such-endpoint-4711").status_code == 404
    after = scrape(service.client)

    def grew(**labels: str) -> float:
        return value(after, "certbroker_http_requests_total", **labels) - value(
            before, "certbroker_http_requests_total", **labels
        )

    assert grew(endpoint="/ssl/collect", code="200") == 1
    assert grew(endpoint="other", code="404") == 1
    assert not any("4711" in str(key) for key in after)


def test_expired_leases_are_taken_over_once_and_counted(service: Service) -> None:
    ctx = service.ctx
    service.topup(100)
    data = place_two_names(service)
    service.publish(data)
    before = scrape(service.client)

    first = dcv.claim_due_names(ctx, "worker-a")
    assert len(first) == 2
    assert dcv.claim_due_names(ctx, "worker-b") == [], "the lease is held"
    service.advance(ctx.policy.lease + timedelta(seconds=1))
    taken = dcv.claim_due_names(ctx, "worker-b")
    assert sorted(c.name_id for c in taken) == sorted(c.name_id for c in first)
    passed = CheckResult(ok=True, detail="found")
    for check in first:  # the stalled worker comes back: its results are no longer wanted
        dcv.record_result(ctx, check, "worker-a", passed)
    with ctx.db.transaction() as session:
        assert session.scalar(select(func.count()).where(OrderName.verified_at.is_not(None))) == 0
    for check in taken:
        dcv.record_result(ctx, check, "worker-b", passed)

    [order_id] = issuing.claim_ready_orders(ctx, "worker-a")
    assert issuing.claim_ready_orders(ctx, "worker-b") == []
    service.advance(ctx.policy.lease + timedelta(seconds=1))
    assert issuing.claim_ready_orders(ctx, "worker-b") == [order_id]
    assert issuing.issue_order(ctx, order_id, "worker-a") is False
    assert issuing.issue_order(ctx, order_id, "worker-b") is True
    assert issuing.issue_order(ctx, order_id, "worker-b") is False, "issued once only"

    after = scrape(service.client)
    for kind, count in (("dcv", 2), ("issuance", 1)):
        grown = value(after, "certbroker_lease_takeovers_total", kind=kind) - value(
            before, "certbroker_lease_takeovers_total", kind=kind
        )
        assert grown == count, kind
    with ctx.db.transaction() as session:
        certs = session.scalars(select(Certificate)).all()
        assert [c.state for c in certs] == ["issued"]
        order = session.get(Order, order_id)
        assert order is not None and order.status == "COMPLETE"
        assert (order.lease_owner, order.lease_until) == (None, None)
        leases = session.execute(select(OrderName.lease_owner, OrderName.lease_until)).all()
        assert [tuple(row) for row in leases] == [(None, None), (None, None)]
