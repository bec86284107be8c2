"""DCV checks in flight: started by the worker's passes, recorded in groups as they finish.

A pass claims what the caps leave room for (`dcv.claim_due_names`: global, per account, per
target) and returns without waiting, so a check that hangs until its timeout holds one slot of
its own account, not the next claim. Names being checked keep their lease, so no pass claims
them twice; a check over its timeout ends with a failure result like any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from certbroker import metrics
from certbroker.orders import dcv
from certbroker.orders.context import OrdersContext
from certbroker.validation.results import CheckResult

log = structlog.get_logger("certbroker.worker")

# After a check completes, wait this long for others to finish before recording: a burst of
# results goes into one transaction, and a check still running holds back the ones done by
# this much at most.
RECORD_GATHER_SECONDS = 0.005

Result = tuple[dcv.NameCheck, CheckResult]


@dataclass(frozen=True)
class Started:
    """What one claim started."""

    count: int = 0
    email: bool = False  # an EMAIL check: it may queue an approval mail


class DcvChecks:
    """The checks of one worker. `recorded(email)` is called after each group of results is
    stored (the worker wakes: orders may be ready to sign, slots are free)."""

    def __init__(self, ctx: OrdersContext, owner: str, recorded: Callable[[bool], None]) -> None:
        self.ctx = ctx
        self.owner = owner
        self._recorded = recorded
        self._running: dict[asyncio.Task[Result | None], dcv.NameCheck] = {}
        self._finished: list[Result] = []
        self._recorder: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        """Checks running or waiting to be recorded: their names are still leased."""
        return len(self._running) + len(self._finished)

    async def start_due(self) -> Started:
        """Claim as many due names as the caps allow and start checking them."""
        free = self.ctx.policy.dcv_max_checks - self.in_flight
        if free <= 0:
            return Started()
        checks = await asyncio.to_thread(dcv.claim_due_names, self.ctx, self.owner, free)
        for check in checks:
            task = asyncio.create_task(self._check(check))
            self._running[task] = check
            task.add_done_callback(self._done)
        return Started(len(checks), any(c.method == "EMAIL" for c in checks))

    async def _check(self, check: dcv.NameCheck) -> Result | None:
        try:
            return check, await dcv.run_check(self.ctx, check)
        except Exception:  # its lease runs out and the check is tried again then
            log.exception("dcv check failed", name_id=check.name_id)
            return None

    def _done(self, task: asyncio.Task[Result | None]) -> None:
        self._running.pop(task, None)
        if task.cancelled():
            return
        result = task.result()
        if result is not None:
            self._finished.append(result)
        if self._recorder is None:
            self._recorder = asyncio.create_task(self._record())

    async def _record(self) -> None:
        try:
            while self._finished:
                if self._running:  # let a burst of results gather into one transaction
                    await asyncio.sleep(RECORD_GATHER_SECONDS)
                group = list(self._finished)
                try:
                    await asyncio.to_thread(dcv.record_results, self.ctx, self.owner, group)
                except Exception:  # the leases run out and the names are checked again
                    log.exception("recording dcv results failed", count=len(group))
                finally:
                    # Removed only now: until stored, their leases still count (in_flight);
                    # results that finished meanwhile stay for the next round.
                    self._finished = self._finished[len(group) :]
                for check, result in group:
                    metrics.observe_dcv_check(check.method, result.ok)
                    log.info(
                        "dcv check",
                        name_id=check.name_id,
                        account_id=check.account_id,
                        method=check.method,
                        ok=result.ok,
                    )
                self._recorded(any(check.method == "EMAIL" for check, _ in group))
        finally:
            self._recorder = None

    async def drain(self) -> None:
        """Wait until every check started so far has ended and its result is stored."""
        while self._running or self._recorder is not None:
            waiting: set[asyncio.Task[object]] = set(self._running)
            if self._recorder is not None:
                waiting.add(self._recorder)
            await asyncio.wait(waiting)

    async def stop(self) -> None:
        """Store what has finished, stop the rest and give their names back."""
        stopped = [check.name_id for check in self._running.values()]
        for task in list(self._running):
            task.cancel()
        await self.drain()
        if stopped:
            await asyncio.to_thread(dcv.release_leases, self.ctx, self.owner, stopped)
