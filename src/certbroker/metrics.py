"""Prometheus metrics: what each process counts, plus gauges read from the database at scrape.

Counters live in the process that does the work: API servers count requests, workers count DCV
checks, issuances and lease take-overs. Gauges that describe the whole deployment (orders by
status, queue depth) are read from the database when scraped, so any process answers them alike.

Several processes on one host (`certbroker serve --workers N`) share counters through
prometheus_client's multiprocess mode: `PROMETHEUS_MULTIPROC_DIR` must be set before this module
is imported (`serve` sets it for its children) and every process of the host then reports the
host's sum. Without it each process reports its own counts; Prometheus adds them up per job.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from certbroker.orders.states import Status
from certbroker.store.models import Order, OrderName

if TYPE_CHECKING:
    from fastapi import FastAPI

    from certbroker.clock import Clock
    from certbroker.store.db import Database

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Statuses reported even when no order has them, so a dashboard's series never vanish.
ORDER_STATUSES = tuple(str(status) for status in Status)
OTHER_ENDPOINT = "other"

HTTP_REQUESTS = Counter(
    "certbroker_http_requests",
    "HTTP requests answered, by route and HTTP status code",
    ["endpoint", "code"],
)
API_RESULTS = Counter(
    "certbroker_api_results",
    "Racent API answers by endpoint and envelope code (1 success, negative errors)",
    ["endpoint", "code"],
)
DCV_CHECKS = Counter(
    "certbroker_dcv_checks", "Domain control validation checks run, by method", ["method"]
)
DCV_FAILURES = Counter(
    "certbroker_dcv_check_failures",
    "Domain control validation checks that did not find the expected value, by method",
    ["method"],
)
ISSUANCE_SECONDS = Histogram(
    "certbroker_issuance_seconds",
    "Time to issue one certificate: CAA check, serial allocation, signing, storing",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LEASE_TAKEOVERS = Counter(
    "certbroker_lease_takeovers",
    "Work items claimed after another worker's lease ran out (it crashed or stalled)",
    ["kind"],
)

UPSTREAM_STEPS = Counter(
    "certbroker_upstream_steps",
    "Steps of upstream ACME orders, by upstream and outcome (ok, retry, rate_limited, failed)",
    ["upstream", "outcome"],
)
UPSTREAM_PROBLEMS = Counter(
    "certbroker_upstream_problems",
    "Problems answered by upstream ACME CAs (RFC 8555 6.7 type, or timeout/connection)",
    ["upstream", "problem"],
)
UPSTREAM_CIRCUIT = Gauge(
    "certbroker_upstream_circuit_open",
    "1 while this worker pauses an upstream's steps after 5xx answers or time-outs in a row",
    ["upstream"],
    multiprocess_mode="max",
)


def observe_upstream_step(upstream: str, outcome: str, problem: str | None = None) -> None:
    UPSTREAM_STEPS.labels(upstream=upstream, outcome=outcome).inc()
    if problem is not None:
        UPSTREAM_PROBLEMS.labels(upstream=upstream, problem=problem).inc()


def upstream_circuit(upstream: str, *, opened: bool) -> None:
    UPSTREAM_CIRCUIT.labels(upstream=upstream).set(1 if opened else 0)


def observe_request(endpoint: str, status_code: int) -> None:
    HTTP_REQUESTS.labels(endpoint=endpoint, code=str(status_code)).inc()


def observe_api_result(endpoint: str, code: int) -> None:
    """For front ends: count an answer by its envelope code (HTTP is 200 for all of them)."""
    API_RESULTS.labels(endpoint=endpoint, code=str(code)).inc()


def observe_dcv_check(method: str, ok: bool) -> None:
    DCV_CHECKS.labels(method=method).inc()
    if not ok:
        DCV_FAILURES.labels(method=method).inc()


def observe_issuance(seconds: float) -> None:
    ISSUANCE_SECONDS.observe(seconds)


def lease_taken_over(kind: str, count: int) -> None:
    if count > 0:
        LEASE_TAKEOVERS.labels(kind=kind).inc(count)


class DatabaseGauges(Collector):
    """Orders by status and the worker queues, counted in the database at each scrape."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("certbroker_database_up", "1 when the database answered")
        try:
            by_status, due_names, ready_orders = self._read(self.clock.now())
        except Exception:  # the process counters are still worth serving
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        orders = GaugeMetricFamily("certbroker_orders", "Orders by status", labels=["status"])
        for status in sorted(set(ORDER_STATUSES) | set(by_status)):
            orders.add_metric([status], by_status.get(status, 0))
        yield orders
        queue = GaugeMetricFamily(
            "certbroker_queue_depth",
            "Work due now: DCV checks of pending names, orders ready to sign",
            labels=["queue"],
        )
        queue.add_metric(["dcv_checks"], due_names)
        queue.add_metric(["issuance"], ready_orders)
        yield queue

    def _read(self, now: datetime) -> tuple[dict[str, int], int, int]:
        with self.db.transaction() as session:
            by_status = {
                str(status): int(count)
                for status, count in session.execute(
                    select(Order.status, func.count()).group_by(Order.status)
                )
            }
            due_names = session.scalar(
                select(func.count())
                .select_from(OrderName)
                .join(Order, Order.id == OrderName.order_id)
                .where(
                    Order.status == Status.PENDING,
                    OrderName.verified_at.is_(None),
                    OrderName.next_check_at <= now,
                )
            )
            ready_orders = session.scalar(
                select(func.count())
                .select_from(Order)
                .where(Order.status == Status.PENDING, Order.issue_due_at <= now)
            )
        return by_status, int(due_names or 0), int(ready_orders or 0)


