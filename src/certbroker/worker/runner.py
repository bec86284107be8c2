"""The worker: claims due work from the database and runs it (DESIGN.md "Work is durable").

Every item is a row with a due time and a lease, so any number of workers may run; with SQLite
the server runs one in-process.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket

import structlog

from certbroker.orders import dcv, issuing
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
            log.info("dcv check", name_id=check.name_id, method=check.method, ok=result.ok)

        await asyncio.gather(*(one(c) for c in checks))
        return len(checks)

    async def _issue(self) -> int:
        ids = await asyncio.to_thread(issuing.claim_ready_orders, self.ctx, self.owner)
        for order_id in ids:
            issued = await asyncio.to_thread(issuing.issue_order, self.ctx, order_id, self.owner)
            log.info("issuance", order_id=order_id, issued=issued)
        return len(ids)

    async def run_once(self) -> int:
        """One pass over every kind of due work; returns how many items were handled."""
        done = await self._check_names()
        done += await self._issue()
        done += await asyncio.to_thread(dcv.fail_expired_orders, self.ctx)
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
