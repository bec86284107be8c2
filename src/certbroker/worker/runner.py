"""The worker: claims due work from the database and runs it (DESIGN.md "Work is durable").

Every item is a row with a due time and a lease, so any number of workers may run; with SQLite
the server runs one in-process.

Each pass (on every wake and poll) starts due DCV checks and issues orders ready to sign. The
scans for rarer work run on timers of their own (`SCANS`), so an idle pass costs two short
transactions instead of a dozen that all want SQLite's one write lock (docs/PERFORMANCE.md P7).
In `run_forever` a pass does not wait for its checks (worker/dcv_checks.py): a slow one keeps
running while later passes claim and check other names. `run_once` still does everything and
waits for its checks, for tests and tools that want one complete pass.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from certbroker import metrics
from certbroker.notify import webhooks
from certbroker.orders import (
    dcv,
    email_dcv,
    issuing,
    revocation_lists,
    subscriptions,
    upstream_orders,
)
from certbroker.orders.context import OrdersContext
from certbroker.worker.dcv_checks import DcvChecks

log = structlog.get_logger("certbroker.worker")

# How often `run_forever` runs each scan, and why that is soon enough:
# - mail: approval mails are queued by the DCV check of an EMAIL name (then sent in that same
#   pass) or by a `resend` call, which waits for this timer.
MAIL_INTERVAL = timedelta(seconds=2)
# - webhooks: events written by a pass's own work (checks, issuance, expiry...) go out at the
#   end of that pass, at most every WEBHOOK_BUSY_GAP under load; events of API calls (place,
#   cancel, revoke) wait for this timer.
WEBHOOK_INTERVAL = timedelta(seconds=2)
WEBHOOK_BUSY_GAP = timedelta(milliseconds=250)
# - subscriptions: reissues start a renew lead (30 days) before a certificate ends, notices
#   the same lead before the dueDate: half a minute late changes nothing.
SUBSCRIPTION_INTERVAL = timedelta(seconds=30)
# - expiry: also run the moment the next validation window ends (the scan reports it), so an
#   order fails as promptly as when every pass scanned; the timer only catches windows that
#   end earlier than any seen (another process, a changed setting).
EXPIRY_INTERVAL = timedelta(seconds=30)
# - CRLs: a revocation refreshes them itself when it commits, and current_crl() builds one on
#   demand when it has expired; this only keeps the 7-day schedule (rebuilt at half-life)
#   and repairs a refresh lost to a crash.
CRL_INTERVAL = timedelta(seconds=60)


@dataclass
class Timer:
    """When a periodic scan is due next (by the context's clock, so tests can move it)."""

    interval: timedelta
    next_at: datetime | None = None  # None: at the next pass
    last_at: datetime | None = None

    def due(self, now: datetime) -> bool:
        if self.next_at is None or now >= self.next_at:
            return True
        # The clock went back: do not wait out the jump.
        return self.last_at is not None and now < self.last_at

    def ran(self, now: datetime) -> None:
        self.last_at = now
        self.next_at = now + self.interval

    def due_by(self, when: datetime) -> None:
        """Run no later than `when` (earlier if already due)."""
        if self.next_at is None or when < self.next_at:
            self.next_at = when


class Worker:
    def __init__(self, ctx: OrdersContext, *, poll_seconds: float = 1.0) -> None:
        self.ctx = ctx
        self.poll_seconds = poll_seconds
        self.owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self.mail = Timer(MAIL_INTERVAL)
        self.webhooks = Timer(WEBHOOK_INTERVAL)
        self.subscriptions = Timer(SUBSCRIPTION_INTERVAL)
        self.expiry = Timer(EXPIRY_INTERVAL)
        self.crls = Timer(CRL_INTERVAL)
        self.checks = DcvChecks(ctx, self.owner, self._checks_recorded)
        # One semaphore per upstream (created on first use, inside the running loop).
        self._upstream_gates: dict[str, asyncio.Semaphore] = {}

    def wake(self) -> None:
        """Ask for a pass now (after place) instead of at the next poll."""
        self._wake.set()

    def _checks_recorded(self, email: bool) -> None:
        if email:  # an approval mail may be queued: send it in the next pass
            self.mail.due_by(self.ctx.clock.now())
        self.wake()  # names verified (orders to sign) and slots free for more checks

    async def _check_names(self, *, wait: bool) -> int:
        """Start due checks; with `wait`, also wait for them and claim again until nothing is
        due or as many names as the global cap were started (a name failing with no back-off
        must not keep one pass going)."""
        started = await self.checks.start_due()
        count = started.count
        while wait and self.checks.in_flight:
            await self.checks.drain()
            if 0 < count < self.ctx.policy.dcv_max_checks:
                more = await self.checks.start_due()
                count += more.count
        return count

    async def _issue(self) -> int:
        ready = await asyncio.to_thread(issuing.claim_issuance, self.ctx, self.owner)
        if not ready:
            return 0
        started = time.perf_counter()
        refusals = await issuing.caa_refusals(self.ctx, ready)
        for order_id, failures in refusals.items():
            await asyncio.to_thread(issuing.defer_for_caa, self.ctx, order_id, self.owner, failures)
        to_issue = [r.order_id for r in ready if r.order_id not in refusals]
        if not to_issue:
            return len(ready)
        try:
            issued = await asyncio.to_thread(issuing.issue_orders, self.ctx, to_issue, self.owner)
        except Exception:  # a database failure: the leases run out and the orders retry
            log.exception("issuance failed", order_ids=to_issue)
            return len(ready)
        elapsed = time.perf_counter() - started
        for order_id, ok in issued.items():
            if ok:
                metrics.observe_issuance(elapsed)
            log.info("issuance", order_id=order_id, issued=ok)
        return len(ready)

    async def _upstream_steps(self) -> int:
        """One step of each due upstream ACME order, a few at a time per upstream (its
        `max_concurrent_steps`; each step is blocking network I/O with its own deadlines, run
        in a thread). An upstream whose circuit is open has no step claimed."""
        due = await asyncio.to_thread(upstream_orders.claim_steps, self.ctx, self.owner)
        if not due:
            return 0
        for _id, name in due:
            if name not in self._upstream_gates:
                config = self.ctx.upstreams.get(name)
                limit = config.max_concurrent_steps if config is not None else 1
                self._upstream_gates[name] = asyncio.Semaphore(limit)

        async def step(upstream_order_id: int, upstream: str) -> None:
            async with self._upstream_gates[upstream]:
                try:
                    done = await asyncio.to_thread(
                        upstream_orders.run_step, self.ctx, upstream_order_id, self.owner
                    )
                    log.info("upstream step", upstream_order_id=upstream_order_id, done=done)
                except Exception:  # the lease runs out and the step is taken again
                    log.exception("upstream step failed", upstream_order_id=upstream_order_id)

        await asyncio.gather(*(step(i, name) for i, name in due))
        return len(due)

    async def run_once(self) -> int:
        """One pass over every kind of due work, its checks finished and recorded; returns how
        many items were handled."""
        return await self._pass(everything=True, wait=True)

    async def run_scheduled(self) -> int:
        """A pass as `run_forever` makes it (the claims, and the scans whose timer is due), but
        waiting for the checks it started, for tools that run passes one by one."""
        return await self._pass(everything=False, wait=True)

    async def _scan(
        self, timer: Timer, everything: bool, step: Callable[[], Awaitable[int]]
    ) -> int:
        if not (everything or timer.due(self.ctx.clock.now())):
            return 0
        timer.ran(self.ctx.clock.now())
        return await step()

    async def _pass(self, *, everything: bool, wait: bool) -> int:
        ctx, owner = self.ctx, self.owner
        done = await self._check_names(wait=wait)
        # Right after the checks: an approval e-mail queued by one they finished goes out in
        # the same pass (a check still running wakes the worker when it is recorded).
        done += await self._scan(
            self.mail,
            everything,
            lambda: asyncio.to_thread(email_dcv.deliver_pending_mail, ctx, owner),
        )
        # Before issuing: a subscription's reissue whose validation is still fresh signs now.
        done += await self._scan(
            self.subscriptions,
            everything,
            lambda: asyncio.to_thread(subscriptions.run_subscription_steps, ctx),
        )
        done += await self._issue()
        done += await self._upstream_steps()
        done += await self._scan(self.expiry, everything, self._expire)
        if done and self.webhooks.last_at is not None:
            self.webhooks.due_by(self.webhooks.last_at + WEBHOOK_BUSY_GAP)
        # Last: events written by the steps above go out in the same pass.
        done += await self._scan(self.webhooks, everything, lambda: webhooks.run_step(ctx, owner))
        # CRLs due by schedule or by a revocation (BR 4.9.7). Not counted: a rebuilt CRL needs
        # no follow-up pass.
        await self._scan(self.crls, everything, self._refresh_crls)
        return done

    async def _expire(self) -> int:
        failed, following = await asyncio.to_thread(dcv.expire_orders, self.ctx)
        if following is not None:
            self.expiry.due_by(following)
        return failed

    async def _refresh_crls(self) -> int:
        # A failure here (say, a root key unreadable) must not stop the rest.
        try:
            await asyncio.to_thread(revocation_lists.refresh_crls, self.ctx)
        except Exception:
            log.exception("crl refresh failed")
        return 0

    def _idle_seconds(self) -> float:
        """How long to sleep: the poll interval, or less when a timer is due sooner."""
        now = self.ctx.clock.now()
        wait = self.poll_seconds
        for timer in (self.mail, self.webhooks, self.subscriptions, self.expiry, self.crls):
            if timer.next_at is not None:
                wait = min(wait, (timer.next_at - now).total_seconds())
        return max(wait, 0.0)

    async def run_forever(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                self._wake.clear()  # a wake from here on asks for another pass
                try:
                    busy = await self._pass(everything=False, wait=False)
                except Exception:  # a bad pass must not kill the worker; leases expire, retry
                    log.exception("worker pass failed")
                    busy = 0
                if busy:
                    continue
                waiters = [
                    asyncio.create_task(stop.wait()),
                    asyncio.create_task(self._wake.wait()),
                ]
                await asyncio.wait(
                    waiters, timeout=self._idle_seconds(), return_when=asyncio.FIRST_COMPLETED
                )
                for task in waiters:
                    task.cancel()
        finally:
            # Checks still running are stopped and their names given back for another worker
            # (or the next start) to check at once; results already in are stored.
            await self.checks.stop()


def run_until_signalled(ctx: OrdersContext, *, poll_seconds: float = 1.0) -> None:
    """`certbroker worker`: run passes until SIGTERM or SIGINT, then finish the current pass
    and exit. A SIGKILL loses nothing either: leases run out and another worker takes over."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        worker = Worker(ctx, poll_seconds=poll_seconds)
        log.info("worker started", owner=worker.owner)
        await worker.run_forever(stop)
        log.info("worker stopped", owner=worker.owner)

    try:
        asyncio.run(main())
    finally:
        ctx.db.dispose()