class _ThisProcess(Collector):
    """The default registry's metrics, forwarded into a per-scrape registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def _registry(db: Database | None = None, clock: Clock | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    if db is not None and clock is not None:
        registry.register(DatabaseGauges(db, clock))
    return registry


def exposition(db: Database | None = None, clock: Clock | None = None) -> tuple[bytes, str]:
    """The Prometheus text of this process (of the host in multiprocess mode), plus the
    database gauges when a database is given: (body, content type)."""
    return generate_latest(_registry(db, clock)), CONTENT_TYPE_LATEST


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """A background HTTP server for Prometheus (`certbroker worker --metrics-port`): this
    process's counters; the database gauges are the API servers' to report."""
    start_http_server(port, addr=host, registry=_registry())


def _leaf_routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        # FastAPI keeps an included router as one entry that holds the router's own routes.
        inner = getattr(route, "original_router", None) or getattr(route, "routes", None)
        if inner is not None and not hasattr(route, "endpoint"):
            yield from _leaf_routes(list(getattr(inner, "routes", inner)))
        else:
            yield route


class RouteLabels:
    """The route template a request matched, as a bounded label: never the raw path, which a
    client could make unique per request."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._leaves: list[BaseRoute] | None = None
        self._exact: dict[str, str] = {}

    def _table(self) -> list[BaseRoute]:
        if self._leaves is None:
            # Built on first use, when every router is included. Racent endpoints are matched
            # case-insensitively (SPEC 1.1), so static paths are keyed by lower case.
            self._leaves = list(_leaf_routes(list(self.app.routes)))
            for route in self._leaves:
                path = getattr(route, "path", "")
                if isinstance(path, str) and path and "{" not in path:
                    self._exact[path.lower()] = path
        return self._leaves

    def label(self, scope: Scope) -> str:
        routed = getattr(scope.get("route"), "path", None)
        if isinstance(routed, str) and routed:
            return routed  # the router's own answer
        leaves = self._table()
        path = str(scope.get("path", "")).rstrip("/") or "/"
        found = self._exact.get(path.lower())
        if found is not None:
            return found
        for route in leaves:
            template = getattr(route, "path", "")
            if isinstance(template, str) and "{" in template:
                match, _child = route.matches(scope)
                if match != Match.NONE:
                    return template
        return OTHER_ENDPOINT


class RequestMetrics:
    """ASGI middleware counting every HTTP request by route and status code."""

    def __init__(self, app: ASGIApp, labels: RouteLabels) -> None:
        self.app = app
        self.labels = labels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            observe_request(self.labels.label(scope), status)


def install_metrics(app: FastAPI) -> None:
    """Count the requests of `app` (call once, after its routers are included)."""
    app.add_middleware(RequestMetrics, labels=RouteLabels(app))
