"""`challtestsrv`: TXT values set through pebble-challtestsrv's management API, for tests and
the offline ACME tests with Pebble. `/set-txt` adds one value at a host, `/clear-txt` removes
all of them; hosts are absolute names. confirm() asks challtestsrv's DNS port (`confirm_server`).
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from certbroker.dns_delegation.confirmation import wait_for_txt
from certbroker.dns_delegation.publisher import PublishError

REQUEST_TIMEOUT_SECONDS = 10.0


class ChallTestSrvPublisher:
    def __init__(self, *, url: str, confirm_server: str, confirm_timeout: float) -> None:
        self._url = url.rstrip("/")
        self._confirm_server = confirm_server or "127.0.0.1:8053"
        self._confirm_timeout = confirm_timeout

    async def publish_txt(self, fqdn: str, values: Sequence[str], ttl: int) -> None:
        # challtestsrv answers every TXT with its own TTL; the argument has no say there.
        host = _absolute(fqdn)
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS) as client:
            await self._post(client, "/clear-txt", {"host": host})
            for value in dict.fromkeys(values):
                await self._post(client, "/set-txt", {"host": host, "value": value})

    async def remove_txt(self, fqdn: str) -> None:
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS) as client:
            await self._post(client, "/clear-txt", {"host": _absolute(fqdn)})

    async def confirm(self, fqdn: str, values: Sequence[str]) -> None:
        await wait_for_txt(self._confirm_server, fqdn, values, timeout=self._confirm_timeout)

    async def _post(self, client: httpx.AsyncClient, path: str, body: dict[str, str]) -> None:
        try:
            response = await client.post(f"{self._url}{path}", json=body)
        except httpx.HTTPError as exc:
            raise PublishError(
                f"challtestsrv at {self._url} did not answer {path}: {exc!r}"
            ) from exc
        if response.status_code != 200:
            raise PublishError(f"challtestsrv answered {path} with HTTP {response.status_code}")


def _absolute(fqdn: str) -> str:
    return fqdn.strip().lower().rstrip(".") + "."
