"""Closed-loop load from several client processes, so that the clients are not the bottleneck.

`run_load(factory, config, items, concurrency, processes)` splits `items` into `concurrency`
lanes, spreads the lanes over up to `processes` spawned processes (one thread per lane), makes
one job per lane with `factory(config)` before the start signal (ACME accounts, connections),
then runs every lane at once and times each `job.run(item)`. The caller's `CpuMeter` is read
right before the start signal and right after the last result.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from typing import Any, Protocol
from urllib.parse import urlencode

from bench.common import CpuMeter


class Job(Protocol):
    def run(self, item: Any) -> None: ...


JobFactory = Callable[[dict[str, Any]], Job]


@dataclass
class LoadResult:
    """Timings of the successful items (seconds), errors, and CPU used in the window."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    server_cpu_seconds: dict[str, float] = field(default_factory=dict)
    processes: int = 0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def per_second(self) -> float:
        return self.ok / self.wall_seconds if self.wall_seconds else 0.0


def _lane(
    job: Job, items: Sequence[Any], samples: list[tuple[float, float]], errors: list[str]
) -> None:
    # A job with `pace_seconds` starts its requests at most that often (an open-loop rate,
    # for latency under a given load); the wait is not part of the measured latency.
    pace = float(getattr(job, "pace_seconds", 0.0) or 0.0)
    slot = time.monotonic()
    for item in items:
        if pace:
            wait = slot - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            slot = max(slot, time.monotonic()) + pace
        started = time.monotonic()
        try:
            job.run(item)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            continue
        samples.append((started, time.monotonic()))


def _child(
    factory: JobFactory,
    config: dict[str, Any],
    lanes: list[list[Any]],
    ready: multiprocessing.Queue[Any],
    go: Event,
    results: multiprocessing.Queue[Any],
) -> None:
    try:
        jobs = [factory(config) for _ in lanes]
    except Exception:
        ready.put(("error", traceback.format_exc()))
        return
    ready.put(("ready", os.getpid()))
    go.wait()
    cpu_before = time.process_time()
    samples: list[tuple[float, float]] = []
    errors: list[str] = []
    threads = [
        threading.Thread(target=_lane, args=(job, lane, samples, errors))
        for job, lane in zip(jobs, lanes, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put((samples, errors, time.process_time() - cpu_before))


def run_load(
    factory: JobFactory,
    config: dict[str, Any],
    items: Sequence[Any],
    *,
    concurrency: int,
    processes: int,
    meter: CpuMeter,
    timeout: float = 600.0,
) -> LoadResult:
    concurrency = max(1, min(concurrency, len(items)))
    lanes = [list(items[i::concurrency]) for i in range(concurrency)]
    procs = max(1, min(processes, concurrency))
    context = multiprocessing.get_context("spawn")
    ready: multiprocessing.Queue[Any] = context.Queue()
    results: multiprocessing.Queue[Any] = context.Queue()
    go = context.Event()
    children = [
        context.Process(
            target=_child,
            args=(factory, config, lanes[p::procs], ready, go, results),
            daemon=True,
        )
        for p in range(procs)
    ]
    for child in children:
        child.start()
    try:
        for _ in children:
            status, detail = ready.get(timeout=120)
            if status != "ready":
                raise RuntimeError(f"a client process could not start:\n{detail}")
        meter.start()
        started = time.monotonic()
        go.set()
        out = LoadResult(processes=procs)
        finished = started
        for _ in children:
            try:
                samples, errors, cpu = results.get(timeout=timeout)
            except queue.Empty as exc:
                raise RuntimeError(f"the clients did not finish within {timeout} s") from exc
            out.latencies += [end - begin for begin, end in samples]
            finished = max([finished, *(end for _begin, end in samples)])
            out.errors += errors
            out.client_cpu_seconds += cpu
        out.server_cpu_seconds = meter.stop()
        out.wall_seconds = finished - started
        return out
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()


class ApiClient:
    """certbroker's API over one keep-alive connection (http.client: light on client CPU)."""

    IDLE_SECONDS = 2.0  # below the server's keep-alive timeout (5 s)

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self._connection: http.client.HTTPConnection | None = None
        self._last_used = 0.0

    def _conn(self) -> http.client.HTTPConnection:
        now = time.monotonic()
        if self._connection is not None and now - self._last_used > self.IDLE_SECONDS:
            self._connection.close()
            self._connection = None
        if self._connection is None:
            self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        self._last_used = now
        return self._connection

    def call(self, endpoint: str, **fields: str) -> dict[str, Any]:
        body = urlencode({"api_token": self.token, **fields})
        connection = self._conn()
        try:
            connection.request(
                "POST",
                f"/ssl/{endpoint}",
                body,
                {"Content-Type": "application/x-www-form-urlencoded"},
            )
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            self._connection = None
            raise
        if response.status != 200:
            raise RuntimeError(f"{endpoint}: HTTP {response.status} {data[:200]!r}")
        result: dict[str, Any] = json.loads(data)
        return result


def expect_success(endpoint: str, answer: dict[str, Any]) -> dict[str, Any]:
    if answer.get("code") != 1:
        raise RuntimeError(f"{endpoint}: {json.dumps(answer)[:300]}")
    data: dict[str, Any] = answer.get("data") or {}
    return data


class PollSchedule:
    """Waits between status polls: `first`, then 1.5 times longer each time, at most `cap`.
    Both CAs' clients use the same schedule."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = max(cap, first)

    def waits(self) -> Iterator[float]:
        wait = self.first
        while True:
            yield wait
            wait = min(self.cap, wait * 1.5)
