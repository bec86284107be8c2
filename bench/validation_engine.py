"""Section 4: the validation engine re-checking a backlog of pending names.

A server with its worker off takes multi-domain orders until the backlog holds `names` pending
names (HTTP_CSR_HASH), then stops. A fresh process (`python -m bench.validation_engine check`,
so its peak RSS is the engine's own) runs certbroker's worker passes on that database until no
name is due: every name is resolved through pebble-challtestsrv and fetched from the loopback
site, which has none of the files (the customers have not published yet), so each check fails
and the name is scheduled again an hour later. Reported: checks/s, CPU and peak RSS; a run that
has not finished after `limit_seconds` stops there and says so (`finished`: false).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import certbroker_e2e
from bench.common import (
    REPO,
    CertbrokerServer,
    ChallTestSrv,
    CpuMeter,
    DcvSite,
    generate_key,
    make_csr,
    peak_rss_mb,
)
from bench.load import run_load
from bench.place_collect import RequestJob

MULTI = "sectigo-multi-domain"  # up to 250 names


def _order_fields(names: list[str], csr: str) -> dict[str, str]:
    params = {
        "server": "nginx",
        "csr": csr,
        "domainInfo": [{"domainName": n, "dcvMethod": "HTTP_CSR_HASH"} for n in names],
    }
    return {"productCode": MULTI, "years": "1", "params": json.dumps(params)}


def run(
    workdir: Path,
    *,
    chall: ChallTestSrv,
    site: DcvSite,
    names: int,
    names_per_order: int,
    processes: int,
    limit_seconds: float,
    proposed: bool = False,
) -> dict[str, Any]:
    data_dir = workdir / "certbroker"
    env = {
        **certbroker_e2e.server_env(site, chall, 1.0),
        "CERTBROKER_WORKER_IN_PROCESS": "false",
        "CERTBROKER_DCV_RETRY_SECONDS": "3600",
    }
    server = CertbrokerServer(data_dir, env, proposed=proposed).start()
    try:
        key = generate_key("ec256")
        orders = []
        for first in range(0, names, names_per_order):
            batch = [
                f"n{i}.backlog.example.com"
                for i in range(first, min(names, first + names_per_order))
            ]
            orders.append(_order_fields(batch, make_csr(key, batch)))
        server.topup(len(orders) * (30 + 10 * names_per_order) + 100)
        placed = run_load(
            RequestJob,
            {"port": server.port, "token": server.token, "endpoint": "place"},
            orders,
            concurrency=4,
            processes=processes,
            meter=CpuMeter({"server": server.pid}),
        )
        if placed.errors:
            raise RuntimeError(f"placing the backlog failed: {placed.errors[:3]}")
    finally:
        server.stop()
    command = [sys.executable, "-m", "bench.validation_engine", "check", str(limit_seconds)]
    if proposed:
        command.append("--proposed")
    log_path = workdir / "check.log"
    with open(log_path, "wb") as log:
        checked = subprocess.run(
            command, env=server.env, cwd=REPO, stdout=subprocess.PIPE, stderr=log, timeout=900
        )
    if checked.returncode != 0:
        raise RuntimeError(f"the check run failed; see {log_path}")
    result: dict[str, Any] = json.loads(checked.stdout.decode().strip().splitlines()[-1])
    result.update({"names": names, "names_per_order": names_per_order, "orders": len(orders)})
    return result


async def _check_all(ctx: Any, deadline: float) -> tuple[int, bool]:
    """Worker passes until nothing is due (True) or the deadline passed (False): `serve`'s
    passes (`run_scheduled`: the claims every pass, the periodic scans on their timers), each
    waiting for the checks it started, where `serve` goes on claiming meanwhile."""
    from certbroker.worker.runner import Worker

    worker = Worker(ctx)
    handled = 0
    while time.monotonic() < deadline:
        done = await worker.run_scheduled()
        if not done:
            return handled, True
        handled += done
    return handled, False


def check_main(proposed: bool, limit_seconds: float) -> None:
    """In a fresh process: worker passes until nothing is due; prints one JSON line."""
    if proposed:
        from bench import proposed as patches

        patches.apply()
    from certbroker import bootstrap, logs
    from certbroker.settings import Settings

    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)  # as `certbroker serve` logs
    ctx = bootstrap.build_context(settings)
    rss_before = peak_rss_mb(os.getpid())
    started, cpu_before = time.monotonic(), time.process_time()
    checks, finished = asyncio.run(_check_all(ctx, started + limit_seconds))
    seconds = time.monotonic() - started
    print(
        json.dumps(
            {
                "checks": checks,
                "finished": finished,
                "seconds": round(seconds, 2),
                "checks_per_s": round(checks / seconds, 1) if seconds else 0.0,
                "cpu_ms_per_check": round(
                    1000 * (time.process_time() - cpu_before) / max(1, checks), 3
                ),
                "peak_rss_mb": round(peak_rss_mb(os.getpid()), 1),
                "rss_before_checks_mb": round(rss_before, 1),
            }
        )
    )


if __name__ == "__main__":
    if sys.argv[1:2] != ["check"] or len(sys.argv) < 3:
        raise SystemExit("usage: python -m bench.validation_engine check SECONDS [--proposed]")
    check_main("--proposed" in sys.argv, float(sys.argv[2]))
