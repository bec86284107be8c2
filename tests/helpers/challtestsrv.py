"""Debian's `pebble-challtestsrv` as the tests' DNS server on loopback.

It answers A queries for every name with 127.0.0.1 unless told otherwise through its
management API, which is what DCV needs: any test domain reaches the loopback DCV server.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from types import TracebackType

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChallTestSrv:
    def __init__(self) -> None:
        binary = shutil.which("pebble-challtestsrv")
        if binary is None:
            raise RuntimeError("pebble-challtestsrv is missing: run scripts/setup test")
        self.dns_port = free_port()
        self.management_port = free_port()
        self._process = subprocess.Popen(
            [
                binary,
                "-dns01",
                f"127.0.0.1:{self.dns_port}",
                "-management",
                f"127.0.0.1:{self.management_port}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()

    @property
    def resolver(self) -> str:
        return f"127.0.0.1:{self.dns_port}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.management_port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError("pebble-challtestsrv did not start")

    def _post(self, path: str, body: dict[str, object]) -> None:
        response = httpx.post(f"http://127.0.0.1:{self.management_port}{path}", json=body)
        response.raise_for_status()

    def add_a(self, host: str, *addresses: str) -> None:
        self._post("/add-a", {"host": host, "addresses": list(addresses)})

    def clear_a(self, host: str) -> None:
        self._post("/clear-a", {"host": host})

    # Names are matched case-sensitively by challtestsrv: use lower case, as the checks query.
    def add_caa(self, host: str, *policies: tuple[str, str]) -> None:
        """CAA records (flag 0) as (tag, value) pairs, e.g. ("issue", "letsencrypt.org")."""
        body = [{"tag": tag, "value": value} for tag, value in policies]
        self._post("/add-caa", {"host": host, "policies": body})

    def clear_caa(self, host: str) -> None:
        self._post("/clear-caa", {"host": host})

    def set_cname(self, host: str, target: str) -> None:
        self._post("/set-cname", {"host": host, "target": target})

    def clear_cname(self, host: str) -> None:
        self._post("/clear-cname", {"host": host})

    def set_txt(self, host: str, value: str) -> None:
        """Adds one TXT value at `host` (an absolute name: end it with a dot)."""
        self._post("/set-txt", {"host": host, "value": value})

    def clear_txt(self, host: str) -> None:
        self._post("/clear-txt", {"host": host})

    def set_servfail(self, host: str) -> None:
        """Every query for `host` (any type) answers SERVFAIL."""
        self._post("/set-servfail", {"host": host})

    def clear_servfail(self, host: str) -> None:
        self._post("/clear-servfail", {"host": host})

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()

    def __enter__(self) -> ChallTestSrv:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
