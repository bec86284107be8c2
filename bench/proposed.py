"""`certbroker` with the fixes proposed in docs/PERFORMANCE.md applied as patches at start-up.

They touch modules that other work owns at the moment, so they are measured here first and
written into those modules by their owners (bench/run.py --proposed runs the servers this way):

* wake-on-place: the worker only looks for work every WORKER_POLL_SECONDS; `place` wakes it
  (Worker.wake() exists but nothing calls it), so the first DCV check runs right away.
* sqlite-writer-lock: with SQLite every transaction is BEGIN IMMEDIATE, so the threads of one
  process (API requests, the worker's 50 parallel result writes) meet SQLite's busy handler,
  which sleeps 1, 2, 5, 10 ... 100 ms between tries however soon the lock is free. A process-wide
  lock around each SQLite transaction queues them in Python instead, woken the moment the
  previous one commits. Other processes still meet the busy handler, as before.

    python -m bench.proposed serve    # same arguments as `certbroker`
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

# P1 of docs/PERFORMANCE.md (one TLS context per process for file checks) landed in
# validation/http_file.py itself, so it is no longer patched here.
PATCHES = ("wake-on-place", "sqlite-writer-lock")


def _sqlite_writer_lock() -> None:
    from sqlalchemy.orm import Session

    from certbroker.store.db import Database

    original = Database.transaction
    lock = threading.RLock()

    @contextlib.contextmanager
    def transaction(self: Database) -> Iterator[Session]:
        if not self.is_sqlite:
            with original(self) as session:
                yield session
            return
        with lock, original(self) as session:
            yield session

    Database.transaction = transaction  # type: ignore[method-assign]


def apply() -> None:
    from certbroker.orders import placing
    from certbroker.worker import runner

    _sqlite_writer_lock()

    workers: list[tuple[runner.Worker, asyncio.AbstractEventLoop]] = []
    original_run = runner.Worker.run_forever

    async def run_forever(self: runner.Worker, stop: asyncio.Event) -> None:
        workers.append((self, asyncio.get_running_loop()))
        await original_run(self, stop)

    original_place = placing.place

    def place(*args: Any, **kwargs: Any) -> Any:
        order = original_place(*args, **kwargs)
        for worker, loop in workers:
            loop.call_soon_threadsafe(worker.wake)
        return order

    runner.Worker.run_forever = run_forever  # type: ignore[method-assign]
    placing.place = place


def main() -> None:
    apply()
    from certbroker.cli import main as certbroker_main

    certbroker_main()


if __name__ == "__main__":
    main()
