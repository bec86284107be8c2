"""The built-in authoritative DNS server of the delegation zone, over UDP and TCP (RFC 1035
4.2, RFC 7766: TCP is required too), on asyncio; messages are parsed and built by dnspython.

Answers come from zone_answers.py. A UDP answer larger than the client's limit (512 bytes, or
its EDNS payload size, RFC 6891 6.2.5) goes out empty with TC set, and the client retries over
TCP. TCP connections carry any number of queries and close after `IDLE_SECONDS` of silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import struct
from collections.abc import Coroutine
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import structlog

from certbroker.dns_delegation.zone_answers import ZoneAnswers

log = structlog.get_logger("certbroker.dns")

IDLE_SECONDS = 10.0
_UDP_DEFAULT = 512  # RFC 1035 4.2.1
_TCP_MAX = 65535


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: AuthoritativeServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._server.spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        wire = await self._server.respond(data, udp=True)
        if wire is not None and self._transport is not None:
            self._transport.sendto(wire, addr)


class AuthoritativeServer:
    def __init__(self, answers: ZoneAnswers, host: str, port: int) -> None:
        self._answers = answers
        self._host = host
        self._port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        """Listen on UDP and TCP at the same port (port 0: one the system picks for both)."""
        loop = asyncio.get_running_loop()
        wanted = self._port
        # With port 0 the system picks a free UDP port, which may be taken for TCP: try again.
        for attempt in range(1 if wanted else 20):
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self._host, wanted)
            )
            self._port = int(self._udp.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self._host, self._port)
                break
            except OSError as exc:
                self._udp.close()
                self._udp = None
                if wanted or exc.errno != errno.EADDRINUSE or attempt == 19:
                    raise
        log.info(
            "dns server listening",
            host=self._host,
            port=self._port,
            zone=self._answers.config.zone.to_text(),
        )

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def respond(self, wire: bytes, *, udp: bool) -> bytes | None:
        """The answer to one message, or None when it gets none (not a query at all)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return _formerr(wire)
        if query.flags & dns.flags.QR:
            return None  # a response sent to us: never answer it (no loops)
        try:
            response = await self._answers.answer(query)
        except Exception:
            log.exception("dns answer failed", question=str(query.question[:1]))
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
        limit = _TCP_MAX
        if udp:
            limit = max(_UDP_DEFAULT, query.payload) if query.edns >= 0 else _UDP_DEFAULT
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC | (response.flags & dns.flags.AA)
            return truncated.to_wire(max_size=limit)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # RFC 1035 4.2.2: each message is preceded by its two-byte length.
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), IDLE_SECONDS)
                (length,) = struct.unpack("!H", head)
                data = await asyncio.wait_for(reader.readexactly(length), IDLE_SECONDS)
                wire = await self.respond(data, udp=False)
                if wire is None:
                    break
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _formerr(wire: bytes) -> bytes | None:
    """FORMERR for a message whose header parses (RFC 1035 4.1.1), else silence."""
    if len(wire) < 12:
        return None
    (ident, flags) = struct.unpack("!HH", wire[:4])
    if flags & dns.flags.QR:
        return None
    reply = dns.message.Message(id=ident)
    reply.flags = dns.flags.QR | (flags & dns.flags.RD)
    reply.set_rcode(dns.rcode.FORMERR)
    return reply.to_wire()
