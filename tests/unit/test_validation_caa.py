"""CAA (RFC 8659, BR 3.2.2.8) against real DNS servers on loopback: pebble-challtestsrv for
plain records, CNAMEs and SERVFAIL; the tiny server in tests/helpers for flags and NXDOMAIN; a
silent socket for timeouts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from certbroker.validation.caa import check_caa
from certbroker.validation.results import CheckResult
from tests.helpers.challtestsrv import ChallTestSrv
from tests.helpers.dns_records import SilentDnsServer, TinyDnsServer

US = "certbroker.example.com"
TIMEOUT = 2.0


@pytest.fixture
def zone() -> str:
    """A registrable domain no other test uses (challtestsrv lives for the whole session)."""
    return f"z{uuid.uuid4().hex[:12]}.test"


@pytest.fixture
def tiny() -> Iterator[TinyDnsServer]:
    with TinyDnsServer() as server:
        yield server


def caa(
    name: str, resolver: str, *, ours: tuple[str, ...] = (US,), timeout: float = TIMEOUT
) -> CheckResult:
    return asyncio.run(
        check_caa(name, issuer_domains=ours, resolver_address=resolver, timeout=timeout)
    )


def test_no_caa_anywhere_permits(dns_server: ChallTestSrv, zone: str) -> None:
    result = caa(f"www.{zone}", dns_server.resolver)
    assert result == CheckResult(
        True, f"no CAA records at www.{zone} or its parents; any CA may issue"
    )


def test_caa_naming_us_permits(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.add_caa(zone, ("issue", "letsencrypt.org"), ("issue", "Certbroker.Example.COM"))
    result = caa(zone, dns_server.resolver)
    assert result == CheckResult(True, f"CAA at {zone} allows {US}")


def test_caa_naming_another_ca_refuses_until_fixed(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.add_caa(zone, ("issue", "letsencrypt.org"))
    result = caa(zone, dns_server.resolver)
    assert result == CheckResult(
        False, f"CAA at {zone} allows only letsencrypt.org; this CA is {US}"
    )
    dns_server.add_caa(zone, ("issue", US))
    assert caa(zone, dns_server.resolver).ok


def test_parameters_are_ignored(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.add_caa(
        zone, ("issue", f" {US}; accounturi=https://x.test/acct/1; validationmethods=dns-01")
    )
    assert caa(zone, dns_server.resolver).ok


def test_one_of_several_issuer_domains_is_enough(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.add_caa(zone, ("issue", "ca.other.test"))
    assert caa(zone, dns_server.resolver, ours=(US, "ca.other.test")).ok
    refused = caa(zone, dns_server.resolver, ours=(US, "second.example.com"))
    assert refused.detail == (
        f"CAA at {zone} allows only ca.other.test; this CA is {US} or second.example.com"
    )


def test_tree_climbing_uses_the_closest_record(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.add_caa(zone, ("issue", "letsencrypt.org"))
    result = caa(f"a.b.{zone}", dns_server.resolver)
    assert result == CheckResult(
        False, f"CAA at {zone} allows only letsencrypt.org; this CA is {US}"
    )
    # A record closer to the name wins over the parent's.
    dns_server.add_caa(f"b.{zone}", ("issue", US))
    assert caa(f"a.b.{zone}", dns_server.resolver) == CheckResult(
        True, f"CAA at b.{zone} allows {US}"
    )


def test_wildcard_uses_issuewild_when_present(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.add_caa(zone, ("issue", US), ("issuewild", "letsencrypt.org"))
    assert caa(zone, dns_server.resolver).ok  # issuewild does not apply to a plain name
    result = caa(f"*.{zone}", dns_server.resolver)
    assert result == CheckResult(
        False, f"CAA issuewild at {zone} allows only letsencrypt.org; this CA is {US}"
    )


def test_wildcard_falls_back_to_issue(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.add_caa(zone, ("issue", "letsencrypt.org"))
    assert caa(f"*.{zone}", dns_server.resolver).detail == (
        f"CAA at {zone} allows only letsencrypt.org; this CA is {US}"
    )
    dns_server.add_caa(f"w.{zone}", ("issue", "letsencrypt.org"), ("issuewild", US))
    assert caa(f"*.w.{zone}", dns_server.resolver) == CheckResult(
        True, f"CAA issuewild at w.{zone} allows {US}"
    )


def test_empty_issue_forbids_everyone(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.add_caa(zone, ("issue", ";"))
    assert caa(zone, dns_server.resolver) == CheckResult(
        False, f"CAA at {zone} forbids issuance by any CA (issue ‘;’)"
    )


def test_iodef_alone_does_not_restrict(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.add_caa(zone, ("iodef", "mailto:security@example.com"))
    assert caa(zone, dns_server.resolver) == CheckResult(
        True, f"CAA at {zone} has no issue property; any CA may issue"
    )


def test_malformed_issue_value_authorizes_nobody(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.add_caa(zone, ("issue", "not a domain"))
    assert caa(zone, dns_server.resolver) == CheckResult(
        False, f"CAA at {zone} has an invalid issue value ‘not a domain’; it authorizes no CA"
    )


def test_servfail_is_not_permission(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.set_servfail(f"www.{zone}")
    result = caa(f"www.{zone}", dns_server.resolver)
    assert result == CheckResult(
        False, f"CAA lookup failed (SERVFAIL) for www.{zone}; issuance will be retried"
    )
    dns_server.clear_servfail(f"www.{zone}")
    assert caa(f"www.{zone}", dns_server.resolver).ok


def test_servfail_at_a_parent_is_not_permission(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.set_servfail(zone)
    assert caa(f"www.{zone}", dns_server.resolver).detail == (
        f"CAA lookup failed (SERVFAIL) for {zone}; issuance will be retried"
    )


def test_cname_at_a_node_is_followed(dns_server: ChallTestSrv, zone: str) -> None:
    dns_server.set_cname(f"www.{zone}", f"cdn.{zone}")
    dns_server.add_caa(f"cdn.{zone}", ("issue", "letsencrypt.org"))
    dns_server.add_caa(zone, ("issue", US))
    assert caa(f"www.{zone}", dns_server.resolver).detail == (
        f"CAA at www.{zone} allows only letsencrypt.org; this CA is {US}"
    )


def test_cname_without_caa_at_the_target_climbs_from_the_name(
    dns_server: ChallTestSrv, zone: str
) -> None:
    dns_server.set_cname(f"www.{zone}", "cdn.elsewhere.test")
    dns_server.add_caa(zone, ("issue", US))
    assert caa(f"www.{zone}", dns_server.resolver) == CheckResult(
        True, f"CAA at {zone} allows {US}"
    )


def test_unknown_critical_tag_refuses(tiny: TinyDnsServer) -> None:
    tiny.add("example.com", "CAA", f'0 issue "{US}"')
    tiny.add("example.com", "CAA", '128 tbs "unknown"')
    assert caa("www.example.com", tiny.resolver) == CheckResult(
        False,
        "CAA at example.com has the critical property ‘tbs’, unknown to this CA; "
        "issuance refused (RFC 8659 4.1)",
    )


def test_critical_known_tag_and_unknown_plain_tag_are_fine(tiny: TinyDnsServer) -> None:
    tiny.add("example.com", "CAA", f'128 issue "{US}"')
    tiny.add("example.com", "CAA", '0 tbs "unknown"')
    tiny.add("example.com", "CAA", '128 iodef "mailto:x@example.com"')
    assert caa("example.com", tiny.resolver).ok


def test_nxdomain_name_climbs_to_the_parent(tiny: TinyDnsServer) -> None:
    tiny.add("example.com", "CAA", '0 issue "letsencrypt.org"')
    result = caa("missing.example.com", tiny.resolver)
    assert result.detail == f"CAA at example.com allows only letsencrypt.org; this CA is {US}"


def test_timeout_is_not_permission() -> None:
    with SilentDnsServer() as silent:
        result = caa("example.com", silent.resolver, timeout=0.5)
    assert result == CheckResult(
        False, "CAA lookup failed (timeout after 0.5 s) for example.com; issuance will be retried"
    )


def test_ip_addresses_have_no_caa(tiny: TinyDnsServer) -> None:
    assert caa("192.0.2.7", tiny.resolver) == CheckResult(
        True, "CAA does not apply to the IP address 192.0.2.7"
    )


def test_parents_without_caa_are_asked_once_while_checks_pass(tiny: TinyDnsServer) -> None:
    tiny.add("other.shop.example.test", "A", "192.0.2.1")
    assert caa("a.shop.example.test", tiny.resolver).ok
    assert caa("b.shop.example.test", tiny.resolver).ok
    asked = [q.removesuffix(" CAA") for q in tiny.questions]
    # The second check asks only its own name: the parents' absence is remembered (60 s).
    assert asked == [
        "a.shop.example.test",
        "shop.example.test",
        "example.test",
        "test",
        "b.shop.example.test",
    ]


def test_a_refusal_forgets_the_parents_so_a_fix_counts_at_once(tiny: TinyDnsServer) -> None:
    assert caa("a.shop.example.test", tiny.resolver).ok  # parents remembered as without CAA
    tiny.add("a.shop.example.test", "CAA", '0 issue "letsencrypt.org"')
    assert not caa("a.shop.example.test", tiny.resolver).ok
    # The fix: the record moves to a parent that was remembered as empty.
    tiny.clear()
    tiny.add("shop.example.test", "CAA", '0 issue "letsencrypt.org"')
    result = caa("a.shop.example.test", tiny.resolver)
    assert result == CheckResult(
        False, f"CAA at shop.example.test allows only letsencrypt.org; this CA is {US}"
    )
