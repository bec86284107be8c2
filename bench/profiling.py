"""Sampling profiles of a server under load with py-spy, and a plain-text summary of them.

`PySpy(pid, path)` records collapsed stacks (`py-spy record --format raw`) while the load runs;
`summarize(path)` answers the functions with the largest inclusive and self share of the
samples in which the process was busy (idle waits are left out).
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

# Frames that mean "waiting", not "working": samples ending in them are not CPU.
_IDLE_LEAVES = (
    "select (selectors.py",
    "wait (threading.py",
    "_worker (concurrent/futures",
    "run_forever",
    "epoll",
    "poll (selectors.py",
    "sleep",
)


def py_spy_binary() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class PySpy:
    def __init__(self, pid: int, path: Path, rate: int = 200) -> None:
        self.pid = pid
        self.path = path
        self.rate = rate
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PySpy:
        binary = py_spy_binary()
        if binary is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.process = subprocess.Popen(
            [
                binary,
                "record",
                "--pid",
                str(self.pid),
                "--format",
                "raw",
                "--output",
                str(self.path),
                "--rate",
                str(self.rate),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # py-spy attaches before the load starts
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


# Frames every sample passes through (start-up, event loop, thread pools): left out of the
# inclusive list, which should name the work.
_PLUMBING = (
    "_click/",
    "typer/",
    "(uvicorn/main.py",
    "(uvicorn/server.py",
    "(uvicorn/_compat.py",
    "(asyncio/runners.py",
    "(asyncio/base_events.py",
    "(asyncio/events.py",
    "threading.py)",
    "(futures/thread.py",
    "<module>",
    "runpy",
    "(certbroker/cli.py",
    "(_backends/_asyncio.py",
    "main (bench/proposed.py",
)


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 2)
    return f"{name} ({'/'.join(file[-2:])})"


def load_stacks(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_short(f) for f in stack.split(";")]
        if frames and not any(marker in frames[-1] for marker in _IDLE_LEAVES):
            stacks.append((frames, int(count)))
    return stacks


def summarize(path: Path, top: int = 30) -> dict[str, list[tuple[str, float]]]:
    """{'inclusive': [(frame, % of busy samples)], 'self': [...]} over the busy samples."""
    stacks = load_stacks(path)
    total = sum(count for _frames, count in stacks) or 1
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    return {
        "busy_samples": [("samples", float(total))],
        "inclusive": [
            (f, round(100 * c / total, 1))
            for f, c in inclusive.most_common()
            if not any(p in f for p in _PLUMBING)
        ][:top],
        "self": [(f, round(100 * c / total, 1)) for f, c in own.most_common(top)],
    }


def main() -> None:
    """python -m bench.profiling PROFILE.txt [TOP]: print the summary of a recorded profile."""
    path = Path(sys.argv[1])
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    for kind, rows in summarize(path, top).items():
        print(f"== {kind}")
        for frame, share in rows:
            print(f"{share:6.1f}  {frame}")


if __name__ == "__main__":
    main()
