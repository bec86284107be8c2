"""The pool of RSA keys made ahead for `place` without a CSR (pki/key_pool.py, P8)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError
from structlog.testing import capture_logs

from certbroker import bootstrap
from certbroker.orders.csr_policy import generate_order_key
from certbroker.pki.key_pool import POOLED_SPECS, KeyPool, make_key_batch
from certbroker.pki.keys import PrivateKey, public_key_matches
from certbroker.settings import Settings

NAMES = ["shop.example.com", "www.shop.example.com"]
# A spawned process on a busy 2-core machine: generous, and only a bound (no timing asserted).
WAIT_SECONDS = 120.0


def crash(spec: str, count: int) -> list[bytes]:
    """A maker whose process dies: the executor reports BrokenProcessPool."""
    os._exit(3)


def crash_once(marker: str, spec: str, count: int) -> list[bytes]:
    """Dies the first time (leaving `marker`), makes keys after."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(3)
    return make_key_batch(spec, count)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


def gone(pid: int) -> bool:
    """No such process (joined, so not even a zombie)."""
    return not Path(f"/proc/{pid}").exists()


class Recording:
    """A KeySource that notes what the pool handed out."""

    def __init__(self, pool: KeyPool) -> None:
        self.pool = pool
        self.taken: list[PrivateKey | None] = []

    def take(self, spec: str) -> PrivateKey | None:
        key = self.pool.take(spec)
        self.taken.append(key)
        return key


@pytest.fixture
def pools() -> Iterator[Callable[..., KeyPool]]:
    made: list[KeyPool] = []

    def make(size: int, **options: object) -> KeyPool:
        pool = KeyPool(size, **options)  # type: ignore[arg-type]
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()


def _modulus(key: PrivateKey | None) -> int:
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.private_numbers().public_numbers.n


def test_only_rsa_is_pooled() -> None:
    assert sorted(POOLED_SPECS) == ["rsa2048", "rsa3072", "rsa4096"]
    pool = KeyPool(4)
    assert pool.take("ec256") is None and pool.take("ec384") is None
    assert pool.process_ids() == []  # EC keys start no process


def test_size_zero_disables_the_pool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pool = KeyPool(0)
    pool.start(["rsa2048"])
    assert pool.take("rsa2048") is None
    assert pool.process_ids() == []
    source = Recording(pool)
    made = generate_order_key(NAMES, "rsa2048", source)
    assert source.taken == [None]
    assert made.private_key is not None
    assert public_key_matches(made.private_key, made.csr.public_key)

    monkeypatch.setenv("CERTBROKER_KEY_POOL_SIZE", "0")
    assert bootstrap.key_pool_from(Settings(data_dir=tmp_path)) is None
    monkeypatch.setenv("CERTBROKER_KEY_POOL_SIZE", "5")
    built = bootstrap.key_pool_from(Settings(data_dir=tmp_path))
    assert built is not None and built.size == 5
    monkeypatch.delenv("CERTBROKER_KEY_POOL_SIZE")
    default = bootstrap.key_pool_from(Settings(data_dir=tmp_path))
    assert default is not None and default.size == 32
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, key_pool_size=-1)
    with pytest.raises(ValueError, match="negative"):
        KeyPool(-1)


def test_pooled_keys_are_handed_out_once_and_match_the_csr(
    pools: Callable[..., KeyPool],
) -> None:
    pool = pools(2)
    pool.start(["rsa2048"])
    wait_for(lambda: pool.available("rsa2048") == 2, "the pool to fill")
    source = Recording(pool)
    first = generate_order_key(NAMES, "rsa2048", source)
    second = generate_order_key(NAMES, "rsa2048", source)
    assert source.taken[0] is first.private_key and source.taken[1] is second.private_key
    for made in (first, second):
        assert made.generated and made.key_spec == "rsa2048"
        assert made.private_key is not None
        assert public_key_matches(made.private_key, made.csr.public_key)
        assert isinstance(made.private_key, rsa.RSAPrivateKey)
        assert made.private_key.key_size == 2048
    # Refilled keys are new ones: no key comes out twice.
    wait_for(lambda: pool.available("rsa2048") == 2, "the refill")
    seen = [_modulus(first.private_key), _modulus(second.private_key)]
    seen += [_modulus(pool.take("rsa2048")), _modulus(pool.take("rsa2048"))]
    assert len(set(seen)) == 4


