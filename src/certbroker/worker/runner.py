"""The worker: claims due work from the database and runs it (DESIGN.md "Work is durable").

Every item is a row with a due time and a lease, so any number of workers may run; with SQLite
the server runs one in-process.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import time

import structlog

from certbroker import metrics
from certbroker.notify import webhooks
from certbroker.orders import dcv, email_dcv, issuing, revocation_lists, subscriptions
from certbroker.orders.context import OrdersContext

log = structlog.get_logger("certbroker.worker")

MAX_PARALLEL_CHECKS = 50


class Worker:
    def __init__(self, ctx: OrdersContext, *, poll_seconds: float = 1.0) -> None:
        self.ctx = ctx
        self.poll_seconds = poll_seconds
        self.owner = f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Ask for a pass now (after place) instead of at the next poll."""
        self._wake.set()

    async def _check_names(self) -> int:
        checks = await asyncio.to_thread(dcv.claim_due_names, self.ctx, self.owner)
        if not checks:
            return 0
        limit = asyncio.Semaphore(MAX_PARALLEL_CHECKS)

        async def one(check: dcv.NameCheck) -> None:
            async with limit:
                result = await dcv.run_check(self.ctx, check)
            await asyncio.to_thread(dcv.record_result, self.ctx, check, self.owner, result)
            metrics.observe_dcv_check(check.method, result.ok)
            log.info("dcv check", name_id=check.name_id, method=check.method, ok=result.ok)

        await asyncio.gather(*(one(c) for c in checks))
        return len(checks)

    async def _issue(self) -> int:
        ids = await asyncio.to_thread(issuing.claim_ready_orders, self.ctx, self.owner)
        for order_id in ids:
            started = time.perf_counter()
            failures = await issuing.caa_failures(self.ctx, order_id)
            if failures:
                await asyncio.to_thread(
                    issuing.defer_for_caa, self.ctx, order_id, self.owner, failures
                )
                continue
            try:
                issued = await asyncio.to_thread(
                    issuing.issue_order, self.ctx, order_id, self.owner
                )
            except Exception:  # one bad order must not hold the others' leases until expiry
                log.exception("issuance failed", order_id=order_id)
                continue
            if issued:
                metrics.observe_issuance(time.perf_counter() - started)
            log.info("issuance", order_id=order_id, issued=issued)
        return len(ids)

    async def run_once(self) -> int:
        """One pass over every kind of due work; returns how many items were handled."""
        done = await self._check_names()
        # Right after the checks: an approval e-mail queued by one goes out in the same pass.
        done += await asyncio.to_thread(email_dcv.deliver_pending_mail, self.ctx, self.owner)
        # Before issuing: a subscription's reissue whose validation is still fresh signs now.
        done += await asyncio.to_thread(subscriptions.run_subscription_steps, self.ctx)
        done += await self._issue()
        done += await asyncio.to_thread(dcv.fail_expired_orders, self.ctx)
        # Last: events written by the steps above go out in the same pass.
        done += await webhooks.run_step(self.ctx, self.owner)
        # CRLs due by schedule or by a revocation (BR 4.9.7). Not counted: a rebuilt CRL needs
        # no follow-up pass. A failure here (say, a root key unreadable) must not stop the rest.
        try:
            await asyncio.to_thread(revocation_lists.refresh_crls, self.ctx)
        except Exception:
            log.exception("crl refresh failed")
        return done

    async def run_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                busy = await self.run_once()
            except Exception:  # a bad pass must not kill the worker; leases expire and retry
                log.exception("worker pass failed")
                busy = 0
            if busy:
                continue
            self._wake.clear()
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(self._wake.wait())]
            await asyncio.wait(
                waiters, timeout=self.poll_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            for task in waiters:
                task.cancel()


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
