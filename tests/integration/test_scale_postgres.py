"""Scale-out on a real PostgreSQL: two API servers (one of them `serve --workers 2`), three
`certbroker worker` processes killed with SIGKILL while they work and restarted, 500 orders from
concurrent clients. Afterwards nothing is lost and nothing was done twice: every order is
COMPLETE with exactly one certificate, the ledger holds one charge per order and no lease is left.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from certbroker.orders.dcv import dcv_block
from certbroker.pki.csr import build_csr
from certbroker.pki.keys import generate_private_key
from certbroker.store.db import Database
from tests.helpers.challtestsrv import ChallTestSrv, free_port
from tests.helpers.dcv_http_server import DcvHttpServer
from tests.helpers.postgres import PostgresServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
]

CLI = str(Path(sys.executable).parent / "certbroker")
ORDERS = 500
CLIENTS = 16
WORKERS = 3
# Every tenth order names three domains: their checks finish concurrently on different workers.
MULTI_EVERY = 10
# A worker is killed each time this many more orders are complete (so kills happen mid-run).
KILL_EVERY_COMPLETED = 60
DEADLINE_SECONDS = 300
# A killed worker's claims wait this long for a new owner; it must exceed one DCV check.
LEASE_SECONDS = 12
DCV_TIMEOUT_SECONDS = 8


@dataclass
class Process:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    metrics_url: str = ""
    _log: IO[bytes] | None = None

    def start(self) -> Process:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [CLI, *self.args], env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self, timeout: float = 30) -> int | None:
        code = None
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                code = self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        elif self.popen is not None:
            code = self.popen.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Cluster:
    url: str
    env: dict[str, str]
    tmp: Path
    site: DcvHttpServer
    db: Database
    servers: dict[str, str] = field(default_factory=dict)  # name -> base URL
    token: str = ""
    processes: list[Process] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)
    kills: int = 0

    def process(self, name: str, *args: str, port: int | None = None) -> Process:
        env = dict(self.env)
        if port is not None:
            env["CERTBROKER_PORT"] = str(port)
        proc = Process(name, list(args), env, self.tmp / f"{name}.log")
        self.processes.append(proc)
        return proc

    def start_worker(self, index: int) -> Process:
        port = free_port()
        proc = self.process(f"worker-{index}-{self.kills}", "worker", "--metrics-port", str(port))
        proc.metrics_url = f"http://127.0.0.1:{port}/metrics"
        return proc.start()

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with self.db.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(query))]

    def diagnostics(self) -> str:
        statuses = self.sql("SELECT status, count(*) FROM orders GROUP BY status")
        unverified = self.sql(
            "SELECT name, attempts, last_result, lease_owner FROM order_names "
            "WHERE verified_at IS NULL LIMIT 5"
        )
        parts = [f"statuses: {statuses}", f"unverified names: {unverified}"]
        parts += [f"--- {p.name}\n{p.tail()}" for p in self.processes[-6:]]
        return "\n".join(parts)


def wait_ready(base_url: str, proc: Process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.popen is not None and proc.popen.poll() is None, proc.tail()
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{proc.name} not ready:\n{proc.tail()}")


def first_token(proc: Process, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"^(cb_\S+)\s*$", proc.log_path.read_text(errors="replace"), re.M)
        if match:
            return match.group(1)
        time.sleep(0.1)
    raise AssertionError(f"no first token printed:\n{proc.tail()}")


@pytest.fixture
def cluster(postgres: PostgresServer, tmp_path: Path) -> Iterator[Cluster]:
    name, url = postgres.fresh_database()
    db = Database(url)
    with ChallTestSrv() as dns, DcvHttpServer() as site:
        # Three workers fetch up to 150 files at once; socketserver's backlog of 5 would drop
        # the SYNs of the rest (the kernel retries after 1 s, 3 s: past the check's timeout).
        site._httpd.socket.listen(1024)
        env = {
            **os.environ,
            "CERTBROKER_DATA_DIR": str(tmp_path / "data"),  # shared: CA dir and master key
            "CERTBROKER_DATABASE_URL": url,
            "CERTBROKER_WORKER_IN_PROCESS": "false",
            "CERTBROKER_WORKER_POLL_SECONDS": "0.2",
            "CERTBROKER_WORKER_LEASE_SECONDS": str(LEASE_SECONDS),
            "CERTBROKER_DCV_HTTP_PORT": str(site.port),
            "CERTBROKER_DCV_RESOLVER": dns.resolver,
            "CERTBROKER_DCV_ALLOW_NETWORKS": "127.0.0.0/8",
            "CERTBROKER_DCV_RETRY_SECONDS": "1",
            "CERTBROKER_DCV_TIMEOUT_SECONDS": str(DCV_TIMEOUT_SECONDS),
            "CERTBROKER_RATE_LIMIT_PER_TOKEN": "off",
            "CERTBROKER_RATE_LIMIT_PER_ADDRESS": "off",
            "CERTBROKER_LOG_LEVEL": "WARNING",
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        cl = Cluster(url=url, env=env, tmp=tmp_path, site=site, db=db)
        try:
            # The first server migrates, creates the CA, the master key and the first account;
            # the other processes start on what it made (docs/DEPLOYMENT.md).
            port_a, port_b = free_port(), free_port()
            server_a = cl.process("serve-a", "serve", "--workers", "2", port=port_a).start()
            cl.token = first_token(server_a)
            cl.servers["a"] = f"http://127.0.0.1:{port_a}"
            wait_ready(cl.servers["a"], server_a)
            server_b = cl.process("serve-b", "serve", port=port_b).start()
            cl.servers["b"] = f"http://127.0.0.1:{port_b}"
            wait_ready(cl.servers["b"], server_b)
            topup = subprocess.run(
                [CLI, "account", "topup", "default", "20000"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert topup.returncode == 0, topup.stdout + topup.stderr
            cl.workers = [cl.start_worker(i) for i in range(WORKERS)]
            yield cl
        finally:
            for proc in reversed(cl.processes):
                proc.stop()
            db.dispose()
            postgres.drop_database(name)


def order_request(index: int) -> tuple[str, dict[str, Any]]:
    """Product and params of order `index` (its own key and CSR, made by the client)."""
    base = f"o{index}.scale.example.com"
    names = [base, f"www.{base}", f"api.{base}"] if index % MULTI_EVERY == 0 else [base]
    csr = build_csr(generate_private_key("ec256"), names).pem
    product = "sectigo-multi-domain" if len(names) > 1 else "comodo-ssl"
    return product, {
        "server": "nginx",
        "csr": csr,
        "domainInfo": [{"domainName": n, "dcvMethod": "HTTP_CSR_HASH"} for n in names],
    }


def place(
    cl: Cluster, client: httpx.Client, index: int, request: tuple[str, dict[str, Any]]
) -> tuple[str, str]:
    """Place order `index` on server a or b, then publish its file; (server, certId)."""
    server = "a" if index % 2 else "b"
    product, params = request
    # Published before the order exists, as a reseller automating DCV would: the values follow
    # from the CSR (SPEC Appendix C), and the answer must announce the same ones.
    expected = dcv_block(params["csr"], None, "sectigo.com")
    cl.site.serve_file(expected.file_name, expected.file_content)
    body = {
        "api_token": cl.token,
        "productCode": product,
        "years": "1",
        "refId": f"scale-{index}",  # a retry after a lost answer cannot place twice
        "params": json.dumps(params),
    }
    for attempt in range(3):
        try:
            response = client.post(f"{cl.servers[server]}/ssl/place", data=body, timeout=60)
            break
        except httpx.TransportError:
            if attempt == 2:
                raise
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["code"] == 1, answer
    announced = (answer["data"]["DCVfileName"], answer["data"]["DCVfileContent"])
    assert announced == (expected.file_name, expected.file_content)
    return server, str(answer["data"]["certId"])


def completed(cl: Cluster) -> int:
    return int(cl.sql("SELECT count(*) FROM orders WHERE status = 'COMPLETE'")[0][0])


def run_with_kills(cl: Cluster, rng: random.Random, placing_done: threading.Event) -> None:
    """Until every order is complete: each time KILL_EVERY_COMPLETED more orders are complete,
    SIGKILL a random worker at a random moment and start a new one in its place."""
    next_kill = KILL_EVERY_COMPLETED
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        done = completed(cl)
        # Thresholds first: progress may jump past several (and to the end) between two polls.
        while done >= next_kill and next_kill < ORDERS:
            time.sleep(rng.uniform(0, 0.3))
            victim = rng.randrange(WORKERS)
            cl.workers[victim].kill()
            cl.kills += 1
            cl.workers[victim] = cl.start_worker(victim)
            next_kill += KILL_EVERY_COMPLETED
        if done >= ORDERS and placing_done.is_set():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{done}/{ORDERS} complete in time\n{cl.diagnostics()}")
        time.sleep(0.2)


def worker_metrics(worker: Process, timeout: float = 60) -> str:
    """The worker's metrics page (a worker restarted just now may still be starting)."""
    deadline = time.monotonic() + timeout
    while True:
        assert worker.popen is not None and worker.popen.poll() is None, worker.tail()
        try:
            return httpx.get(worker.metrics_url, timeout=10).text
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def scrape(base_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_500_orders_over_two_servers_and_killed_workers(cluster: Cluster) -> None:
    cl = cluster
    seed = random.randrange(2**32)
    print(f"kill schedule seed: {seed}")
    rng = random.Random(seed)
    placing_done = threading.Event()
    placed: list[tuple[str, str]] = []

    requests = [order_request(i) for i in range(ORDERS)]

    started = time.monotonic()

    def clients() -> None:
        with httpx.Client() as client, ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            placed.extend(pool.map(lambda i: place(cl, client, i, requests[i]), range(ORDERS)))
        print(f"placed {ORDERS} orders in {time.monotonic() - started:.1f} s")
        placing_done.set()

    placer = threading.Thread(target=clients)
    placer.start()
    try:
        run_with_kills(cl, rng, placing_done)
    finally:
        placer.join(timeout=120)
    print(f"all complete after {time.monotonic() - started:.1f} s, {cl.kills} workers killed")
    assert len(placed) == ORDERS
    assert cl.kills == (ORDERS - 1) // KILL_EVERY_COMPLETED

    # Each worker serves its own counters; then it stops cleanly on SIGTERM (exit 0).
    takeovers = 0.0
    for worker in cl.workers:
        text = worker_metrics(worker)
        families = {family.name: family for family in text_string_to_metric_families(text)}
        assert {"certbroker_dcv_checks", "certbroker_issuance_seconds"} <= set(families)
        takeovers += sum(s.value for s in families["certbroker_lease_takeovers"].samples)
        assert worker.stop() == 0, worker.tail()
    print(f"lease take-overs counted by the last workers: {takeovers:g}")

    # Every order COMPLETE, every name verified, nothing leased.
    assert cl.sql("SELECT status, count(*) FROM orders GROUP BY status") == [("COMPLETE", ORDERS)]
    assert cl.sql("SELECT count(*) FROM order_names WHERE verified_at IS NULL") == [(0,)]
    for table in ("orders", "order_names"):
        leases = cl.sql(
            "SELECT count(*) FROM " + table + " "  # noqa: S608 - a constant table name
            "WHERE lease_owner IS NOT NULL OR lease_until IS NOT NULL"
        )
        assert leases == [(0,)], table

    # Exactly one certificate per order, no signature left unaccounted for.
    assert cl.sql("SELECT state, count(*) FROM certificates GROUP BY state") == [("issued", ORDERS)]
    per_order = cl.sql("SELECT order_id, count(*) FROM certificates GROUP BY order_id")
    assert len(per_order) == ORDERS and {count for _id, count in per_order} == {1}
    for serial_hex, pem in cl.sql("SELECT serial_hex, pem FROM certificates"):
        leaf = x509.load_pem_x509_certificate(pem.encode())
        assert leaf.serial_number == int(serial_hex, 16)

    # Money: one charge per order, for its price; no refund.
    assert cl.sql("SELECT kind, count(*) FROM ledger GROUP BY kind ORDER BY kind") == [
        ("charge", ORDERS),
        ("topup", 1),
    ]
    charged, priced = cl.sql(
        "SELECT (SELECT -sum(amount_cents) FROM ledger WHERE kind = 'charge'), "
        "(SELECT sum(price_cents) FROM orders)"
    )[0]
    assert charged == priced > 0
    assert cl.sql(
        "SELECT count(*) FROM ledger l JOIN orders o ON o.id = l.order_id "
        "WHERE l.kind = 'charge' AND l.op_key = 'charge:' || o.cert_id "
        "AND l.amount_cents = -o.price_cents"
    ) == [(ORDERS,)]

    # Over the wire, from the server that did not take the order.
    with httpx.Client() as client:
        for server, cert_id in random.Random(seed).sample(placed, 20):
            other = cl.servers["b" if server == "a" else "a"]
            answer = client.post(
                f"{other}/ssl/collect", data={"api_token": cl.token, "certId": cert_id}
            ).json()
            assert answer["status"] == "COMPLETE", answer
            assert "BEGIN CERTIFICATE" in answer["data"]["certificate"]

    # Metrics: server a sums its two processes (multiprocess mode); gauges come from the database.
    by_server = Counter(server for server, _cert_id in placed)
    for server, base_url in cl.servers.items():
        samples = scrape(base_url)
        key = (
            "certbroker_http_requests_total",
            frozenset({"endpoint": "/ssl/place", "code": "200"}.items()),
        )
        assert samples.get(key) == by_server[server], server
        assert samples[("certbroker_orders", frozenset({"status": "COMPLETE"}.items()))] == ORDERS
        for queue in ("dcv_checks", "issuance"):
            assert samples[("certbroker_queue_depth", frozenset({"queue": queue}.items()))] == 0
