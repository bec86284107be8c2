"""Section `upstream`: orders through certbroker with Pebble as its upstream ACME CA, against the
same Pebble driven directly by an ACME client, in one run.

Both systems get a fresh Pebble with the same configuration: External Account Binding
required, PEBBLE_VA_NOSLEEP=1, PEBBLE_WFE_NONCEREJECT=0, PEBBLE_AUTHZREUSE=0, http-01 fetched
from bench/dcv_site.py (names resolve to 127.0.0.1 through pebble-challtestsrv). Both reach
Pebble through bench/acme_proxy.py, which counts the ACME calls.

- certbroker: `certbroker serve` (worker in-process) with `[upstreams.pebble]` (EAB, the
  proxy's directory, Pebble's TLS certificate as `ca_bundle`) and a catalogue product
  `acme-dv` with `issuer: acme`. Each client lane: `place` with the prepared CSR, poll `collect`
  until it shows the http-01 token, put the key authorization on the DCV site at once, poll
  `collect` until COMPLETE with the certificate. Latency runs from `place` to that answer.
- direct: bench/pebble_e2e.py's client (an ES256 account per lane, registered with EAB) putting
  its key authorization on the same DCV site.

Polls of both clients follow the same schedule (bench.load.PollSchedule).
"""

from __future__ import annotations

import contextlib
import copy
import json
import secrets
import time
from base64 import urlsafe_b64encode
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.acme_proxy import AcmeProxy
from bench.certbroker_e2e import SiteClient, server_env
from bench.common import (
    REPO,
    CertbrokerServer,
    ChallTestSrv,
    CpuMeter,
    DcvSite,
    PebbleServer,
    latency_ms,
    peak_rss_mb,
    prepare_csrs,
    ratio,
)
from bench.load import ApiClient, LoadResult, PollSchedule, expect_success, run_load
from bench.pebble_e2e import AcmeItem, AcmeOrderJob
from bench.profiling import PySpy

PRODUCT = "acme-dv"
PRODUCT_USD = 12
UPSTREAM = "pebble"
EAB_KID = "bench-kid"


@dataclass(frozen=True)
class UpstreamItem:
    name: str
    csr: str


