"""Debian's `pebble` as the tests' upstream ACME CA, on free loopback ports.

The test makes Pebble's TLS certificate (a small CA and a localhost/127.0.0.1 leaf) with
`cryptography`, writes a config that requires External Account Binding, and points Pebble's
http-01 validation at the test's "customer" web server (`httpPort`) and its DNS at
challtestsrv (`-dnsserver`), which answers 127.0.0.1 for every name.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import secrets
import shutil
import ssl
import subprocess
import time
from ipaddress import ip_address
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers.challtestsrv import free_port

EAB_KID = "kid-1"


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """(CA PEM, leaf PEM, leaf key PEM) for localhost and 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble test TLS CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "tls-ca.pem", directory / "tls-cert.pem", directory / "tls-key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class Pebble:
    """`pebble` with EAB required; `directory`, `ca_bundle`, `eab_hmac_key`, `roots()`."""

    def __init__(
        self,
        work_dir: Path,
        *,
        http_port: int,
        dns_server: str,
        authz_reuse: int = 0,
        validity_seconds: int | None = None,
    ) -> None:
        binary = shutil.which("pebble")
        if binary is None:
            raise RuntimeError("pebble is missing: run scripts/setup test")
        work_dir.mkdir(parents=True, exist_ok=True)
        self.ca_bundle, self.tls_cert, self.tls_key = _tls_files(work_dir)
        cert, key = self.tls_cert, self.tls_key
        self.port, self.management_port = free_port(), free_port()
        # RFC 8555 7.3.4: the MAC key is base64url; Pebble wants it without padding.
        raw = secrets.token_bytes(32)
        self.eab_hmac_key = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(cert),
                "privateKey": str(key),
                "httpPort": http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": True,
                "externalAccountMACKeys": {EAB_KID: self.eab_hmac_key},
            }
        }
        if validity_seconds is not None:
            config["pebble"]["certificateValidityPeriod"] = validity_seconds
        config_path = work_dir / "pebble-config.json"
        config_path.write_text(json.dumps(config))
        self.log_path = work_dir / "pebble.log"
        env = dict(
            os.environ,
            PEBBLE_VA_NOSLEEP="1",
            PEBBLE_WFE_NONCEREJECT="0",
            PEBBLE_AUTHZREUSE=str(authz_reuse),  # percent of valid authzs reused
        )
        self._log = self.log_path.open("wb")
        self._command = [binary, "-config", str(config_path), "-dnsserver", dns_server]
        self._env = env
        self._start()

    def _start(self) -> None:
        self._process = subprocess.Popen(
            self._command, stdout=self._log, stderr=subprocess.STDOUT, env=self._env
        )
        self._wait_ready()

    def restart(self) -> None:
        """Stop Pebble and start a new one on the same ports: its accounts, orders and
        authorizations are gone (it keeps them in memory)."""
        self._process.terminate()
        self._process.wait(timeout=10)
        self._start()

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"pebble exited: {self.log_path.read_text()[-2000:]}")
            try:
                httpx.get(self.directory, verify=self._context(), timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.close()
        raise RuntimeError("pebble did not start")

    def roots(self) -> str:
        """The root that signs Pebble's certificate chains (management `/roots/0`)."""
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        return httpx.get(url, verify=self._context(), timeout=5).text

    def cert_status(self, serial_hex: str) -> dict[str, Any]:
        """Pebble's view of a certificate (management `/cert-status-by-serial/<hex>`)."""
        url = f"https://127.0.0.1:{self.management_port}/cert-status-by-serial/{serial_hex}"
        answer: dict[str, Any] = httpx.get(url, verify=self._context(), timeout=5).json()
        return answer

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._log.close()

    def __enter__(self) -> Pebble:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
