"""The customer's side of a dns-01 delegation: is `_acme-challenge.<base>` a CNAME to exactly
`<label>.<zone>.`? Checked before any challenge is answered, so a customer's mistake costs no
failed validation at the upstream CA; the CA validates again itself.

Only the CNAME record at `_acme-challenge.<base>` counts (RFC 1034 3.6.2): its target is
compared, case-insensitively and without the final dot (RFC 4343), never followed. So a chain
through another name fails even if it ends at the right place, and a TXT record there fails.
A wildcard `*.<base>` CNAME (RFC 4592) would synthesize the same answer for `_acme-challenge`,
and then answer for every other name too: a random sibling `_<random>.<base>` is asked, and if
it gets the same CNAME the record is taken as synthesized and refused, because the customer
did not delegate `_acme-challenge` on purpose (and may repoint the wildcard at any time).
Queries go to the configured resolver only, like dns_checks.py.
"""

from __future__ import annotations

import secrets

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype

from certbroker.pki.text import safe_text
from certbroker.validation.resolver import Lookup, dns_resolver, failure_reason, lookup
from certbroker.validation.results import CheckResult


async def check_delegation_cname(
    record: str,
    expected_target: str,
    *,
    resolver_address: str | None,
    timeout: float,
) -> CheckResult:
    """Whether `record` (`_acme-challenge.<base>`) is a CNAME whose target is exactly
    `expected_target`. `resolver_address` is `host:port` of the only server asked (None: the
    system's resolver); `timeout` bounds each query. Never raises DNS errors."""
    name = _canonical(record)
    expected = _canonical(expected_target)
    parent = name.partition(".")[2]
    try:
        dns.name.from_text(name)
        resolver = dns_resolver(resolver_address, timeout)
    except dns.exception.DNSException as exc:
        return CheckResult(False, f"cannot look up {name}: {failure_reason(exc, timeout)}")
    found = await lookup(resolver, name, dns.rdatatype.CNAME)
    if found.status == "failed":
        return CheckResult(
            False, f"DNS lookup of {name} failed ({found.reason}); no answer could be checked"
        )
    if found.status == "nxdomain":
        return CheckResult(
            False,
            f"{name} does not exist (NXDOMAIN): create a CNAME record {name} pointing to "
            f"{expected}.",
        )
    target = _target_at(found, name)
    if target is None:
        return await _no_cname(resolver, name, expected)
    sibling = f"_{secrets.token_hex(8)}.{parent}"
    probe = await lookup(resolver, sibling, dns.rdatatype.CNAME)
    synthesized = _target_at(probe, sibling)
    if synthesized is not None and synthesized == target:
        return CheckResult(
            False,
            f"{name} is answered by a wildcard CNAME *.{parent} (pointing to "
            f"{_shown(target)}), not by a record of its own: create a CNAME record {name} "
            f"pointing to {expected}.",
        )
    if target != expected:
        return CheckResult(
            False,
            f"CNAME {name} points to {_shown(target)}; it must point directly to {expected}. "
            "(a chain through another name is not accepted)",
        )
    if probe.status == "failed":
        return CheckResult(
            False,
            f"CNAME {name} points to {expected}, but whether a wildcard *.{parent} answers "
            f"for it could not be checked ({probe.reason}); try again later",
        )
    return CheckResult(True, f"CNAME {name} points to {expected}")


async def _no_cname(resolver: dns.asyncresolver.Resolver, name: str, expected: str) -> CheckResult:
    """The name exists without a CNAME: say what is there instead when it is a TXT record."""
    txt = await lookup(resolver, name, dns.rdatatype.TXT)
    if txt.status == "found":
        return CheckResult(
            False,
            f"{name} has a TXT record instead of a CNAME: delete the TXT record and create a "
            f"CNAME record {name} pointing to {expected}.",
        )
    return CheckResult(
        False,
        f"{name} has no CNAME record: create a CNAME record {name} pointing to {expected}.",
    )


def _target_at(found: Lookup, owner: str) -> str | None:
    """The target of the CNAME owned by `owner` itself, or None."""
    rrset = found.rrset
    if rrset is None or rrset.rdtype != dns.rdatatype.CNAME:
        return None
    if _canonical(rrset.name.to_text()) != _canonical(owner) or len(rrset) == 0:
        return None
    return _canonical(rrset[0].target.to_text())


def _shown(target: str) -> str:
    return safe_text(target, 260) + "."  # a DNS answer: outside text


def _canonical(value: str) -> str:
    return value.strip().lower().rstrip(".")
