"""Debian's BIND 9 (`named`) as a real primary server on loopback that accepts RFC 2136 updates
signed with a TSIG key, for the rfc2136 publisher's tests. Everything it writes (config, zone,
journal, pid) lives in a temporary directory; it runs in the foreground and is terminated by
`close()`. Needs `named` (scripts/setup test installs bind9) and runs as the current user.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rcode

from tests.helpers.challtestsrv import free_port

NAMED = "/usr/sbin/named"
KEY_NAME = "certbroker-update"


def require_named() -> None:
    import pytest

    if not os.access(NAMED, os.X_OK):
        if os.environ.get("CI") == "true":
            raise RuntimeError("named is missing: run scripts/setup test")
        pytest.skip("named (bind9) is not installed: run scripts/setup test")


class Bind9Server:
    def __init__(self, zone: str) -> None:
        self.zone = zone.rstrip(".")
        self.secret = base64.b64encode(os.urandom(32)).decode("ascii")
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="certbroker-named-"))
        (self._dir / "zone.db").write_text(
            f"$TTL 60\n@ IN SOA ns1.{self.zone}. hostmaster.{self.zone}. 1 3600 600 86400 60\n"
            f"@ IN NS ns1.{self.zone}.\nns1 IN A 127.0.0.1\n"
        )
        d = self._dir
        (d / "named.conf").write_text(
            f"""options {{
  directory "{d}";
  pid-file "{d}/named.pid";
  session-keyfile "{d}/session.key";
  managed-keys-directory "{d}";
  listen-on port {self.port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  recursion no;
  dnssec-validation no;
  notify no;
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{self.secret}"; }};
zone "{self.zone}" {{
  type primary;
  file "{d}/zone.db";
  update-policy {{ grant {KEY_NAME} zonesub TXT; }};
}};
"""
        )
        self._log = open(d / "named.log", "wb")  # noqa: SIM115 - closed in close()
        self._process = subprocess.Popen(
            [NAMED, "-g", "-c", str(d / "named.conf")],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _wait_ready(self) -> None:
        query = dns.message.make_query(self.zone, "SOA")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                answer = dns.query.udp(query, "127.0.0.1", timeout=0.3, port=self.port)
            except (dns.exception.Timeout, OSError):
                time.sleep(0.1)
                continue
            if answer.rcode() == dns.rcode.NOERROR and answer.answer:
                return
            time.sleep(0.1)
        log = (self._dir / "named.log").read_text(errors="replace")[-2000:]
        self.close()
        raise RuntimeError(f"named did not start:\n{log}")

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Bind9Server:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
