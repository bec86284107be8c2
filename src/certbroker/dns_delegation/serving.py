"""`certbroker dns serve`: the built-in authoritative server as a process of its own.

Its own process rather than part of `serve` or `worker`: it must answer on port 53 of the
addresses the zone's NS records name (privileged, public), it scales apart from the API (one
per NS address), and orders keep flowing while it restarts. It reads `dns_txt` from the same
database as every other process, so any process's publisher can write what it serves.
"""

from __future__ import annotations

import asyncio
import signal

from certbroker.clock import Clock
from certbroker.dns_delegation.authoritative_server import AuthoritativeServer
from certbroker.dns_delegation.txt_rows import DatabaseTxtSource
from certbroker.dns_delegation.zone_answers import ZoneAnswers, ZoneConfig
from certbroker.settings import DcvDelegationSettings
from certbroker.store.db import Database


def make_server(settings: DcvDelegationSettings, db: Database, clock: Clock) -> AuthoritativeServer:
    config = ZoneConfig.of(
        settings.zone, settings.nameservers, settings.hostmaster, settings.txt_ttl
    )
    answers = ZoneAnswers(config, DatabaseTxtSource(db, clock))
    return AuthoritativeServer(answers, settings.listen_host, settings.listen_port)


async def serve_until_signalled(server: AuthoritativeServer) -> None:
    """Serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.close()
