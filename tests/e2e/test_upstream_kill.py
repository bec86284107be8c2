"""A real `certbroker serve` process SIGKILLed between answering the upstream's challenges and
finalizing (RFC 8555 7.5.1 then 7.4), against Debian's Pebble and a file SQLite database;
started again, it completes every order once, charged once, with one certificate at Pebble."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from certbroker.orders.upstream_orders import TEST_HOLD_BEFORE_FINALIZE
from tests.helpers.challtestsrv import ChallTestSrv, free_port
from tests.helpers.dcv_http_server import DcvHttpServer, Route
from tests.helpers.pebble import EAB_KID, Pebble
from tests.integration.test_upstream_acme import PRODUCT, _catalog_file

pytestmark = pytest.mark.e2e
CLI = str(Path(sys.executable).parent / "certbroker")
ORDERS = 3
DEADLINE = 120.0  # generous: a slow CI machine only makes the test wait longer


def _start(env: dict[str, str], log: IO[bytes]) -> tuple[subprocess.Popen[bytes], str]:
    """`certbroker serve` (API and in-process worker); returns it and the first account's token
    (printed on the first start only)."""
    server = subprocess.Popen([CLI, "serve"], env=env, stdout=subprocess.PIPE, stderr=log)
    assert server.stdout is not None
    token = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = server.stdout.readline().decode()
        match = re.fullmatch(r"(cb_\S+)\s*", line)
        if match:
            token = match.group(1)
        if "listening on" in line or not line:
            break
    return server, token


def _call(url: str, token: str, endpoint: str, **fields: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        try:
            response = httpx.post(
                f"{url}/ssl/{endpoint}", data={"api_token": token, **fields}, timeout=30
            )
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _sql(db: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(query).fetchall()


def _wait_for(what: str, check: Any, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


def test_sigkill_between_answer_and_finalize_completes_each_order_once(
    tmp_path: Path, dns_server: ChallTestSrv, site: DcvHttpServer
) -> None:
    with Pebble(tmp_path / "pebble", http_port=site.port, dns_server=dns_server.resolver) as pebble:
        config = tmp_path / "certbroker.toml"
        config.write_text(
            f"catalog = {json.dumps(str(_catalog_file(tmp_path)))}\n"
            "[upstreams.pebble]\n"
            f"directory = {json.dumps(pebble.directory)}\n"
            f"eab_kid = {json.dumps(EAB_KID)}\n"
            f"ca_bundle = {json.dumps(str(pebble.ca_bundle))}\n"
            'caa_identities = ["pebble.letsencrypt.org"]\n'
            'capabilities = { wildcard = "dns-01" }\n'
        )
        port = free_port()
        data_dir = tmp_path / "data"
        db = data_dir / "certbroker.db"
        env = {
            **os.environ,
            "CERTBROKER_CONFIG": str(config),
            "CERTBROKER_UPSTREAMS__PEBBLE__EAB_HMAC_KEY": pebble.eab_hmac_key,
            "CERTBROKER_DATA_DIR": str(data_dir),
            "CERTBROKER_PORT": str(port),
            "CERTBROKER_DCV_HTTP_PORT": str(site.port),
            "CERTBROKER_DCV_RESOLVER": dns_server.resolver,
            "CERTBROKER_DCV_ALLOW_NETWORKS": "127.0.0.0/8",
            "CERTBROKER_DCV_RETRY_SECONDS": "1",
            "CERTBROKER_WORKER_POLL_SECONDS": "0.2",
            # The dead process's leases run out soon, so the new one resumes its steps.
            "CERTBROKER_WORKER_LEASE_SECONDS": "5",
        }
        url = f"http://127.0.0.1:{port}"
        log_path = tmp_path / "server.log"
        with open(log_path, "wb") as log:
            # First life: a ready order is held before finalize by the test hook (the window
            # is otherwise a few milliseconds wide), until the SIGKILL.
            server, token = _start({**env, TEST_HOLD_BEFORE_FINALIZE: "1"}, log)
            try:
                assert token, "serve did not print the first account's token"
                topup = subprocess.run(
                    [CLI, "account", "topup", "default", "500"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                assert "500.00" in topup.stdout
                cert_ids = []
                for i in range(ORDERS):
                    params = {
                        "server": "nginx",
                        "domainInfo": [
                            {"domainName": f"shop{i}.example.com", "dcvMethod": "HTTP_CSR_HASH"}
                        ],
                    }
                    placed = _call(
                        url,
                        token,
                        "place",
                        productCode=PRODUCT,
                        years="1",
                        params=json.dumps(params),
                    )
                    assert placed["code"] == 1, placed
                    cert_ids.append(placed["data"]["certId"])
                # newOrder runs in the worker: publish each token once collect shows it.
                for cert_id in cert_ids:
                    shown: dict[str, Any] = {}

                    def has_token(cert_id: str = cert_id, shown: dict[str, Any] = shown) -> bool:
                        shown.update(_call(url, token, "collect", certId=cert_id)["data"])
                        return bool(shown.get("DCVfileName"))

                    _wait_for(f"{cert_id} shows its token", has_token)
                    site.routes[f"/.well-known/acme-challenge/{shown['DCVfileName']}"] = Route(
                        body=shown["DCVfileContent"].encode()
                    )

                def in_the_window() -> bool:
                    # Every authz answered, every upstream order ready (held), none finalized.
                    rows = _sql(
                        db,
                        "SELECT o.status, o.finalize_sent_at, a.answered_at "
                        "FROM upstream_orders o JOIN upstream_authzs a "
                        "ON a.upstream_order_id = o.id",
                    )
                    return (
                        len(rows) == ORDERS
                        and all(answered is not None for _s, _f, answered in rows)
                        and all(finalized is None for _s, finalized, _a in rows)
                        and all(status == "ready" for status, _f, _a in rows)
                    )

                _wait_for("every order ready and answered, none finalized", in_the_window)
            finally:
                server.send_signal(signal.SIGKILL)
                server.wait(timeout=20)
            assert "holding a ready order before finalize" in log_path.read_text(errors="replace")
            assert "Issued certificate serial" not in pebble.log()
            assert _sql(
                db, "SELECT count(*) FROM upstream_orders WHERE finalize_sent_at IS NOT NULL"
            ) == [(0,)]

            # Second life, without the pause: it takes over the dead process's steps.
            server, _again = _start(env, log)
            try:
                for cert_id in cert_ids:

                    def complete(cert_id: str = cert_id) -> bool:
                        status = str(_call(url, token, "collect", certId=cert_id)["status"])
                        assert status in ("PENDING", "COMPLETE"), status
                        return status == "COMPLETE"

                    _wait_for(f"{cert_id} COMPLETE", complete)
            finally:
                server.terminate()
                server.wait(timeout=20)

        # Each order: COMPLETE, one certificate, one issued event, one charge.
        per_order = _sql(
            db,
            "SELECT o.status, "
            "(SELECT count(*) FROM certificates c WHERE c.order_id = o.id), "
            "(SELECT count(*) FROM events e WHERE e.order_id = o.id "
            " AND e.type = 'certificate.issued'), "
            "(SELECT count(*) FROM ledger l WHERE l.order_id = o.id AND l.kind = 'charge') "
            "FROM orders o ORDER BY o.id",
        )
        assert per_order == [("COMPLETE", 1, 1, 1)] * ORDERS
        assert pebble.log().count("Issued certificate serial") == ORDERS
        # Every upstream order was finalized once (no new attempt was needed).
        assert (
            _sql(db, "SELECT status, attempt FROM upstream_orders") == [("downloaded", 1)] * ORDERS
        )
