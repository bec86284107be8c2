"""`builtin`: TXT values are `dns_txt` rows, served by certbroker's own authoritative server
(`certbroker dns serve`, authoritative_server.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

from certbroker.clock import Clock
from certbroker.dns_delegation.confirmation import wait_for_txt
from certbroker.store import dns_delegation as store
from certbroker.store.db import Database


class BuiltinPublisher:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        server: str,
        lifetime: timedelta,
        confirm_timeout: float,
    ) -> None:
        self._db = db
        self._clock = clock
        self._server = server
        self._lifetime = lifetime
        self._confirm_timeout = confirm_timeout

    async def publish_txt(self, fqdn: str, values: Sequence[str], ttl: int) -> None:
        # The TTL is the zone's (zone_answers.py): every record of the zone has one TTL.
        await asyncio.to_thread(self._replace, fqdn, list(values))

    def _replace(self, fqdn: str, values: list[str]) -> None:
        now = self._clock.now()
        with self._db.transaction() as session:
            store.replace_txt(session, fqdn, values, now=now, expires_at=now + self._lifetime)

    async def remove_txt(self, fqdn: str) -> None:
        await asyncio.to_thread(self._remove, fqdn)

    def _remove(self, fqdn: str) -> None:
        with self._db.transaction() as session:
            store.remove_txt(session, fqdn)

    async def confirm(self, fqdn: str, values: Sequence[str]) -> None:
        await wait_for_txt(self._server, fqdn, values, timeout=self._confirm_timeout)
