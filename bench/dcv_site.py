"""The customers' web site for certbroker's file DCV, run in its own process by the bench.

`PUT /.well-known/pki-validation/<file>` publishes a file (what a reseller's panel does on the
hosting account), `GET` serves it, anything else is 404. `/.well-known/acme-challenge/<token>`
works the same (http-01 of the upstream ACME section: certbroker's pre-check and the upstream's
validation both fetch it). HTTP/1.1 with keep-alive, asyncio, so
that the site costs little CPU next to the servers being measured.

    python -m bench.dcv_site PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

PREFIXES = ("/.well-known/pki-validation/", "/.well-known/acme-challenge/")
MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024


class Site:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if len(head) > MAX_HEAD:
                    break
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name:
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                if length > MAX_BODY:
                    break
                body = await reader.readexactly(length) if length else b""
                close = headers.get("connection", "").lower() == "close"
                status, payload = self.answer(method, target, body)
                extra = "Connection: close\r\n" if close else ""
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Length: {len(payload)}\r\n"
                    f"Content-Type: text/plain\r\n{extra}\r\n".encode("latin-1")
                    + payload
                )
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except ValueError:  # a request line that does not parse
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def answer(self, method: str, target: str, body: bytes) -> tuple[str, bytes]:
        if not target.startswith(PREFIXES):
            return "404 Not Found", b"not found"
        if method == "PUT":
            self.files[target] = body
            return "204 No Content", b""
        if method == "GET":
            content = self.files.get(target)
            if content is not None:
                return "200 OK", content
        return "404 Not Found", b"not found"


async def serve(port: int) -> None:
    site = Site()
    server = await asyncio.start_server(site.handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    try:
        import uvloop

        uvloop.run(serve(port))
    except ImportError:
        asyncio.run(serve(port))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
