"""Real HTTP(S) servers on 127.0.0.1 for domain control validation tests.

`DcvHttpServer` serves routes from a dict and records every request (path, Host header, SNI),
so tests can assert both what the checker saw and what it sent. `SilentServer` accepts
connections and never answers; `refused_port()` yields a port that refuses connections.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import http.server
import shutil
import socket
import socketserver
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PKI_VALIDATION_DIR = "/.well-known/pki-validation/"
_CHUNK = 64 * 1024


@dataclass
class Route:
    """What one path answers. `stream_bytes` appends that many b"x" bytes, sent in chunks;
    `drip_delay` sends the body one byte at a time with that pause (a slow server)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_length: bool = True
    stream_bytes: int = 0
    drip_delay: float = 0.0


@dataclass(frozen=True)
class SeenRequest:
    path: str
    host: str | None
    server_name: str | None  # TLS SNI; None for plain http or when the client sent none
    cookie: str | None = None


class DcvHttpServer:
    """A ThreadingHTTPServer on `bind_host` port 0, optionally TLS with a self-signed cert."""

    def __init__(self, bind_host: str = "127.0.0.1", *, tls: bool = False) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[SeenRequest] = []
        self.bytes_sent: dict[str, int] = {}
        self.scheme = "https" if tls else "http"
        self._lock = threading.Lock()
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        self._httpd = _Server((bind_host, 0), _Handler, family=family, owner=self)
        if tls:
            self._httpd.socket = _server_tls_context().wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self.bind_host = bind_host
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> DcvHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> DcvHttpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def url(self, path: str, *, host: str = "shop.example.test") -> str:
        """An absolute URL on this server, naming it by `host` (resolved by the test)."""
        netloc = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{netloc}:{self.port}{path}"

    def serve_file(self, file_name: str, content: str | bytes) -> str:
        """Serve a DCV file; returns its path."""
        path = PKI_VALIDATION_DIR + file_name
        body = content.encode() if isinstance(content, str) else content
        self.routes[path] = Route(body=body)
        return path

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.routes[path] = Route(status=status, headers={"Location": location})

    def _record(self, request: SeenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _count(self, path: str, sent: int) -> None:
        with self._lock:
            self.bytes_sent[path] = self.bytes_sent.get(path, 0) + sent


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        *,
        family: socket.AddressFamily,
        owner: DcvHttpServer,
    ) -> None:
        self.address_family = family
        self.owner = owner
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn (a reverse DNS lookup); skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up early (size and timeout tests) are expected


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def setup(self) -> None:
        # The TLS handshake runs here, in the connection's thread, not in the accept loop.
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def do_GET(self) -> None:
        owner = self.server.owner
        owner._record(
            SeenRequest(
                path=self.path,
                host=self.headers.get("Host"),
                server_name=getattr(self.request, "sni_name", None),
                cookie=self.headers.get("Cookie"),
            )
        )
        route = owner.routes.get(self.path, Route(status=404, body=b"not found"))
        self.send_response(route.status)
        for name, value in route.headers.items():
            self.send_header(name, value)
        if route.content_length and not route.stream_bytes:
            self.send_header("Content-Length", str(len(route.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        with contextlib.suppress(OSError):  # the client stopped reading, as the checker should
            self._send_body(route)

    def _send_body(self, route: Route) -> None:
        owner = self.server.owner
        if route.drip_delay:
            for byte in route.body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                owner._count(self.path, 1)
                time.sleep(route.drip_delay)
            return
        self.wfile.write(route.body)
        owner._count(self.path, len(route.body))
        remaining = route.stream_bytes
        chunk = b"x" * _CHUNK
        while remaining > 0:
            piece = chunk[: min(remaining, _CHUNK)]
            self.wfile.write(piece)
            owner._count(self.path, len(piece))
            remaining -= len(piece)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._connections.append(conn)
            self.accepted += 1

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._connections:
            conn.close()
        self._listener.close()


@contextmanager
def refused_port() -> Iterator[int]:
    """A 127.0.0.1 port that is bound but not listening, so connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


_tls_files: tuple[Path, Path] | None = None


def _server_tls_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert_path, key_path = _self_signed_files()
    context.load_cert_chain(cert_path, key_path)

    def remember_sni(sock: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        sock.sni_name = server_name

    context.sni_callback = remember_sni
    return context


def _self_signed_files() -> tuple[Path, Path]:
    """A self-signed P-256 certificate for shop.example.test, written once per process."""
    global _tls_files
    if _tls_files is None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shop.example.test")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("shop.example.test"),
                        x509.IPAddress(ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        directory = Path(tempfile.mkdtemp(prefix="dcv-tls-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        cert_path, key_path = directory / "cert.pem", directory / "key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        _tls_files = (cert_path, key_path)
    return _tls_files
