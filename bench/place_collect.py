"""Section 3: `place` alone (with a CSR, and without one so the server makes the key) and
`collect` alone, as requests/s and latency at several concurrencies.

The server first runs with its worker to turn a seed batch into COMPLETE orders, then restarts
on the same data directory with the worker off, so the requests measured here are the only
work the server does. `collect` is measured on COMPLETE orders (the answer carries the
certificate) and on PENDING ones (what a panel polls).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import certbroker_e2e
from bench.common import (
    CertbrokerServer,
    ChallTestSrv,
    CpuMeter,
    DcvSite,
    latency_ms,
    peak_rss_mb,
    prepare_csrs,
)
from bench.load import ApiClient, LoadResult, expect_success, run_load

MULTI = "sectigo-multi-domain"  # 30.00 USD base
PACED_WITHOUT_CSR = "place without CSR, half capacity"


class RequestJob:
    """One lane sending one endpoint's requests back to back (or one per `pace_seconds`)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.api = ApiClient(config["port"], config["token"])
        self.endpoint = str(config["endpoint"])
        self.pace_seconds = float(config.get("pace_seconds", 0.0))

    def run(self, item: dict[str, str]) -> None:
        data = expect_success(self.endpoint, self.api.call(self.endpoint, **item))
        if self.endpoint == "place" and "certId" not in data:
            raise RuntimeError("place answered no certId")


def place_fields(name: str, csr: str | None) -> dict[str, str]:
    params: dict[str, Any] = {
        "server": "nginx",
        "domainInfo": [{"domainName": name, "dcvMethod": "HTTP_CSR_HASH"}],
    }
    if csr is not None:
        params["csr"] = csr
    return {"productCode": certbroker_e2e.PRODUCT, "years": "1", "params": json.dumps(params)}


@dataclass
class Measure:
    what: str
    concurrency: int
    result: LoadResult

    def row(self) -> dict[str, Any]:
        r = self.result
        return {
            "what": self.what,
            "concurrency": self.concurrency,
            "requests": r.ok + len(r.errors),
            "errors": len(r.errors),
            "error_samples": r.errors[:3],
            "requests_per_s": round(r.per_second, 1),
            **latency_ms(r.latencies),
            "server_cpu_ms_per_request": round(
                1000 * r.server_cpu_seconds.get("server", 0.0) / max(1, r.ok), 3
            ),
            "client_cpu_ms_per_request": round(1000 * r.client_cpu_seconds / max(1, r.ok), 3),
            "client_processes": r.processes,
        }


def run(
    workdir: Path,
    *,
    chall: ChallTestSrv,
    site: DcvSite,
    key_type: str,
    concurrencies: list[int],
    requests: int,
    requests_without_csr: int,
    seed_orders: int,
    processes: int,
    poll_seconds: float,
    poll_max_seconds: float,
    proposed: bool = False,
    idle_pause_seconds: float = 5.0,
) -> dict[str, Any]:
    data_dir = workdir / "certbroker"
    env = certbroker_e2e.server_env(site, chall, 0.1)
    server = CertbrokerServer(data_dir, env, proposed=proposed).start()
    seeded: list[str] = []
    try:
        placed_usd = certbroker_e2e.PRODUCT_USD * (
            seed_orders + (len(concurrencies) + 1) * (requests + requests_without_csr) + 10
        )
        server.topup(placed_usd + 1000)
        names = [f"seed-{i}.shop.example.com" for i in range(seed_orders)]
        items = certbroker_e2e.order_items(names, prepare_csrs(key_type, names))
        seed = run_load(
            certbroker_e2e.OrderJob,
            {
                "port": server.port,
                "token": server.token,
                "site_port": site.port,
                "poll_seconds": poll_seconds,
                "poll_max_seconds": poll_max_seconds,
            },
            items,
            concurrency=8,
            processes=processes,
            meter=CpuMeter({"server": server.pid}),
        )
        if seed.errors:
            raise RuntimeError(f"seeding failed: {seed.errors[:3]}")
    finally:
        server.stop()
    # The cert ids of the seed orders: certIdByrefId would need refIds; list them from the db.
    seeded = _cert_ids(data_dir)

    env = {**env, "CERTBROKER_WORKER_IN_PROCESS": "false"}
    server = CertbrokerServer(data_dir, env, token=server.token, proposed=proposed).start()
    measures: list[Measure] = []
    pending: list[str] = []
    try:
        base = {"port": server.port, "token": server.token}

        def measure(
            what: str, endpoint: str, c: int, items: list[dict[str, str]], pace: float = 0.0
        ) -> None:
            meter = CpuMeter({"server": server.pid})
            result = run_load(
                RequestJob,
                {**base, "endpoint": endpoint, "pace_seconds": pace},
                items,
                concurrency=c,
                processes=processes,
                meter=meter,
            )
            measures.append(Measure(what, c, result))

        for c in concurrencies:
            names = [f"place-c{c}-{i}.shop.example.com" for i in range(requests)]
            csrs = prepare_csrs(key_type, names)
            measure(
                "place with CSR",
                "place",
                c,
                [place_fields(n, s) for n, s in zip(names, csrs, strict=True)],
            )
        for c in concurrencies:
            count = max(requests_without_csr, 2 * c)
            names = [f"keygen-c{c}-{i}.shop.example.com" for i in range(count)]
            measure("place without CSR", "place", c, [place_fields(n, None) for n in names])
        # Under the capacity: one client at half the best rate just measured, after a pause in
        # which the server is idle (a server's usual state between bursts; its key pool refills).
        capacity = max(m.result.per_second for m in measures if m.what == "place without CSR")
        time.sleep(idle_pause_seconds)
        names = [f"keygen-paced-{i}.shop.example.com" for i in range(requests_without_csr)]
        measure(
            PACED_WITHOUT_CSR,
            "place",
            1,
            [place_fields(n, None) for n in names],
            pace=2.0 / max(capacity, 1.0),
        )
        pending = [cid for cid in _cert_ids(data_dir, status="PENDING")]
        for c in concurrencies:
            ids = [seeded[i % len(seeded)] for i in range(requests)]
            measure("collect COMPLETE", "collect", c, [{"certId": i} for i in ids])
        for c in concurrencies:
            ids = [pending[i % len(pending)] for i in range(requests)]
            measure("collect PENDING", "collect", c, [{"certId": i} for i in ids])
        rss = peak_rss_mb(server.pid)
    finally:
        server.stop()
    without = [m for m in measures if m.what == "place without CSR"]
    return {
        "key_type": key_type,
        "seed_orders": len(seeded),
        "rows": [m.row() for m in measures],
        "keygen_capacity_per_s": round(max(m.result.per_second for m in without), 1),
        "server_peak_rss_mb": round(rss, 1),
    }


def _cert_ids(data_dir: Path, status: str = "COMPLETE") -> list[str]:
    import sqlite3

    with sqlite3.connect(data_dir / "certbroker.db") as db:
        rows = db.execute("SELECT cert_id FROM orders WHERE status = ?", (status,)).fetchall()
    return [str(row[0]) for row in rows]
