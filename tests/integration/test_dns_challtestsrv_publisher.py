"""The challtestsrv publisher against a real pebble-challtestsrv, chosen from the settings."""

from __future__ import annotations

import asyncio

from certbroker.clock import SystemClock
from certbroker.dns_delegation.confirmation import ask_txt, txt_strings
from certbroker.dns_delegation.publishers import make_publisher
from certbroker.settings import DcvDelegationSettings
from certbroker.store.db import Database
from tests.helpers.challtestsrv import ChallTestSrv

NAME = "qrstuvwxyzabcdefghijklmnop.dcv.operator.example"


def test_publish_confirm_and_clear(dns_server: ChallTestSrv) -> None:
    settings = DcvDelegationSettings(
        zone="dcv.operator.example",
        publisher="challtestsrv",
        challtestsrv_url=f"http://127.0.0.1:{dns_server.management_port}",
        confirm_server=dns_server.resolver,
        confirm_timeout_seconds=5,
    )
    publisher = make_publisher(settings, Database("sqlite://"), SystemClock())

    async def scenario() -> None:
        await publisher.publish_txt(NAME, ["first", "second"], 60)
        await publisher.confirm(NAME, ["first", "second"])
        await publisher.publish_txt(NAME.upper() + ".", ["third"], 60)  # replaces the set
        await publisher.confirm(NAME, ["third"])
        answered = txt_strings(await ask_txt(dns_server.resolver, NAME, timeout=5), NAME)
        assert answered == {"third"}
        await publisher.remove_txt(NAME)
        gone = txt_strings(await ask_txt(dns_server.resolver, NAME, timeout=5), NAME)
        assert gone == set()

    asyncio.run(scenario())
