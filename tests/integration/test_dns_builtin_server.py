"""certbroker's authoritative server for the delegation zone, asked by dnspython over UDP and
TCP on loopback, its TXT records published by the builtin publisher into SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.update
import pytest

from certbroker.clock import ManualClock
from certbroker.dns_delegation.authoritative_server import AuthoritativeServer
from certbroker.dns_delegation.builtin_publisher import BuiltinPublisher
from certbroker.dns_delegation.confirmation import txt_strings
from certbroker.dns_delegation.publisher import PublishError
from certbroker.dns_delegation.txt_rows import DatabaseTxtSource
from certbroker.dns_delegation.zone_answers import ZoneAnswers, ZoneConfig
from certbroker.store.db import Database

ZONE = "dcv.operator.example"
NOW = datetime(2026, 12, 10, 9, 0, tzinfo=UTC)
LABEL = "abcdefghijklmnopqrstuvwxyz"
TXT_NAME = f"{LABEL}.{ZONE}"

Scenario = Callable[[str, int, BuiltinPublisher, ManualClock], Awaitable[None]]


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'zone.db'}")
    database.upgrade()
    return database


def run(db: Database, scenario: Scenario) -> None:
    async def main() -> None:
        clock = ManualClock(NOW)
        config = ZoneConfig.of(ZONE, ["ns1.operator.example", "ns2.operator.example"], "", 60)
        server = AuthoritativeServer(
            ZoneAnswers(config, DatabaseTxtSource(db, clock)), "127.0.0.1", 0
        )
        await server.start()
        publisher = BuiltinPublisher(
            db,
            clock,
            server=f"127.0.0.1:{server.port}",
            lifetime=timedelta(hours=1),
            confirm_timeout=5.0,
        )
        try:
            await scenario("127.0.0.1", server.port, publisher, clock)
        finally:
            await server.close()

    asyncio.run(main())


async def ask(
    host: str, port: int, name: str, rdtype: str, *, tcp: bool = False
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return await dns.asyncquery.tcp(query, host, timeout=5, port=port)
    return await dns.asyncquery.udp(query, host, timeout=5, port=port)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_apex_soa_and_ns(db: Database, tcp: bool) -> None:
    async def scenario(host: str, port: int, _p: BuiltinPublisher, _c: ManualClock) -> None:
        soa = await ask(host, port, ZONE, "SOA", tcp=tcp)
        assert soa.rcode() == dns.rcode.NOERROR
        assert soa.flags & dns.flags.AA and not soa.flags & dns.flags.RA
        [rrset] = soa.answer
        assert rrset.rdtype == dns.rdatatype.SOA and rrset.ttl == 60
        assert rrset[0].mname == dns.name.from_text("ns1.operator.example")
        assert rrset[0].rname == dns.name.from_text(f"hostmaster.{ZONE}")
        ns = await ask(host, port, ZONE.upper(), "NS", tcp=tcp)
        # Names compare case-insensitively (compression may borrow the question's case).
        assert {r.target for r in ns.answer[0]} == {
            dns.name.from_text("ns1.operator.example"),
            dns.name.from_text("ns2.operator.example"),
        }
        assert ns.answer[0].name == dns.name.from_text(ZONE.upper())  # the case asked
        nodata = await ask(host, port, ZONE, "A", tcp=tcp)
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
        assert nodata.authority[0].rdtype == dns.rdatatype.SOA

    run(db, scenario)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_txt_values_published_confirmed_and_removed(db: Database, tcp: bool) -> None:
    async def scenario(host: str, port: int, pub: BuiltinPublisher, _c: ManualClock) -> None:
        values = ["v" * 43, "w" * 43, "x" * 43]
        await pub.publish_txt(TXT_NAME, values, 60)
        await pub.confirm(TXT_NAME, values)
        answer = await ask(host, port, TXT_NAME, "TXT", tcp=tcp)
        assert answer.rcode() == dns.rcode.NOERROR and answer.flags & dns.flags.AA
        assert txt_strings(answer, TXT_NAME) == set(values)
        assert answer.answer[0].ttl == 60
        # Another type at a name that exists: NODATA with the SOA.
        other = await ask(host, port, TXT_NAME, "A", tcp=tcp)
        assert other.rcode() == dns.rcode.NOERROR and not other.answer
        assert other.authority[0].rdtype == dns.rdatatype.SOA
        await pub.remove_txt(TXT_NAME)
        gone = await ask(host, port, TXT_NAME, "TXT", tcp=tcp)
        assert gone.rcode() == dns.rcode.NXDOMAIN and not gone.answer
        assert gone.authority[0].rdtype == dns.rdatatype.SOA

    run(db, scenario)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_nxdomain_refused_and_empty_non_terminal(db: Database, tcp: bool) -> None:
    async def scenario(host: str, port: int, pub: BuiltinPublisher, _c: ManualClock) -> None:
        missing = await ask(host, port, f"nothing.{ZONE}", "TXT", tcp=tcp)
        assert missing.rcode() == dns.rcode.NXDOMAIN and missing.flags & dns.flags.AA
        assert [r.rdtype for r in missing.authority] == [dns.rdatatype.SOA]
        outside = await ask(host, port, "example.com", "TXT", tcp=tcp)
        assert outside.rcode() == dns.rcode.REFUSED and not outside.answer
        assert not outside.flags & dns.flags.AA and not outside.flags & dns.flags.RA
        sibling = await ask(host, port, "xdcv.operator.example", "SOA", tcp=tcp)
        assert sibling.rcode() == dns.rcode.REFUSED
        await pub.publish_txt(f"a.b.{ZONE}", ["v"], 60)
        between = await ask(host, port, f"b.{ZONE}", "TXT", tcp=tcp)
        assert between.rcode() == dns.rcode.NOERROR and not between.answer  # RFC 8020

    run(db, scenario)


def test_expired_values_are_not_served(db: Database) -> None:
    async def scenario(host: str, port: int, pub: BuiltinPublisher, clock: ManualClock) -> None:
        await pub.publish_txt(TXT_NAME, ["v"], 60)
        assert txt_strings(await ask(host, port, TXT_NAME, "TXT"), TXT_NAME) == {"v"}
        clock.advance(timedelta(hours=2))
        late = await ask(host, port, TXT_NAME, "TXT")
        assert late.rcode() == dns.rcode.NXDOMAIN

    run(db, scenario)


def test_large_answers_truncate_over_udp_and_come_whole_over_tcp(db: Database) -> None:
    async def scenario(host: str, port: int, pub: BuiltinPublisher, _c: ManualClock) -> None:
        values = [f"{i:02d}" + "v" * 200 for i in range(6)]
        await pub.publish_txt(TXT_NAME, values, 60)
        query = dns.message.make_query(TXT_NAME, "TXT", use_edns=False)
        udp = await dns.asyncquery.udp(query, host, timeout=5, port=port, ignore_trailing=True)
        assert udp.flags & dns.flags.TC and not udp.answer
        await pub.confirm(TXT_NAME, values)  # falls back to TCP
        tcp = await ask(host, port, TXT_NAME, "TXT", tcp=True)
        assert txt_strings(tcp, TXT_NAME) == set(values)

    run(db, scenario)


def test_other_opcodes_are_not_implemented_and_confirm_gives_up(db: Database) -> None:
    async def scenario(host: str, port: int, pub: BuiltinPublisher, _c: ManualClock) -> None:
        update = dns.update.UpdateMessage(ZONE)
        update.add(f"x.{ZONE}", 60, "TXT", '"v"')
        answer = await dns.asyncquery.udp(update, host, timeout=5, port=port)
        assert answer.rcode() == dns.rcode.NOTIMP
        short = BuiltinPublisher(
            pub._db,  # the same rows, a short time limit
            pub._clock,
            server=f"{host}:{port}",
            lifetime=timedelta(hours=1),
            confirm_timeout=0.5,
        )
        with pytest.raises(PublishError, match="did not answer the TXT values"):
            await short.confirm(TXT_NAME, ["never published"])

    run(db, scenario)
