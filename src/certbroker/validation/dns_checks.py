"""The DNS CNAME check of CA/B Forum BR 3.2.2.4.7 ("DNS Change"), Sectigo style (SPEC Appendix C).

The applicant creates `<dns_host>.<name>` (dns_host is `_<md5 of the CSR>`) as a CNAME pointing
to the expected value (`<sha256 split>.sectigo.com`). BR 3.2.2.4.7 validates an Authorization
Domain Name, which may be the name itself or a parent of it, so when the record is not at the
name we also look under each parent down to the registrable domain (never a public suffix,
BR 3.2.2.4). A wildcard `*.a.b.com` is checked at `a.b.com` (BR 3.2.2.6).

Queries go to the configured resolver only (`resolver_address`, like Pebble's `dnsserver`),
never through a second path, so what was checked is what decided. Comparison ignores case
(DNS names are case-insensitive, RFC 4343) and a trailing dot. Nothing is raised; every failure
is a `CheckResult` whose detail names the record and what was found.
"""

from __future__ import annotations

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from certbroker.pki.text import safe_text
from certbroker.policy.public_suffixes import parents_to_registrable
from certbroker.validation.resolver import Lookup, dns_resolver, failure_reason, lookup
from certbroker.validation.results import CheckResult

# Which failure to report when no Authorization Domain Name passed: the most useful first.
# A wrong target says exactly what to fix; a lookup failure may be ours; "missing" is last.
_RANK = {"wrong": 0, "failed": 1, "nodata": 2, "nxdomain": 3}


async def check_cname(
    name: str,
    dns_host: str,
    expected_value: str,
    *,
    resolver_address: str | None,
    timeout: float,
) -> CheckResult:
    """Check that `<dns_host>.<name>` (or the same label under a parent of `name`, down to the
    registrable domain) is a CNAME to `expected_value`.

    `resolver_address` is `host:port` of the only server asked (None: the system's resolver);
    `timeout` bounds each query. The first Authorization Domain Name whose record matches
    passes; otherwise the most telling failure is reported.
    """
    expected = _canonical(expected_value)
    label = dns_host.strip().lower()
    domains = parents_to_registrable(name)
    if not domains:
        return CheckResult(False, f"{name} cannot be validated by DNS (a public suffix or IP)")
    if not expected or not label or "." in label:
        return CheckResult(False, f"invalid DNS validation values for {name}")
    try:
        resolver = dns_resolver(resolver_address, timeout)
    except dns.exception.DNSException as exc:
        return CheckResult(False, f"DNS lookup not possible: {failure_reason(exc, timeout)}")

    failures: list[tuple[int, str, str]] = []  # (rank, record, detail)
    for domain in domains:
        record = f"{label}.{domain}"
        try:
            dns.name.from_text(record)
        except dns.exception.DNSException:
            failures.append((_RANK["nxdomain"], record, f"{record} is not a valid DNS name"))
            continue
        found = await lookup(resolver, record, dns.rdatatype.CNAME)
        targets = _targets(found)
        if expected in targets:
            return CheckResult(True, f"CNAME {record} points to {expected}")
        failures.append(_describe(record, found, targets, expected))

    _rank, record, detail = min(failures, key=lambda f: f[0])
    others = [r for _, r, _ in failures if r != record]
    if others:
        detail += f"; also checked {', '.join(others)}"
    return CheckResult(False, detail)


def _describe(
    record: str, found: Lookup, targets: list[str], expected: str
) -> tuple[int, str, str]:
    if targets:
        shown = safe_text(", ".join(targets), 300)  # a DNS answer: outside text
        return _RANK["wrong"], record, f"CNAME {record} points to {shown}, expected {expected}"
    if found.status == "nxdomain":
        return _RANK["nxdomain"], record, f"{record} does not exist (NXDOMAIN)"
    if found.status == "failed":
        return _RANK["failed"], record, f"DNS lookup of {record} failed ({found.reason})"
    return _RANK["nodata"], record, f"no CNAME record at {record}, expected {expected}"


def _targets(found: Lookup) -> list[str]:
    if found.rrset is None or found.rrset.rdtype != dns.rdatatype.CNAME:
        return []
    return sorted({_canonical(rdata.to_text()) for rdata in found.rrset})


def _canonical(value: str) -> str:
    return value.strip().lower().rstrip(".")
