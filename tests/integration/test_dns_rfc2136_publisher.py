"""The rfc2136 publisher against a real BIND 9 primary on loopback that grants TXT updates
under the zone to one TSIG key."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator

import dns.asyncquery
import dns.name
import dns.rcode
import dns.tsig
import pytest

from certbroker.dns_delegation.confirmation import ask_txt, txt_strings
from certbroker.dns_delegation.publisher import PublishError
from certbroker.dns_delegation.rfc2136_publisher import Rfc2136Publisher
from tests.helpers.bind9 import KEY_NAME, Bind9Server, require_named

ZONE = "dcv.operator.test"
NAME = f"abcdefghijklmnopqrstuvwxyz.{ZONE}"


@pytest.fixture(scope="module")
def named() -> Iterator[Bind9Server]:
    require_named()
    with Bind9Server(ZONE) as server:
        yield server


def publisher(named: Bind9Server, secret: str | None = None) -> Rfc2136Publisher:
    return Rfc2136Publisher(
        zone=ZONE,
        server="127.0.0.1",
        port=named.port,
        key_name=KEY_NAME,
        key_algorithm="hmac-sha256",
        key_secret=secret or named.secret,
        confirm_server="",
        confirm_timeout=5.0,
    )


def test_publish_confirm_replace_and_remove(named: Bind9Server) -> None:
    async def scenario() -> None:
        pub = publisher(named)
        await pub.publish_txt(NAME, ["value-one", "value-two"], 60)
        await pub.confirm(NAME, ["value-one", "value-two"])
        answer = await ask_txt(named.address, NAME, timeout=5)
        assert txt_strings(answer, NAME) == {"value-one", "value-two"}
        assert answer.answer[0].ttl == 60
        await pub.publish_txt(NAME, ["value-three"], 60)  # replaces the set
        await pub.confirm(NAME, ["value-three"])
        assert txt_strings(await ask_txt(named.address, NAME, timeout=5), NAME) == {"value-three"}
        await pub.remove_txt(NAME)
        gone = await ask_txt(named.address, NAME, timeout=5)
        assert gone.rcode() == dns.rcode.NXDOMAIN
        await pub.remove_txt(NAME)  # removing nothing is not an error

    asyncio.run(scenario())


def test_wrong_tsig_secret_is_refused(named: Bind9Server) -> None:
    wrong = base64.b64encode(os.urandom(32)).decode("ascii")

    async def scenario() -> None:
        with pytest.raises(PublishError, match="did not accept the TSIG key"):
            await publisher(named, wrong).publish_txt(NAME, ["x"], 60)
        gone = await ask_txt(named.address, NAME, timeout=5)
        assert not txt_strings(gone, NAME)

    asyncio.run(scenario())


def test_unsigned_update_is_refused(named: Bind9Server) -> None:
    async def scenario() -> None:
        message = publisher(named).replace_message(NAME, ["unsigned"], 60)
        message.keyring = None
        message.tsig = None
        response = await dns.asyncquery.tcp(message, "127.0.0.1", timeout=5, port=named.port)
        assert response.rcode() == dns.rcode.REFUSED

    asyncio.run(scenario())


def test_names_outside_the_zone_are_not_sent() -> None:
    pub = Rfc2136Publisher(
        zone=ZONE,
        server="127.0.0.1",
        port=53,
        key_name=KEY_NAME,
        key_algorithm="hmac-sha256",
        key_secret=base64.b64encode(b"k" * 32).decode(),
        confirm_server="",
        confirm_timeout=1.0,
    )
    with pytest.raises(PublishError, match="not a name inside the zone"):
        pub.replace_message("_acme-challenge.example.com", ["v"], 60)
    message = pub.replace_message(NAME, ["a", "b"], 60)
    assert message.keyname == dns.name.from_text(KEY_NAME)
    assert message.keyalgorithm == dns.tsig.HMAC_SHA256
    assert len(message.update) == 3  # delete the TXT RRset, add two values (RFC 2136 2.5)