class UpstreamOrderJob:
    """One reseller lane ordering a product that an upstream ACME CA issues (http-01)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.api = ApiClient(config["port"], config["token"])
        self.site = SiteClient(config["site_port"])
        self.polls = PollSchedule(float(config["poll_seconds"]), float(config["poll_max_seconds"]))
        self.timeout = float(config.get("order_timeout", 120.0))

    def run(self, item: UpstreamItem) -> None:
        params = json.dumps(
            {
                "server": "nginx",
                "csr": item.csr,
                "domainInfo": [{"domainName": item.name, "dcvMethod": "HTTP_CSR_HASH"}],
            }
        )
        placed = expect_success(
            "place", self.api.call("place", productCode=PRODUCT, years="1", params=params)
        )
        cert_id = placed["certId"]
        deadline = time.monotonic() + self.timeout
        published = False
        waits = self.polls.waits()
        while time.monotonic() < deadline:
            time.sleep(next(waits))
            answer = self.api.call("collect", certId=cert_id)
            status = answer.get("status")
            data = answer.get("data") or {}
            if status == "COMPLETE":
                if "BEGIN CERTIFICATE" not in data.get("certificate", ""):
                    raise RuntimeError(f"{cert_id} is COMPLETE without a certificate")
                return
            if status != "PENDING":
                raise RuntimeError(f"{cert_id} became {status}: {json.dumps(answer)[:300]}")
            token = data.get("DCVfileName") or ""
            if token and not published:
                # What a reseller's panel does as soon as collect shows the token.
                self.site.publish(f"/.well-known/acme-challenge/{token}", data["DCVfileContent"])
                published = True
                waits = self.polls.waits()
        raise RuntimeError(f"{cert_id} still PENDING after {self.timeout} s")


def catalog_file(path: Path) -> Path:
    """The shipped `comodo-ssl` (DV, one name, 12 USD) as `acme-dv`, issued by the upstream."""
    raw = json.loads((REPO / "src/certbroker/catalog/products.json").read_text())
    product = copy.deepcopy(next(p for p in raw["products"] if p["code"] == "comodo-ssl"))
    product.update(
        code=PRODUCT,
        productName="Pebble DV (bench)",
        dcvMethods=["HTTP_CSR_HASH", "HTTPS_CSR_HASH"],
        issuer={"type": "acme", "upstream": UPSTREAM},
    )
    path.write_text(json.dumps({"currency": "USD", "products": [product]}))
    return path


def certbroker_config(
    workdir: Path, directory: str, ca_bundle: Path, hmac_key: str
) -> dict[str, str]:
    """The TOML file with `[upstreams.pebble]` and the catalogue, as environment for serve."""
    key_file = workdir / "pebble.eab"
    key_file.write_text(hmac_key)
    toml = workdir / "certbroker.toml"
    toml.write_text(
        f"[upstreams.{UPSTREAM}]\n"
        f'directory = "{directory}"\n'
        f'eab_kid = "{EAB_KID}"\n'
        f'eab_hmac_key_file = "{key_file}"\n'
        f'ca_bundle = "{ca_bundle}"\n'
        'caa_identities = ["pebble.letsencrypt.org"]\n'
    )
    return {
        "CERTBROKER_CONFIG": str(toml),
        "CERTBROKER_CATALOG": str(catalog_file(workdir / "catalog.json")),
    }


def _eab_key() -> str:
    return urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")


def _row(
    system: str,
    result: LoadResult,
    cpu_pids: tuple[str, ...],
    calls: dict[str, int],
    rss: dict[str, float],
) -> dict[str, Any]:
    ok = max(1, result.ok)
    cpu = result.server_cpu_seconds
    measured = sum(cpu[name] for name in cpu_pids)
    return {
        "system": system,
        "orders": result.ok + len(result.errors),
        "errors": len(result.errors),
        "error_samples": result.errors[:3],
        "certs_per_s": round(result.per_second, 2),
        **latency_ms(result.latencies),
        # certbroker's own processes (serve with its worker); 0 for the direct client, whose
        # CPU is client_cpu_ms_per_cert.
        "certbroker_cpu_ms_per_cert": round(1000 * measured / ok, 3),
        "pebble_cpu_ms_per_cert": round(1000 * cpu["pebble"] / ok, 3),
        "client_cpu_ms_per_cert": round(1000 * result.client_cpu_seconds / ok, 3),
        "helper_cpu_ms_per_cert": {
            k: round(1000 * v / ok, 3)
            for k, v in cpu.items()
            if k not in cpu_pids and k != "pebble"
        },
        "upstream_calls_per_cert": round(sum(calls.values()) / ok, 2),
        "upstream_calls": dict(sorted(calls.items())),
        "peak_rss_mb": {k: round(v, 1) for k, v in rss.items()},
        "client_processes": result.processes,
        "wall_s": round(result.wall_seconds, 2),
    }


def _start_pebble(workdir: Path, chall: ChallTestSrv, site: DcvSite, hmac_key: str) -> PebbleServer:
    return PebbleServer(
        workdir / "pebble", chall, http_port=site.port, eab=(EAB_KID, hmac_key)
    ).start()


def run_certbroker(
    workdir: Path,
    *,
    chall: ChallTestSrv,
    site: DcvSite,
    items: list[UpstreamItem],
    concurrency: int,
    processes: int,
    poll_seconds: float,
    poll_max_seconds: float,
    worker_poll_seconds: float,
    profile_path: Path | None = None,
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    hmac_key = _eab_key()
    pebble = _start_pebble(workdir, chall, site, hmac_key)
    try:
        assert pebble.tls_cert is not None and pebble.tls_key is not None
        with AcmeProxy(pebble.port, str(pebble.tls_cert), str(pebble.tls_key)) as proxy:
            env = server_env(site, chall, worker_poll_seconds)
            env.update(certbroker_config(workdir, proxy.directory_url, pebble.tls_cert, hmac_key))
            server = CertbrokerServer(workdir / "data", env).start()
            try:
                server.topup(PRODUCT_USD * len(items) + 100)
                proxy.counts()  # the start-up account check is not part of any order
                meter = CpuMeter(
                    {
                        "certbroker": server.pid,
                        "pebble": pebble.pid,
                        "proxy": proxy.process.pid,
                        "dcv_site": site.process.pid,
                        "dns": chall.process.pid,
                    }
                )
                config = {
                    "port": server.port,
                    "token": server.token,
                    "site_port": site.port,
                    "poll_seconds": poll_seconds,
                    "poll_max_seconds": poll_max_seconds,
                }
                with contextlib.ExitStack() as stack:
                    if profile_path is not None:
                        stack.enter_context(PySpy(server.pid, profile_path))
                    result = run_load(
                        UpstreamOrderJob,
                        config,
                        items,
                        concurrency=concurrency,
                        processes=processes,
                        meter=meter,
                    )
                calls = proxy.counts()
                rss = {"certbroker": peak_rss_mb(server.pid), "pebble": peak_rss_mb(pebble.pid)}
            finally:
                server.stop()
    finally:
        pebble.stop()
    return _row("certbroker + Pebble", result, ("certbroker",), calls, rss)


def run_direct(
    workdir: Path,
    *,
    chall: ChallTestSrv,
    site: DcvSite,
    items: list[AcmeItem],
    concurrency: int,
    processes: int,
    poll_seconds: float,
    poll_max_seconds: float,
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    hmac_key = _eab_key()
    pebble = _start_pebble(workdir, chall, site, hmac_key)
    try:
        assert pebble.tls_cert is not None and pebble.tls_key is not None
        with AcmeProxy(pebble.port, str(pebble.tls_cert), str(pebble.tls_key)) as proxy:
            meter = CpuMeter(
                {
                    "pebble": pebble.pid,
                    "proxy": proxy.process.pid,
                    "dcv_site": site.process.pid,
                    "dns": chall.process.pid,
                }
            )
            config = {
                "directory": proxy.directory_url,
                "management_port": chall.management_port,
                "site_port": site.port,
                "eab_kid": EAB_KID,
                "eab_hmac_key": hmac_key,
                "poll_seconds": poll_seconds,
                "poll_max_seconds": poll_max_seconds,
            }
            proxy.counts()
            result = run_load(
                AcmeOrderJob,
                config,
                items,
                concurrency=concurrency,
                processes=processes,
                meter=meter,
            )
            calls = proxy.counts()
            rss = {"pebble": peak_rss_mb(pebble.pid)}
    finally:
        pebble.stop()
    return _row(
        "ACME client -> Pebble",
        result,
        (),
        _without_setup(calls, min(concurrency, len(items))),
        rss,
    )


def _without_setup(calls: dict[str, int], lanes: int) -> dict[str, int]:
    """The direct client's lane set-up (directory, nonce, newAccount per lane) happens inside
    run_load before the start signal; certbroker's account exists before its run. Leave the
    set-up calls out so both count the calls of the orders alone."""
    out = dict(calls)
    for kind in ("GET /dir", "HEAD /nonce-plz", "POST /sign-me-up"):
        if kind in out:
            out[kind] -= lanes
            if out[kind] <= 0:
                del out[kind]
    return out


def items(n: int, key_type: str, prefix: str) -> list[UpstreamItem]:
    names = [f"{prefix}-{i}.shop.example.com" for i in range(n)]
    return [
        UpstreamItem(nm, csr) for nm, csr in zip(names, prepare_csrs(key_type, names), strict=True)
    ]


def run(
    workdir: Path,
    *,
    chall: ChallTestSrv,
    site: DcvSite,
    n: int,
    concurrency: int,
    key_type: str,
    processes: int,
    poll_seconds: float,
    poll_max_seconds: float,
    worker_poll_seconds: float,
) -> dict[str, Any]:
    names = [f"up-{i}.shop.example.com" for i in range(n)]
    csrs = prepare_csrs(key_type, names)
    direct = run_direct(
        workdir / "direct",
        chall=chall,
        site=site,
        items=[AcmeItem(nm, csr) for nm, csr in zip(names, csrs, strict=True)],
        concurrency=concurrency,
        processes=processes,
        poll_seconds=poll_seconds,
        poll_max_seconds=poll_max_seconds,
    )
    # New names for certbroker: PEBBLE_AUTHZREUSE=0 anyway, and each system gets a fresh Pebble.
    via = run_certbroker(
        workdir / "certbroker",
        chall=chall,
        site=site,
        items=items(n, key_type, "up-cb"),
        concurrency=concurrency,
        processes=processes,
        poll_seconds=poll_seconds,
        poll_max_seconds=poll_max_seconds,
        worker_poll_seconds=worker_poll_seconds,
    )
    for row in (direct, via):
        row.update(key_type=key_type, concurrency=concurrency)
    return {
        "rows": [direct, via],
        "overhead": {
            "certs_per_s": ratio(via["certs_per_s"], direct["certs_per_s"]),
            "p50": ratio(via["p50_ms"], direct["p50_ms"]),
            "p99": ratio(via["p99_ms"], direct["p99_ms"]),
            "p50_added_ms": round(via["p50_ms"] - direct["p50_ms"], 2),
            "upstream_calls_per_cert": ratio(
                via["upstream_calls_per_cert"], direct["upstream_calls_per_cert"]
            ),
            "pebble_cpu_per_cert": ratio(
                via["pebble_cpu_ms_per_cert"], direct["pebble_cpu_ms_per_cert"]
            ),
            # certbroker's processes against the ACME client's own CPU: what the reseller
            # platform spends per certificate where a direct subscriber's client would.
            "certbroker_cpu_to_client_cpu": ratio(
                via["certbroker_cpu_ms_per_cert"], direct["client_cpu_ms_per_cert"]
            ),
        },
    }
