"""RSA private keys made ahead of time for orders placed without a CSR (docs/PERFORMANCE.md P8).

RSA generation costs 40-55 ms of CPU with a long tail; EC keys take about 0.02 ms, so only the
RSA specs are pooled (``take`` answers None for the others). One low-priority child process
(spawned, so the second core does the work and the API thread never waits for it) makes the
keys and hands them over as DER PKCS#8 through a pipe: they never touch disk. Each key is handed
out once. An empty, disabled, closed or crashed pool makes ``take`` answer None and the caller
generates inline; a crashed process is replaced on a later ``take``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from functools import partial
from typing import Final, Protocol

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certbroker.pki.keys import KEY_SPECS, PrivateKey, generate_private_key

log = structlog.get_logger("certbroker.key_pool")

POOLED_SPECS: Final = frozenset(spec for spec in KEY_SPECS if spec.startswith("rsa"))
# Keys per task, about 0.2 s of work each: a task in flight delays nothing for long.
_BATCH: Final = {"rsa2048": 4, "rsa3072": 2, "rsa4096": 1}
# Under contention the API process gets about 10x the pool process's CPU share.
_NICENESS: Final = 10
RESTART_SECONDS: Final = 30.0

KeyMaker = Callable[[str, int], list[bytes]]


class KeySource(Protocol):
    """Where `generate_order_key` takes a ready key from; None: generate one inline."""

    def take(self, spec: str) -> PrivateKey | None: ...


def _init_pool_process() -> None:
    """Initializer of the pool process: low priority, and gone with its parent."""
    # Not allowed here: run at the same priority.
    with contextlib.suppress(OSError):
        os.nice(_NICENESS)
    parent = multiprocessing.parent_process()
    if parent is not None:
        # A killed server (SIGKILL, OOM) never shuts the executor down, and the worker holds
        # both ends of its task pipe, so it would wait forever: leave when the parent is gone.
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(parent_sentinel: int) -> None:
    multiprocessing.connection.wait([parent_sentinel])
    os._exit(0)


def make_key_batch(spec: str, count: int) -> list[bytes]:
    """In the pool process: ``count`` new keys of ``spec`` as DER PKCS#8."""
    return [
        generate_private_key(spec).private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for _ in range(count)
    ]


def _load(der: bytes) -> PrivateKey:
    # Our own keys: the RSA consistency check (tens of ms) would undo the point of the pool.
    key = serialization.load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):  # pragma: no cover
        raise TypeError(f"the pool process made a {type(key).__name__}")
    return key


