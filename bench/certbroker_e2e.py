"""Section 1: orders to certificates through a real `certbroker serve` on loopback.

Each client lane, per order: publish the DCV file on the loopback web site (its name and content
follow from the CSR, SPEC Appendix C, so a reseller's panel can publish before ordering),
`place` with the prepared CSR, check that the answer names the same file, then poll `collect`
until COMPLETE and the certificate is in the answer. Latency runs from before the publish to the
answer that carries the certificate.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bench.common import (
    CertbrokerServer,
    ChallTestSrv,
    CpuMeter,
    DcvSite,
    peak_rss_mb,
)
from bench.load import ApiClient, LoadResult, PollSchedule, expect_success, run_load
from bench.profiling import PySpy
from certbroker.pki import dcv_values

PRODUCT = "comodo-ssl"  # DV, one name, 12.00 USD for a year
PRODUCT_USD = 12


@dataclass(frozen=True)
class OrderItem:
    name: str
    csr: str
    file_path: str
    file_content: str


def order_items(names: list[str], csrs: list[str]) -> list[OrderItem]:
    items = []
    for name, csr in zip(names, csrs, strict=True):
        der = x509.load_pem_x509_csr(csr.encode("ascii")).public_bytes(Encoding.DER)
        hashes = dcv_values.csr_hashes(der)
        items.append(
            OrderItem(
                name=name,
                csr=csr,
                file_path="/.well-known/pki-validation/" + dcv_values.file_name(hashes),
                file_content=dcv_values.file_content(hashes, None),
            )
        )
    return items


class SiteClient:
    """Publishes DCV files on bench.dcv_site over one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._connection: http.client.HTTPConnection | None = None

    def publish(self, path: str, content: str) -> None:
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self._connection.request("PUT", path, content.encode("ascii"))
                response = self._connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                self._connection.close()
                self._connection = None
                if attempt == 2:
                    raise
                continue
            if response.status != 204:
                raise RuntimeError(f"the DCV site answered {response.status} to PUT {path}")
            return


class OrderJob:
    """One client lane: orders one after another, polling like a reseller's panel would."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.api = ApiClient(config["port"], config["token"])
        self.site = SiteClient(config["site_port"])
        self.polls = PollSchedule(float(config["poll_seconds"]), float(config["poll_max_seconds"]))
        self.timeout = float(config.get("order_timeout", 120.0))

    def run(self, item: OrderItem) -> None:
        self.site.publish(item.file_path, item.file_content)
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
        if not item.file_path.endswith("/" + placed["DCVfileName"]):
            raise RuntimeError(f"place answered DCV file {placed['DCVfileName']}")
        cert_id = placed["certId"]
        deadline = time.monotonic() + self.timeout
        for wait in self.polls.waits():
            time.sleep(wait)
            answer = self.api.call("collect", certId=cert_id)
            status = answer.get("status")
            if status == "COMPLETE":
                if "BEGIN CERTIFICATE" not in answer["data"].get("certificate", ""):
                    raise RuntimeError(f"{cert_id} is COMPLETE without a certificate")
                return
            if status != "PENDING":
                raise RuntimeError(f"{cert_id} became {status}: {json.dumps(answer)[:300]}")
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"{cert_id} still PENDING after {self.timeout} s")


def server_env(site: DcvSite, chall: ChallTestSrv, worker_poll_seconds: float) -> dict[str, str]:
    return {
        "CERTBROKER_DCV_HTTP_PORT": str(site.port),
        "CERTBROKER_DCV_RESOLVER": chall.resolver,
        "CERTBROKER_DCV_ALLOW_NETWORKS": "127.0.0.0/8",
        "CERTBROKER_DCV_RETRY_SECONDS": "1",
        "CERTBROKER_WORKER_POLL_SECONDS": str(worker_poll_seconds),
    }


def run(
    workdir: Path,
    *,
    chall: ChallTestSrv,
    site: DcvSite,
    items: list[OrderItem],
    concurrency: int,
    processes: int,
    poll_seconds: float,
    poll_max_seconds: float,
    worker_poll_seconds: float,
    proposed: bool = False,
    profile_path: Path | None = None,
) -> tuple[LoadResult, float]:
    """One fresh server, one batch of orders; returns the load result and the peak RSS."""
    env = server_env(site, chall, worker_poll_seconds)
    server = CertbrokerServer(workdir, env, proposed=proposed).start()
    try:
        server.topup(PRODUCT_USD * len(items) + 100)
        meter = CpuMeter(
            {"server": server.pid, "dcv_site": site.process.pid, "dns": chall.process.pid}
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
                OrderJob, config, items, concurrency=concurrency, processes=processes, meter=meter
            )
        return result, peak_rss_mb(server.pid)
    finally:
        server.stop()
