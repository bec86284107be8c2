"""How each upstream ACME CA is doing, as one worker process sees it: back-off and a circuit
breaker (docs/UPSTREAMS.md, "When the upstream fails").

A 5xx answer or a time-out (the upstream is unwell, not refusing us) counts against the
upstream; any answer that is not one resets the count. After `circuit_failures` in a row the
circuit opens: the worker claims no step of that upstream until `circuit_cooldown_seconds`
have passed by the injected clock, then lets steps through again (half-open: one more failure
opens it again at once). The state lives in the process: each worker finds out for itself,
which costs at most `circuit_failures` requests per worker.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from certbroker import metrics

log = structlog.get_logger("certbroker.upstream")

# Back-off of one upstream order after a 5xx or time-out: 30 s doubling to 1 h, plus jitter.
BACKOFF_START = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=1)


def backoff(failures: int, rng: random.Random | None = None) -> timedelta:
    """The wait after the `failures`-th failure in a row (1-based): 30 s, 60 s, ... 1 h, each
    stretched by up to a quarter at random so orders failed together do not retry together."""
    base = min(BACKOFF_MAX, BACKOFF_START * 2 ** min(max(failures, 1) - 1, 8))
    jitter = (rng or random).uniform(0.0, 0.25)
    return min(BACKOFF_MAX, timedelta(seconds=base.total_seconds() * (1.0 + jitter)))


@dataclass
class _Circuit:
    failures: int = 0
    open_until: datetime | None = None


class UpstreamHealth:
    """Consecutive failures and circuit state per upstream (thread-safe: steps run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._circuits: dict[str, _Circuit] = {}

    def paused(self, now: datetime) -> set[str]:
        """Upstreams whose circuit is open now (their steps are not claimed)."""
        with self._lock:
            return {
                name
                for name, c in self._circuits.items()
                if c.open_until is not None and now < c.open_until
            }

    def open_until(self, upstream: str) -> datetime | None:
        with self._lock:
            circuit = self._circuits.get(upstream)
            return None if circuit is None else circuit.open_until

    def succeeded(self, upstream: str) -> None:
        with self._lock:
            circuit = self._circuits.setdefault(upstream, _Circuit())
            was_open = circuit.open_until is not None
            circuit.failures, circuit.open_until = 0, None
        if was_open:
            log.info("upstream circuit closed", upstream=upstream)
        metrics.upstream_circuit(upstream, opened=False)

    def failed(
        self, upstream: str, now: datetime, *, threshold: int, cooldown: timedelta
    ) -> datetime | None:
        """Count a 5xx/time-out; returns the end of the pause when the circuit is open."""
        with self._lock:
            circuit = self._circuits.setdefault(upstream, _Circuit())
            circuit.failures += 1
            if circuit.failures < threshold:
                return None
            circuit.open_until = now + cooldown
            failures, until = circuit.failures, circuit.open_until
        log.warning(
            "upstream circuit open: its steps pause",
            upstream=upstream,
            failures_in_a_row=failures,
            until=until.isoformat(),
        )
        metrics.upstream_circuit(upstream, opened=True)
        return until