def test_an_empty_pool_falls_back_to_inline_and_fills_lazily(
    pools: Callable[..., KeyPool],
) -> None:
    pool = pools(1)
    assert pool.process_ids() == []  # nothing runs before the first use
    source = Recording(pool)
    made = generate_order_key(NAMES, "rsa3072", source)
    assert source.taken == [None]  # empty: made inline
    assert isinstance(made.private_key, rsa.RSAPrivateKey) and made.private_key.key_size == 3072
    assert public_key_matches(made.private_key, made.csr.public_key)
    # The first use asked for the spec's keys; no other spec was filled.
    wait_for(lambda: pool.available("rsa3072") == 1, "the lazy fill")
    assert pool.available("rsa2048") == 0 and pool.available("rsa4096") == 0
    key = pool.take("rsa3072")
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072


def test_refill_after_each_take(pools: Callable[..., KeyPool]) -> None:
    pool = pools(3)
    pool.start(["rsa2048"])
    wait_for(lambda: pool.available("rsa2048") == 3, "the pool to fill")
    assert pool.take("rsa2048") is not None
    assert pool.take("rsa2048") is not None
    assert pool.available("rsa2048") <= 1
    wait_for(lambda: pool.available("rsa2048") == 3, "the refill")
    assert pool.failures == 0


def test_close_stops_the_process_and_start_reopens(pools: Callable[..., KeyPool]) -> None:
    pool = pools(2)
    pool.start(["rsa2048"])
    wait_for(lambda: bool(pool.process_ids()), "the pool process")
    pids = pool.process_ids()
    pool.close()  # even with a batch in flight
    assert all(gone(pid) for pid in pids), pids
    assert pool.process_ids() == []
    assert pool.take("rsa2048") is None  # closed: nothing handed out, nothing started
    assert pool.process_ids() == []
    pool.start(["rsa2048"])
    wait_for(lambda: pool.available("rsa2048") == 2, "the pool to fill again")


def test_a_crashed_pool_process_falls_back_to_inline_and_logs(
    pools: Callable[..., KeyPool],
) -> None:
    pool = pools(2, maker=crash, restart_seconds=3600)
    with capture_logs() as logs:
        source = Recording(pool)
        made = generate_order_key(NAMES, "rsa2048", source)
        assert source.taken == [None] and made.private_key is not None
        wait_for(lambda: pool.failures == 1, "the crash to be noticed")
        # Broken: no restart before restart_seconds, keys come inline.
        again = generate_order_key(NAMES, "rsa2048", source)
        assert source.taken == [None, None]
        assert again.private_key is not None
        assert public_key_matches(again.private_key, again.csr.public_key)
    assert pool.process_ids() == []
    assert pool.failures == 1
    failures = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(failures) == 1, logs
    assert failures[0]["error_type"] == "BrokenProcessPool"


def test_a_crashed_pool_process_is_restarted_later(
    pools: Callable[..., KeyPool], tmp_path: Path
) -> None:
    marker = tmp_path / "crashed"
    pool = pools(2, maker=partial(crash_once, str(marker)), restart_seconds=0)
    assert pool.take("rsa2048") is None
    wait_for(lambda: pool.failures == 1, "the crash to be noticed")
    assert marker.exists()
    assert pool.take("rsa2048") is None  # still empty; this take restarts the process
    wait_for(lambda: pool.available("rsa2048") == 2, "the restarted pool to fill")
    key = pool.take("rsa2048")
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert pool.failures == 1


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_the_pool_process_leaves_when_its_parent_is_killed() -> None:
    # A server killed with SIGKILL never closes its pool.
    script = (
        "import sys, time\n"
        "from certbroker.pki.key_pool import KeyPool\n"
        "pool = KeyPool(2)\n"
        "pool.start(['rsa2048'])\n"
        "while not pool.process_ids(): time.sleep(0.02)\n"
        "print(pool.process_ids()[0], flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait()
    wait_for(lambda: _dead(child), "the orphaned pool process to exit")