def _stop(executor: ProcessPoolExecutor) -> None:
    """Shut down without waiting for the batch in flight (its keys are disposable), as
    Python 3.14's terminate_workers does, then join: no process outlives close()."""
    running = getattr(executor, "_processes", None)
    if running is None:  # pragma: no cover - private attribute gone: wait for the batch instead
        executor.shutdown(wait=True, cancel_futures=True)
        return
    processes = list(dict(running).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        try:
            if process.is_alive():
                process.terminate()
        except (ValueError, ProcessLookupError):  # already gone
            continue
    for process in processes:
        try:
            process.join(timeout=10)
        except ValueError:  # pragma: no cover - already closed
            continue


class KeyPool:
    """Up to ``size`` ready keys for each RSA spec; ``size`` 0 disables the pool.

    Thread-safe. The pool process starts on the first ``take`` or ``start``; ``close`` stops it
    (the app's lifespan does both).
    """

    def __init__(
        self,
        size: int,
        *,
        restart_seconds: float = RESTART_SECONDS,
        maker: KeyMaker = make_key_batch,
    ) -> None:
        if size < 0:
            raise ValueError("the key pool size cannot be negative")
        self.size = size
        self._restart_seconds = restart_seconds
        self._maker = maker
        # Guards the keys and the counters; never held while calling the executor, whose
        # management thread runs _collect (which takes this lock).
        self._lock = threading.Lock()
        # Guards the executor's life; _collect never takes it.
        self._executor_lock = threading.Lock()
        self._keys: dict[str, deque[PrivateKey]] = {spec: deque() for spec in POOLED_SPECS}
        self._pending = dict.fromkeys(POOLED_SPECS, 0)
        self._executor: ProcessPoolExecutor | None = None
        self._failed_at: float | None = None
        self._closed = False
        # Results of batches asked for before a close() are dropped.
        self._generation = 0
        self.failures = 0

    def pooled(self, spec: str) -> bool:
        return self.size > 0 and spec in POOLED_SPECS

    def available(self, spec: str) -> int:
        with self._lock:
            keys = self._keys.get(spec)
            return len(keys) if keys is not None else 0

    def process_ids(self) -> list[int]:
        """The pool process's id while it runs (for tests and diagnostics)."""
        with self._executor_lock:
            executor = self._executor
            processes = getattr(executor, "_processes", None) or {}
            # A copy: the executor's management thread changes the mapping.
            return [pid for pid, process in dict(processes).items() if process.is_alive()]

    def start(self, specs: Iterable[str] = ()) -> None:
        """(Re)open the pool and fill ``specs`` now: the default key spec at start-up."""
        with self._lock:
            self._closed = False
        for spec in specs:
            self._refill(spec)

    def take(self, spec: str) -> PrivateKey | None:
        """A ready key of ``spec``, never handed out before; None when there is none."""
        if not self.pooled(spec):
            return None
        with self._lock:
            if self._closed:
                return None
            keys = self._keys[spec]
            key = keys.popleft() if keys else None
        self._refill(spec)
        return key

    def close(self) -> None:
        """Stop the pool process and drop the ready keys; ``take`` answers None until
        ``start``."""
        with self._lock:
            self._closed = True
            self._generation += 1
            for spec in POOLED_SPECS:
                self._keys[spec].clear()
                self._pending[spec] = 0
            self._failed_at = None
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            _stop(executor)

    def _refill(self, spec: str) -> None:
        if not self.pooled(spec):
            return
        try:
            self._ask(spec)
        except Exception as exc:  # BrokenProcessPool, OSError...: never fail an order
            self._failed(exc)

    def _ask(self, spec: str) -> None:
        """Ask the pool process for the keys ``spec`` lacks."""
        # Submitting under the executor lock: a concurrent restart or close cannot swap the
        # executor between the choice and the submit.
        with self._executor_lock:
            executor = self._running_executor()
            if executor is None:
                return
            with self._lock:
                if self._closed:
                    return
                missing = self.size - len(self._keys[spec]) - self._pending[spec]
                if missing <= 0:
                    return
                self._pending[spec] += missing
                generation = self._generation
            asked = 0
            try:
                batch = _BATCH[spec]
                while asked < missing:
                    count = min(batch, missing - asked)
                    future = executor.submit(self._maker, spec, count)
                    asked += count
                    future.add_done_callback(partial(self._collect, spec, count, generation))
            finally:
                if asked < missing:
                    with self._lock:
                        if generation == self._generation:
                            self._pending[spec] -= missing - asked

    def _running_executor(self) -> ProcessPoolExecutor | None:
        """The executor, started or restarted as needed; the caller holds _executor_lock."""
        with self._lock:
            if self._closed:
                return None
            failed_at = self._failed_at
        if failed_at is not None:
            if time.monotonic() - failed_at < self._restart_seconds:
                return None
            old, self._executor = self._executor, None
            with self._lock:
                # Whatever the old process still had in flight is lost: forget it.
                self._generation += 1
                for spec in POOLED_SPECS:
                    self._pending[spec] = 0
                self._failed_at = None
            if old is not None:
                _stop(old)
            log.info("key pool process restarting")
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_pool_process,
            )
        return self._executor

    def _collect(self, spec: str, count: int, generation: int, future: Future[list[bytes]]) -> None:
        """Done callback (executor's management thread): the batch's keys join the pool."""
        if future.cancelled():
            keys: list[PrivateKey] = []
            error: BaseException | None = None
        else:
            error = future.exception()
            try:
                keys = [] if error is not None else [_load(der) for der in future.result()]
            except Exception as exc:  # a batch that does not load is a failure like a crash
                keys, error = [], exc
        with self._lock:
            if generation != self._generation:
                return
            self._pending[spec] -= count
            pool = self._keys[spec]
            pool.extend(keys[: max(0, self.size - len(pool))])
        if error is not None:
            self._failed(error)

    def _failed(self, error: BaseException) -> None:
        with self._lock:
            if self._closed or self._failed_at is not None:
                return  # one log line per failure, not one per batch in flight
            self._failed_at = time.monotonic()
            self.failures += 1
        log.error(
            "key pool process failed; generating keys inline until it restarts",
            error_type=type(error).__name__,
            error=str(error),
            restart_in_seconds=self._restart_seconds,
        )
