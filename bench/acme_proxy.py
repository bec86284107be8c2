"""A counting TLS proxy in front of Pebble, run in its own process by the upstream section.

Pebble logs no line per request, so the bench counts the ACME calls here: every HTTP request
on the client side is counted by method and first path segment (`POST /finalize-order`), then
relayed unchanged to Pebble over TLS; responses are relayed as bytes. Pebble builds its URLs
from the request's Host header, so every later call of a client that started at the proxy's
directory comes back through the proxy. `GET /bench-proxy/counts` is answered by the proxy
itself (JSON, counts since the last read) and never reaches Pebble.

    python -m bench.acme_proxy LISTEN_PORT PEBBLE_PORT CERT_PEM KEY_PEM
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.client
import json
import ssl
import subprocess
import sys
from types import TracebackType
from typing import Any

COUNTS_PATH = "/bench-proxy/counts"
MAX_HEAD = 64 * 1024


def unverified_context() -> ssl.SSLContext:
    """Loopback only, to a server whose certificate the bench made a moment ago."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Proxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.counts: collections.Counter[str] = collections.Counter()
        self.upstream_tls = unverified_context()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        pump: asyncio.Task[None] | None = None
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if len(head) > MAX_HEAD:
                    break
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length) if length else b""
                if target == COUNTS_PATH:
                    payload = json.dumps(dict(self.counts)).encode("ascii")
                    self.counts.clear()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(payload)}\r\n\r\n".encode("ascii")
                        + payload
                    )
                    await writer.drain()
                    continue
                segment = target.split("?", 1)[0].strip("/").split("/", 1)[0]
                self.counts[f"{method} /{segment}"] += 1
                if upstream is None:
                    up_reader, upstream = await asyncio.open_connection(
                        "127.0.0.1", self.upstream_port, ssl=self.upstream_tls
                    )
                    pump = asyncio.create_task(self._pump(up_reader, writer))
                upstream.write(head + body)
                await upstream.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except (ValueError, ssl.SSLError):
            pass
        finally:
            if upstream is not None:
                upstream.close()
            if pump is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pump, timeout=5)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        sink.close()


async def serve(port: int, upstream_port: int, cert: str, key: str) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    proxy = Proxy(upstream_port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", port, ssl=tls, backlog=1024)
    async with server:
        await server.serve_forever()


class AcmeProxy:
    """The proxy in its own process; `counts()` reads (and resets) the counts."""

    def __init__(self, upstream_port: int, cert: str, key: str) -> None:
        from bench.common import REPO, die_with_parent, free_port, wait_port

        self.port = free_port()
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.acme_proxy"),
                *(str(self.port), str(upstream_port), cert, key),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        try:
            wait_port(self.port)
        except BaseException:
            self.close()
            raise

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def counts(self) -> dict[str, int]:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=10, context=unverified_context()
        )
        try:
            connection.request("GET", COUNTS_PATH)
            response = connection.getresponse()
            answer: dict[str, Any] = json.loads(response.read())
        finally:
            connection.close()
        return {str(k): int(v) for k, v in answer.items()}

    def close(self) -> None:
        from bench.common import stop_process

        stop_process(self.process)

    def __enter__(self) -> AcmeProxy:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def main() -> None:
    port, upstream_port, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    try:
        import uvloop

        uvloop.run(serve(port, upstream_port, cert, key))
    except ImportError:
        asyncio.run(serve(port, upstream_port, cert, key))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
