"""End to end through HTTP against a live `certbroker serve` process on the embedded default."""

from __future__ import annotations

import base64
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jks
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs12

from certbroker.pki.csr import build_csr
from certbroker.pki.keys import generate_private_key, load_private_key_pem, public_key_matches
from tests.helpers.challtestsrv import ChallTestSrv, free_port
from tests.helpers.dcv_http_server import DcvHttpServer
from tests.helpers.pkilint_check import lint_leaf, openssl_verify

pytestmark = pytest.mark.e2e
CLI = str(Path(sys.executable).parent / "certbroker")


@dataclass
class Live:
    url: str
    token: str
    data_dir: Path
    log_path: Path
    env: dict[str, str]
    site: DcvHttpServer

    def call(self, endpoint: str, **fields: Any) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}/ssl/{endpoint}", data={"api_token": self.token, **fields}, timeout=30
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def wait_complete(self, cert_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.call("collect", certId=cert_id)
            if result["status"] != "PENDING":
                return result
            time.sleep(0.2)
        raise AssertionError(f"{cert_id} still PENDING: {result['data']['dcvList']}")

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.data_dir / "certbroker.db") as db:
            return db.execute(query).fetchall()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("live")
    port = free_port()
    with ChallTestSrv() as dns, DcvHttpServer() as site:
        env = {
            **os.environ,
            "CERTBROKER_DATA_DIR": str(tmp / "data"),
            "CERTBROKER_PORT": str(port),
            "CERTBROKER_DCV_HTTP_PORT": str(site.port),
            "CERTBROKER_DCV_RESOLVER": dns.resolver,
            "CERTBROKER_DCV_ALLOW_NETWORKS": "127.0.0.0/8",
            "CERTBROKER_DCV_RETRY_SECONDS": "1",
            "CERTBROKER_WORKER_POLL_SECONDS": "0.2",
        }
        log_path = tmp / "server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen([CLI, "serve"], env=env, stdout=subprocess.PIPE, stderr=log)
            assert server.stdout is not None
            token = ""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                line = server.stdout.readline().decode()
                match = re.fullmatch(r"(cb_\S+)\s*", line)
                if match:
                    token = match.group(1)
                if "listening on" in line:
                    break
            assert token, "serve did not print the first account's token"
            url = f"http://127.0.0.1:{port}"
            while time.monotonic() < deadline:
                try:
                    httpx.post(f"{url}/ssl/productList", data={"api_token": token})
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            topup = subprocess.run(
                [CLI, "account", "topup", "default", "5000"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            assert "5000.00" in topup.stdout
            try:
                yield Live(url, token, tmp / "data", log_path, env, site)
            finally:
                server.terminate()
                server.wait(timeout=20)


def check_chain(live: Live, data: dict[str, Any]) -> x509.Certificate:
    root = (live.data_dir / "ca" / "root.pem").read_text()
    assert openssl_verify(data["certificate"], data["caCertificate"], root).strip().endswith("OK")
    assert lint_leaf(data["certificate"]) == []
    return x509.load_pem_x509_certificate(data["certificate"].encode())


def test_ca_key_files_are_owner_only(live: Live) -> None:
    keys = sorted((live.data_dir / "ca").glob("*.key"))
    assert len(keys) == 4
    for key in keys:
        assert key.stat().st_mode & 0o777 == 0o600, key
    assert (live.data_dir / "master.key").stat().st_mode & 0o777 == 0o600


def test_order_with_client_csr(live: Live) -> None:
    key = generate_private_key("rsa2048")
    csr = build_csr(key, ["www.shop.example.com"]).pem
    import json

    params = json.dumps(
        {
            "server": "nginx",
            "csr": csr,
            "domainInfo": [{"domainName": "www.shop.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
        }
    )
    placed = live.call("place", productCode="comodo-ssl", years="1", params=params)
    assert placed["code"] == 1, placed
    live.site.serve_file(placed["data"]["DCVfileName"], placed["data"]["DCVfileContent"])
    done = live.wait_complete(placed["data"]["certId"])
    assert done["status"] == "COMPLETE"
    leaf = check_chain(live, done["data"])
    assert public_key_matches(key, leaf.public_key())
    assert "privateKey" not in done["data"]


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def test_order_without_csr_gives_key_pkcs12_and_jks(live: Live, tmp_path: Path) -> None:
    import json

    params = json.dumps(
        {
            "server": "tomcat",
            "domainInfo": [
                {"domainName": "api.example.com", "dcvMethod": "HTTP_CSR_HASH"},
                {"domainName": "app.example.com", "dcvMethod": "HTTP_CSR_HASH"},
            ],
        }
    )
    placed = live.call("place", productCode="sectigo-multi-domain", years="2", params=params)
    assert placed["code"] == 1, placed
    live.site.serve_file(placed["data"]["DCVfileName"], placed["data"]["DCVfileContent"])
    data = live.wait_complete(placed["data"]["certId"])["data"]
    leaf = check_chain(live, data)
    key = load_private_key_pem(data["privateKey"])
    assert public_key_matches(key, leaf.public_key())

    p12 = tmp_path / "bundle.p12"
    p12.write_bytes(base64.b64decode(data["pkcs12"]))
    opened = subprocess.run(
        ["openssl", "pkcs12", "-in", str(p12), "-passin", f"pass:{data['pkcsPass']}", "-nodes"],
        capture_output=True,
        text=True,
    )
    assert opened.returncode == 0, opened.stderr
    assert "PRIVATE KEY" in opened.stdout and "CERTIFICATE" in opened.stdout
    p12_key, p12_cert, _chain = pkcs12.load_key_and_certificates(
        p12.read_bytes(), data["pkcsPass"].encode()
    )
    assert p12_cert is not None and p12_cert == leaf
    assert p12_key is not None and public_key_matches(p12_key, leaf.public_key())  # type: ignore[arg-type]

    store = tmp_path / "bundle.jks"
    store.write_bytes(base64.b64decode(data["jks"]))
    listed = subprocess.run(
        [
            "keytool",
            "-list",
            "-rfc",
            "-keystore",
            str(store),
            "-storetype",
            "JKS",
            "-storepass",
            data["jksPass"],
        ],
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "PrivateKeyEntry" in listed.stdout
    first_pem = listed.stdout[listed.stdout.index("-----BEGIN CERTIFICATE-----") :]
    assert x509.load_pem_x509_certificate(first_pem.encode()) == leaf
    keystore = jks.KeyStore.loads(store.read_bytes(), data["jksPass"])
    entry = next(iter(keystore.private_keys.values()))
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    jks_key = load_der_private_key(entry.pkey_pkcs8, None)
    assert public_key_matches(jks_key, leaf.public_key())  # type: ignore[arg-type]


def test_twenty_simultaneous_places_with_one_ref_id(live: Live) -> None:
    import json

    params = json.dumps(
        {
            "server": "nginx",
            "domainInfo": [{"domainName": "race.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
        }
    )
    balance_before = live.sql("SELECT SUM(amount_cents) FROM ledger")[0][0]

    def place(_i: int) -> dict[str, Any]:
        return live.call(
            "place", productCode="comodo-ssl", years="1", refId="RACE-1", params=params
        )

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(place, range(20)))
    assert all(r["code"] == 1 for r in results), [r for r in results if r["code"] != 1]
    assert len({r["data"]["certId"] for r in results}) == 1
    assert live.sql("SELECT COUNT(*) FROM orders WHERE ref_id = 'RACE-1'") == [(1,)]
    charges = live.sql(
        "SELECT COUNT(*), SUM(amount_cents) FROM ledger l JOIN orders o "
        "ON o.id = l.order_id WHERE o.ref_id = 'RACE-1'"
    )
    assert charges == [(1, -1200)]
    assert live.sql("SELECT SUM(amount_cents) FROM ledger")[0][0] == balance_before - 1200


def test_logs_hold_no_token_key_or_password(live: Live) -> None:
    """Runs last in this module: everything above has logged by now."""
    log = live.log_path.read_text()
    assert "request" in log and "dcv check" in log  # the log is not empty
    assert live.token not in log
    for marker in ("PRIVATE KEY", "pkcsPass", "jksPass", "BEGIN CERTIFICATE REQUEST"):
        assert marker not in log
    master_key = (live.data_dir / "master.key").read_text().strip()
    assert master_key not in log
