"""The pre-check of the customer's `_acme-challenge` CNAME, against pebble-challtestsrv (what
customers get right and wrong) and the tiny DNS server (NXDOMAIN, SERVFAIL, a wildcard, a
chain), each failure with the reason the customer reads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from certbroker.validation.delegation_cname import check_delegation_cname
from certbroker.validation.results import CheckResult
from tests.helpers.challtestsrv import ChallTestSrv
from tests.helpers.dns_records import SilentDnsServer, TinyDnsServer

TARGET = "abcdefghijklmnopqrstuvwxyz.dcv.operator.example."


def check(resolver: str, record: str, target: str = TARGET, timeout: float = 5) -> CheckResult:
    return asyncio.run(
        check_delegation_cname(record, target, resolver_address=resolver, timeout=timeout)
    )


@pytest.fixture
def tiny() -> Iterator[TinyDnsServer]:
    with TinyDnsServer() as server:
        yield server


def test_correct_cname_passes(dns_server: ChallTestSrv) -> None:
    record = "_acme-challenge.good.example"
    dns_server.set_cname(record, TARGET)
    try:
        result = check(dns_server.resolver, record)
        assert result.ok, result.detail
        # Case and the final dot do not matter (RFC 4343).
        upper = check(dns_server.resolver, record + ".", TARGET.upper().rstrip("."))
        assert upper.ok, upper.detail
    finally:
        dns_server.clear_cname(record)


def test_wrong_target_fails_naming_both(dns_server: ChallTestSrv) -> None:
    record = "_acme-challenge.wrong.example"
    dns_server.set_cname(record, "zzzzzzzzzzzzzzzzzzzzzzzzzz.dcv.operator.example.")
    try:
        result = check(dns_server.resolver, record)
    finally:
        dns_server.clear_cname(record)
    assert not result.ok
    assert "points to zzzzzzzzzzzzzzzzzzzzzzzzzz.dcv.operator.example." in result.detail
    assert f"must point directly to {TARGET.rstrip('.')}" in result.detail


def test_a_target_under_the_right_one_fails(dns_server: ChallTestSrv) -> None:
    record = "_acme-challenge.suffix.example"
    dns_server.set_cname(record, "x." + TARGET)
    try:
        result = check(dns_server.resolver, record)
    finally:
        dns_server.clear_cname(record)
    assert not result.ok and "must point directly to" in result.detail


def test_txt_instead_of_cname_fails(dns_server: ChallTestSrv) -> None:
    record = "_acme-challenge.txt.example"
    dns_server.set_txt(record + ".", "some-token")
    try:
        result = check(dns_server.resolver, record)
    finally:
        dns_server.clear_txt(record + ".")
    assert not result.ok
    assert "has a TXT record instead of a CNAME" in result.detail
    assert f"create a CNAME record {record} pointing to {TARGET.rstrip('.')}" in result.detail


def test_missing_cname_fails(dns_server: ChallTestSrv) -> None:
    result = check(dns_server.resolver, "_acme-challenge.missing.example")
    assert not result.ok
    assert "has no CNAME record: create a CNAME record" in result.detail


def test_nxdomain_is_told_apart(tiny: TinyDnsServer) -> None:
    tiny.add("www.example.com", "A", "192.0.2.1")
    result = check(tiny.resolver, "_acme-challenge.example.com")
    assert not result.ok
    assert "does not exist (NXDOMAIN): create a CNAME record" in result.detail


def test_servfail_is_a_lookup_failure_not_a_missing_record(tiny: TinyDnsServer) -> None:
    tiny.set_servfail("_acme-challenge.broken.example")
    result = check(tiny.resolver, "_acme-challenge.broken.example")
    assert not result.ok
    assert "DNS lookup of _acme-challenge.broken.example failed (SERVFAIL)" in result.detail


def test_timeout_is_a_lookup_failure() -> None:
    with SilentDnsServer() as silent:
        result = check(silent.resolver, "_acme-challenge.slow.example", timeout=0.5)
    assert not result.ok and "failed (timeout after 0.5 s)" in result.detail


def test_wildcard_cname_that_synthesizes_it_fails(tiny: TinyDnsServer) -> None:
    tiny.add("*.wild.example", "CNAME", TARGET)
    result = check(tiny.resolver, "_acme-challenge.wild.example")
    assert not result.ok
    assert "is answered by a wildcard CNAME *.wild.example" in result.detail
    # A record of its own next to the wildcard passes when the wildcard points elsewhere.
    tiny.clear()
    tiny.add("*.wild.example", "CNAME", "elsewhere.example.")
    tiny.add("_acme-challenge.wild.example", "CNAME", TARGET)
    ok = check(tiny.resolver, "_acme-challenge.wild.example")
    assert ok.ok, ok.detail


def test_chain_through_another_name_fails_without_following_it(tiny: TinyDnsServer) -> None:
    tiny.add("_acme-challenge.chain.example", "CNAME", "hop.chain.example.")
    tiny.add("hop.chain.example", "CNAME", TARGET)
    result = check(tiny.resolver, "_acme-challenge.chain.example")
    assert not result.ok
    assert "points to hop.chain.example.; it must point directly to" in result.detail
    assert "a chain through another name is not accepted" in result.detail
    assert "hop.chain.example CNAME" not in tiny.questions  # never followed
