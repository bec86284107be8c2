"""CAA (RFC 8659) as CA/B Forum BR 3.2.2.8 requires it before issuing for a name.

* Relevant RRset (RFC 8659 3): climb from the name (the base of a wildcard) towards the root,
  excluding the root itself; the first non-empty CAA RRset found is the relevant one. A CNAME at
  a node is followed by the resolver, and its target's CAA records count for that node.
* Property (RFC 8659 4.2, 4.3): a wildcard uses `issuewild` when the set has any, else `issue`;
  other names use `issue`. If the set has neither, CAA does not restrict issuance. The issuer
  domain name is compared case-insensitively with the CA's configured issuer domains;
  parameters (`; accounturi=...`, `; validationmethods=...`) are ignored: certbroker has no ACME
  accounts to match `accounturi` (RFC 8657), and the DCV method is not part of this check. An
  empty issuer (`issue ";"`) authorizes nobody; a value that does not parse authorizes nobody but
  still restricts, as in Let's Encrypt's Boulder.
* Critical flag (RFC 8659 4.1): a property with flag 128 whose tag we do not know refuses
  issuance. Known: issue, issuewild, iodef (ignored here), issuemail (RFC 9495, not about TLS),
  contactemail and contactphone (BR Appendix A). Tags compare case-insensitively.
* Lookup failures (BR 3.2.2.8): NXDOMAIN and an empty NOERROR answer mean "no CAA at this node".
  SERVFAIL or a timeout is never taken as permission: the BR exception (failure outside the CA's
  infrastructure, retried, and no DNSSEC validation chain to the ICANN root) needs a DNSSEC
  check we cannot make here, so the check fails and the worker retries later.
* Parents shared by many orders (`shop.example.com`, `example.com`, `com`): that one has no CAA
  is remembered for `ABSENT_SECONDS` (60 s) per resolver after a check that allowed issuance,
  well inside the time a CAA check may stand (BR 3.2.2.8: the record's TTL or 8 hours,
  whichever is greater). The name itself is always asked, a CAA RRset found is never
  remembered, and a refusal forgets the parents it climbed, so a fix counts on the next try.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address

import dns.exception
import dns.rdatatype
import dns.rrset

from certbroker.pki.text import safe_text
from certbroker.validation.resolver import dns_resolver, failure_reason, lookup
from certbroker.validation.results import CheckResult

CRITICAL_FLAG = 128
KNOWN_TAGS = frozenset({"issue", "issuewild", "iodef", "issuemail", "contactemail", "contactphone"})
# RFC 8659 4.2: issuer-domain-name = label *("." label); label = (ALPHA / DIGIT) *( *("-")
# (ALPHA / DIGIT)). Leading/trailing whitespace is allowed around it.
_ISSUER = re.compile(r"[a-z0-9](?:-*[a-z0-9])*(?:\.[a-z0-9](?:-*[a-z0-9])*)*")
_EXCERPT_CHARS = 40
ABSENT_SECONDS = 60.0
_ABSENT_MAX = 10_000
# (resolver, node) -> until when (monotonic) the node is known to have no CAA RRset.
_absent: dict[tuple[str | None, str], float] = {}


@dataclass(frozen=True)
class _Property:
    flags: int
    tag: str
    value: str


async def check_caa(
    name: str,
    *,
    issuer_domains: Sequence[str],
    resolver_address: str | None,
    timeout: float,
) -> CheckResult:
    """May a CA known in CAA as one of `issuer_domains` issue for `name` (a DNS name or
    `*.` wildcard)? `resolver_address` is `host:port` of the only server asked (None: the
    system's resolver); `timeout` bounds each query. IP addresses have no CAA and pass."""
    host = name.strip().lower().rstrip(".")
    wildcard = host.startswith("*.")
    base = host[2:] if wildcard else host
    if _is_ip(base):
        return CheckResult(True, f"CAA does not apply to the IP address {base}")
    ours = [d.strip().lower().rstrip(".") for d in issuer_domains if d.strip()]
    try:
        resolver = dns_resolver(resolver_address, timeout)
    except dns.exception.DNSException as exc:
        return _lookup_failed(failure_reason(exc, timeout), base)

    labels = base.split(".")
    absent: list[tuple[str | None, str]] = []  # parents found without CAA, or known to be
    for i in range(len(labels)):
        node = ".".join(labels[i:])
        key = (resolver_address, node)
        if i > 0 and _absent.get(key, 0.0) > time.monotonic():
            absent.append(key)
            continue
        found = await lookup(resolver, node, dns.rdatatype.CAA)
        if found.status == "failed":
            return _lookup_failed(found.reason, node)
        if found.rrset is not None and found.rrset.rdtype == dns.rdatatype.CAA:
            result = _judge(node, _properties(found.rrset), wildcard=wildcard, ours=ours)
            if result.ok:
                _remember(absent)
            else:
                # The customer's fix may be a record at any parent: ask them all next time.
                for j in range(1, len(labels)):
                    _absent.pop((resolver_address, ".".join(labels[j:])), None)
            return result
        if i > 0:
            absent.append(key)
    _remember(absent)
    return CheckResult(True, f"no CAA records at {base} or its parents; any CA may issue")


def _remember(absent: list[tuple[str | None, str]]) -> None:
    """The parents without CAA of a check that allowed issuance."""
    if len(_absent) + len(absent) > _ABSENT_MAX:
        _absent.clear()  # bounded; a rare full clear costs a few lookups
    until = time.monotonic() + ABSENT_SECONDS
    for key in absent:
        _absent[key] = until


def forget_absent_caa() -> None:
    """Ask every node again from now on."""
    _absent.clear()


def _judge(node: str, props: list[_Property], *, wildcard: bool, ours: list[str]) -> CheckResult:
    for prop in props:
        if prop.flags & CRITICAL_FLAG and prop.tag not in KNOWN_TAGS:
            return CheckResult(
                False,
                f"CAA at {node} has the critical property ‘{_excerpt(prop.tag)}’, unknown to "
                "this CA; issuance refused (RFC 8659 4.1)",
            )
    tag = "issue"
    if wildcard and any(p.tag == "issuewild" for p in props):
        tag = "issuewild"
    relevant = [p for p in props if p.tag == tag]
    if not relevant:
        return CheckResult(True, f"CAA at {node} has no {tag} property; any CA may issue")
    issuers = [_issuer(p.value) for p in relevant]
    shown_tag = "" if tag == "issue" else " issuewild"
    if any(issuer in ours for issuer in issuers if issuer):
        return CheckResult(True, f"CAA{shown_tag} at {node} allows {_us(ours)}")
    named = sorted({issuer for issuer in issuers if issuer})
    if not named:
        broken = [p.value for p in relevant if _issuer(p.value) is None and _names_issuer(p)]
        if broken:
            return CheckResult(
                False,
                f"CAA{shown_tag} at {node} has an invalid {tag} value "
                f"‘{_excerpt(broken[0])}’; it authorizes no CA",
            )
        return CheckResult(
            False, f"CAA{shown_tag} at {node} forbids issuance by any CA ({tag} ‘;’)"
        )
    return CheckResult(
        False,
        f"CAA{shown_tag} at {node} allows only {', '.join(named)}; this CA is {_us(ours)}",
    )


def _properties(rrset: dns.rrset.RRset) -> list[_Property]:
    props = []
    for rdata in rrset:
        tag = rdata.tag.decode("ascii", errors="replace").lower()
        value = rdata.value.decode("utf-8", errors="replace")
        props.append(_Property(int(rdata.flags), tag, value))
    return props


def _issuer(value: str) -> str | None:
    """The issuer domain name of an issue/issuewild value, lower-case; None when the value
    names no issuer (`;`, empty) or does not parse (RFC 8659 4.2)."""
    domain = value.split(";", 1)[0].strip().lower()
    if not domain or not _ISSUER.fullmatch(domain):
        return None
    return domain


def _names_issuer(prop: _Property) -> bool:
    """Whether the value tries to name an issuer (anything before the first `;`)."""
    return bool(prop.value.split(";", 1)[0].strip())


def _us(ours: list[str]) -> str:
    return " or ".join(ours) if ours else "not configured with an issuer domain"


def _lookup_failed(reason: str, node: str) -> CheckResult:
    return CheckResult(False, f"CAA lookup failed ({reason}) for {node}; issuance will be retried")


def _is_ip(host: str) -> bool:
    try:
        ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _excerpt(text: str) -> str:
    """A short piece of untrusted text, safe in a message (pki/text.py)."""
    return safe_text(text, _EXCERPT_CHARS)
