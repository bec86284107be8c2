"""P10 of docs/PERFORMANCE.md: the end-to-end run (ec256, certbroker only) with the worker in the
server, as `certbroker serve` runs by default, and then with `certbroker worker` as a second
process beside a server whose worker is off, both on one SQLite data directory.

    .venv/bin/python -m bench.separate_worker            # 500 orders, C = 16, both layouts
    .venv/bin/python -m bench.separate_worker --n 300 --concurrency 4

Prints one line per layout; CPU is the sum of the certbroker processes.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from bench import certbroker_e2e
from bench.common import (
    CERTBROKER_CLI,
    CertbrokerServer,
    ChallTestSrv,
    CpuMeter,
    DcvSite,
    die_with_parent,
    latency_ms,
    prepare_csrs,
    stop_process,
)
from bench.load import run_load


def _wait_for(log_path: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    """Until the worker has started (imports, CA): orders placed before would wait for it."""
    deadline = time.monotonic() + 60
    while text not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"certbroker worker did not start; see {log_path}")
        time.sleep(0.05)


def run_layout(
    work: Path, chall: ChallTestSrv, site: DcvSite, *, separate: bool, n: int, concurrency: int
) -> str:
    names = [f"sw-{separate:d}-{i}.shop.example.com" for i in range(n)]
    items = certbroker_e2e.order_items(names, prepare_csrs("ec256", names))
    env = certbroker_e2e.server_env(site, chall, 0.1)
    if separate:
        env["CERTBROKER_WORKER_IN_PROCESS"] = "false"
    server = CertbrokerServer(work / f"certbroker-{separate:d}", env).start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        server.topup(certbroker_e2e.PRODUCT_USD * n + 100)
        pids = {"server": server.pid}
        if separate:
            with open(work / "worker.log", "wb") as log:
                worker = subprocess.Popen(
                    [CERTBROKER_CLI, "worker"],
                    env=server.env,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    preexec_fn=die_with_parent,
                )
            pids["worker"] = worker.pid
            _wait_for(work / "worker.log", "worker started", worker)
        config = {
            "port": server.port,
            "token": server.token,
            "site_port": site.port,
            "poll_seconds": 0.05,
            "poll_max_seconds": 0.5,
        }
        result = run_load(
            certbroker_e2e.OrderJob,
            config,
            items,
            concurrency=concurrency,
            processes=4,
            meter=CpuMeter(pids),
        )
    finally:
        if worker is not None:
            stop_process(worker)
        server.stop()
    lat = latency_ms(result.latencies)
    ok = max(1, result.ok)
    per_process = {k: round(1000 * v / ok, 1) for k, v in result.server_cpu_seconds.items()}
    total = sum(result.server_cpu_seconds.values())
    layout = "serve + worker process" if separate else "serve (worker in-process)"
    return (
        f"{layout:26s} C={concurrency}: {result.per_second:6.1f} certs/s, p50 {lat['p50_ms']} ms, "
        f"p99 {lat['p99_ms']} ms, CPU {1000 * total / ok:.1f} ms/cert {per_process}, "
        f"errors {len(result.errors)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.separate_worker", description=__doc__)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="certbroker-separate-worker-"))
    with ChallTestSrv(work / "challtestsrv.log") as chall, DcvSite() as site:
        for separate in (False, True):
            line = run_layout(
                work, chall, site, separate=separate, n=args.n, concurrency=args.concurrency
            )
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
