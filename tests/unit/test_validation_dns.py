"""The BR 3.2.2.4.7 CNAME check against real DNS servers on loopback: pebble-challtestsrv for
records and SERVFAIL, the tiny server in tests/helpers for NXDOMAIN, a silent socket for timeouts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from certbroker.validation.dns_checks import check_cname
from certbroker.validation.results import CheckResult
from tests.helpers.challtestsrv import ChallTestSrv
from tests.helpers.dns_records import SilentDnsServer, TinyDnsServer

HOST = "_148ecc23d64f50cdcca4f0daf72a9a4b"
VALUE = "f7b3b82e12a4b76d0532898e04fde790.c5325e133b17373ff31c17d9f84393b7.sectigo.com"
TIMEOUT = 2.0


@pytest.fixture
def zone() -> str:
    """A registrable domain no other test uses (challtestsrv lives for the whole session)."""
    return f"z{uuid.uuid4().hex[:12]}.test"


@pytest.fixture
def tiny() -> Iterator[TinyDnsServer]:
    with TinyDnsServer() as server:
        yield server


def check(name: str, resolver: str, *, value: str = VALUE, timeout: float = TIMEOUT) -> CheckResult:
    return asyncio.run(check_cname(name, HOST, value, resolver_address=resolver, timeout=timeout))


def test_cname_at_the_name_passes(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.set_cname(f"{HOST}.shop.{zone}", VALUE)
    result = check(f"shop.{zone}", dns_server.resolver)
    assert result == CheckResult(True, f"CNAME {HOST}.shop.{zone} points to {VALUE}")


def test_case_and_trailing_dot_do_not_matter(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.set_cname(f"{HOST}.{zone}", VALUE.upper() + ".")
    assert check(zone.upper(), dns_server.resolver, value=VALUE.upper()).ok
    assert check(zone, dns_server.resolver, value=VALUE + ".").ok


def test_record_at_a_parent_validates_the_name(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.set_cname(f"{HOST}.{zone}", VALUE)
    result = check(f"a.b.{zone}", dns_server.resolver)
    assert result == CheckResult(True, f"CNAME {HOST}.{zone} points to {VALUE}")


def test_wildcard_is_checked_at_its_base(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.set_cname(f"{HOST}.shop.{zone}", VALUE)
    result = check(f"*.shop.{zone}", dns_server.resolver)
    assert result.ok
    assert f"{HOST}.shop.{zone}" in result.detail


def test_no_climbing_past_the_registrable_domain(tiny: TinyDnsServer) -> None:
    # A record under the public suffix "co.uk" must not validate a name below it.
    tiny.add(f"{HOST}.co.uk", "CNAME", VALUE + ".")
    result = check("shop.example.co.uk", tiny.resolver)
    assert not result.ok
    assert result.detail == (
        f"{HOST}.shop.example.co.uk does not exist (NXDOMAIN); also checked {HOST}.example.co.uk"
    )


def test_wrong_target_names_both_values(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.set_cname(f"{HOST}.{zone}", "x.example.net")
    result = check(zone, dns_server.resolver)
    assert result == CheckResult(
        False, f"CNAME {HOST}.{zone} points to x.example.net, expected {VALUE}"
    )


def test_wrong_target_at_a_parent_is_reported_first(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.set_cname(f"{HOST}.{zone}", "old.sectigo.com")
    result = check(f"shop.{zone}", dns_server.resolver)
    assert result.detail == (
        f"CNAME {HOST}.{zone} points to old.sectigo.com, expected {VALUE}; "
        f"also checked {HOST}.shop.{zone}"
    )


def test_no_cname_record(dns_server: ChallTestSrv, zone: str) -> None:
    # challtestsrv answers NOERROR with an empty answer for names it has no CNAME for.
    result = check(zone, dns_server.resolver)
    assert result == CheckResult(False, f"no CNAME record at {HOST}.{zone}, expected {VALUE}")


def test_nxdomain(tiny: TinyDnsServer) -> None:
    result = check("example.com", tiny.resolver)
    assert result == CheckResult(False, f"{HOST}.example.com does not exist (NXDOMAIN)")


def test_servfail_then_fixed(dns_server: ChallTestSrv, zone: str) -> None:
    record = f"{HOST}.{zone}"
    dns_server.set_servfail(record)
    result = check(zone, dns_server.resolver)
    assert result == CheckResult(False, f"DNS lookup of {record} failed (SERVFAIL)")
    dns_server.clear_servfail(record)
    dns_server.set_cname(record, VALUE)
    assert check(zone, dns_server.resolver).ok


def test_servfail_at_the_name_does_not_hide_a_valid_parent(
    dns_server: ChallTestSrv, zone: str
) -> None:
    dns_server.set_servfail(f"{HOST}.shop.{zone}")
    dns_server.set_cname(f"{HOST}.{zone}", VALUE)
    assert check(f"shop.{zone}", dns_server.resolver).ok


def test_timeout() -> None:
    with SilentDnsServer() as silent:
        result = check("example.com", silent.resolver, timeout=0.5)
    assert result == CheckResult(
        False, f"DNS lookup of {HOST}.example.com failed (timeout after 0.5 s)"
    )


def test_cname_chain_is_not_followed_for_the_comparison(tiny: TinyDnsServer) -> None:
    # The record itself must point at the value; a chain ending there is not what was asked.
    tiny.add(f"{HOST}.chain.example", "CNAME", "middle.chain.example.")
    tiny.add("middle.chain.example", "CNAME", VALUE + ".")
    result = check("chain.example", tiny.resolver)
    assert result == CheckResult(
        False, f"CNAME {HOST}.chain.example points to middle.chain.example, expected {VALUE}"
    )


def test_public_suffix_and_ip_cannot_be_checked(tiny: TinyDnsServer) -> None:
    for name in ("co.uk", "192.0.2.1"):
        result = check(name, tiny.resolver)
        assert result == CheckResult(
            False, f"{name} cannot be validated by DNS (a public suffix or IP)"
        )
