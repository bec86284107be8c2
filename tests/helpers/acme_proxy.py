"""A small HTTPS proxy on loopback between certbroker and Pebble that answers failures on
command: `fail("/order-plz", 429, count=1, retry_after="120")` answers the next request whose
path contains "/order-plz" with a 429 problem document (and Retry-After) instead of forwarding.

It terminates TLS with Pebble's own localhost certificate (so the upstream's `ca_bundle` stays
Pebble's) and forwards over a new TLS connection with the client's Host header, so Pebble
builds every URL it returns (directory, Location, Link) with the proxy's address.

With `ari=True` it plays an RFC 9773 server, which Debian's Pebble 2.4 is not: `renewalInfo`
is added to the directory, GET `renewalInfo/<certID>` answers `window` (set by the test), and
the `replaces` of each newOrder is recorded in `replaces_seen`. Pebble ignores unknown JSON
fields in newOrder, so the request is forwarded unchanged (its JWS signature stays valid).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


@dataclass
class _Rule:
    path_part: str
    status: int
    count: int
    retry_after: str | None


@dataclass
class AcmeProxy:
    upstream_port: int
    ca_bundle: Path
    cert: Path
    key: Path
    rules: list[_Rule] = field(default_factory=list)
    # Every request seen, as (method, path, answered status), in order.
    seen: list[tuple[str, str, int]] = field(default_factory=list)
    ari: bool = False
    # RFC 9773 4.2 suggestedWindow answered for every certID (RFC 3339 strings).
    window: tuple[str, str] = ("", "")
    # The certIDs asked for at renewalInfo, and the `replaces` of each newOrder (None: absent).
    renewal_info_asked: list[str] = field(default_factory=list)
    replaces_seen: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.ari and self.path.startswith("/renewalInfo/"):
                    cert_id = self.path.removeprefix("/renewalInfo/")
                    proxy.renewal_info_asked.append(cert_id)
                    start, end = proxy.window
                    self._answer(200, {"suggestedWindow": {"start": start, "end": end}})
                    return
                if proxy.ari and "order-plz" in self.path and body:
                    payload = json.loads(body)["payload"]
                    padded = payload + "=" * (-len(payload) % 4)
                    sent = json.loads(base64.urlsafe_b64decode(padded))
                    proxy.replaces_seen.append(sent.get("replaces"))
                rule = proxy._take(self.path)
                if rule is not None:
                    problem = {
                        "type": "urn:ietf:params:acme:error:"
                        + ("rateLimited" if rule.status == 429 else "serverInternal"),
                        "detail": f"injected {rule.status} by the test proxy",
                        "status": rule.status,
                    }
                    data = json.dumps(problem).encode()
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "application/problem+json")
                    if rule.retry_after is not None:
                        self.send_header("Retry-After", rule.retry_after)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    proxy.seen.append((self.command, self.path, rule.status))
                    return
                context = ssl.create_default_context(cafile=str(proxy.ca_bundle))
                conn = http.client.HTTPSConnection(
                    "127.0.0.1", proxy.upstream_port, context=context, timeout=30
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                conn.close()
                if proxy.ari and self.command == "GET" and self.path == "/dir":
                    directory = json.loads(data)
                    directory["renewalInfo"] = f"https://127.0.0.1:{proxy.port}/renewalInfo/"
                    data = json.dumps(directory).encode()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                proxy.seen.append((self.command, self.path, answer.status))

            def _answer(self, status: int, document: dict[str, object]) -> None:
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                proxy.seen.append((self.command, self.path, status))

            do_GET = do_POST = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert), str(self.key))
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._lock = threading.Lock()

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def fail(
        self, path_part: str, status: int, *, count: int = 1, retry_after: str | None = None
    ) -> None:
        with self._lock:
            self.rules.append(_Rule(path_part, status, count, retry_after))

    def _take(self, path: str) -> _Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.path_part in path and rule.count > 0:
                    rule.count -= 1
                    return rule
        return None

    def requests_to(self, path_part: str) -> list[int]:
        """The statuses answered to requests whose path contains `path_part`."""
        return [status for _m, path, status in self.seen if path_part in path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
