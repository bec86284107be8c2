"""Which names certbroker may certify: one answer for every path that asks.

Modelled on Boulder's policy authority: `well_formed` is the syntax (and canonical form) of a
requested name, `willing_to_issue` the policy for a well-formed one, and `check_name` both. Each
refusal is a `NameRefused` carrying one rule code and one sentence, so `validate`, `place`,
reissue/replace/renew, the DCV engine and the certificate profile all refuse the same names with
the same words. Pure functions: the only input besides the name is the operator's blocklist, and
the Public Suffix List (policy/public_suffixes.py).

Which kinds of name a *product* sells (wildcards, IP addresses) is the catalogue's business and
is checked by the orders layer with the product in hand; this module says what no product may
carry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from certbroker.pki.names import NameSyntaxError, classify_name, normalize_name
from certbroker.policy import public_suffixes

NameRule = Literal[
    "malformed",  # not a domain name or IP address (RFC 1034 3.5, RFC 5891, BR 7.1.2.7.12)
    "special-use",  # a reserved or special-use domain (RFC 6761, 6762, 7686, 8375, 9476)
    "internal-name",  # a TLD outside the ICANN section of the PSL (BR 4.2.2, 7.1.2.7.12)
    "public-suffix",  # a public suffix itself (BR 3.2.2.6)
    "wildcard-suffix",  # a wildcard directly under a public suffix (BR 3.2.2.6)
    "reserved-ip",  # an IP address that is not publicly routable (BR 7.1.2.7.12)
    "blocked",  # the operator's blocklist
]

# Special-use domain names (IANA registry) and ICANN's reserved `.internal`: names under them
# never belong to one applicant on the public Internet, so no public CA certifies them.
SPECIAL_USE: Final[dict[str, str]] = {
    "test": "RFC 6761 6.2",
    "localhost": "RFC 6761 6.3",
    "invalid": "RFC 6761 6.4",
    "example": "RFC 6761 6.5",
    "local": "RFC 6762 (multicast DNS)",
    "onion": "RFC 7686 (Tor)",
    "alt": "RFC 9476",
    "internal": "ICANN’s reservation for private use",
    "home.arpa": "RFC 8375",
    # .arpa holds the Internet's infrastructure (reverse DNS, ENUM), not applicants' names.
    "arpa": "RFC 3172",
}


class NameRefused(ValueError):
    """A name certbroker will not certify, with the rule that refuses it and why."""

    def __init__(self, name: str, rule: NameRule, reason: str) -> None:
        super().__init__(reason)
        self.name = name
        self.rule: NameRule = rule
        self.reason = reason


@dataclass(frozen=True)
class NamePolicy:
    """The operator's part of the name policy.

    `blocked`: names (lower-case A-labels) refused together with every name under them, e.g.
    brands the operator will not certify or its own infrastructure."""

    blocked: tuple[str, ...] = ()

    def check(self, raw: str) -> str:
        return check_name(raw, self)


DEFAULT_POLICY: Final = NamePolicy()


def well_formed(raw: str) -> str:
    """The canonical form of `raw` (A-labels, lower case, no trailing dot, canonical IP text);
    refuses what is not a DNS name, a wildcard or an IP address."""
    try:
        return normalize_name(raw)
    except NameSyntaxError as exc:
        raise NameRefused(raw.strip()[:80], "malformed", str(exc)) from exc


def willing_to_issue(name: str, policy: NamePolicy = DEFAULT_POLICY) -> None:
    """Refuse a well-formed `name` that no certificate of ours may carry."""
    if classify_name(name) == "ip":
        _check_ip(name)
        return
    host = name.removeprefix("*.")
    for suffix in _suffixes(host):
        if suffix in SPECIAL_USE:
            raise NameRefused(
                name,
                "special-use",
                f"{name} is under .{suffix}, a special-use domain ({SPECIAL_USE[suffix]}) "
                "that no public certificate may name",
            )
    if public_suffixes.icann_suffix(host) is None:
        tld = host.rsplit(".", 1)[-1]
        raise NameRefused(
            name,
            "internal-name",
            f"{name} does not end in a public top-level domain (.{tld} is not delegated by "
            "ICANN); internal names cannot be certified (BR 4.2.2)",
        )
    if public_suffixes.public_suffix(host) == host:
        # Subdomains of a public suffix belong to independent registrants (BR 3.2.2.6).
        if host != name:
            raise NameRefused(
                name,
                "wildcard-suffix",
                f"{name} is a wildcard directly under the public suffix {host}, whose "
                "subdomains belong to independent registrants (BR 3.2.2.6)",
            )
        raise NameRefused(
            name,
            "public-suffix",
            f"{name} is a public suffix, shared by independent registrants; it cannot be "
            "certified (BR 3.2.2.6)",
        )
    for blocked in policy.blocked:
        if host == blocked or host.endswith("." + blocked):
            raise NameRefused(
                name, "blocked", f"{name} is on this CA’s blocklist ({blocked}); it is not issued"
            )


def check_name(raw: str, policy: NamePolicy = DEFAULT_POLICY) -> str:
    """`well_formed` then `willing_to_issue`: the canonical name, or NameRefused."""
    name = well_formed(raw)
    willing_to_issue(name, policy)
    return name


def refusal(raw: str, policy: NamePolicy = DEFAULT_POLICY) -> NameRefused | None:
    """The refusal of `raw`, or None when it may be certified (for checks that only report)."""
    try:
        check_name(raw, policy)
    except NameRefused as exc:
        return exc
    return None


def parse_blocklist(entries: Iterable[str]) -> tuple[str, ...]:
    """The operator's blocklist in canonical form; a bad entry stops start-up with its text."""
    out: list[str] = []
    for entry in entries:
        if not entry.strip():
            continue
        try:
            name = normalize_name(entry.strip().removeprefix("*."))
        except NameSyntaxError as exc:
            raise ValueError(f"blocklist entry {entry!r}: {exc}") from exc
        out.append(name)
    return tuple(out)


def _suffixes(host: str) -> list[str]:
    """ "a.b.c" → ["a.b.c", "b.c", "c"]: the most specific first (home.arpa before arpa)."""
    labels = host.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


def _check_ip(name: str) -> None:
    ip = ipaddress.ip_address(name)
    # BR 7.1.2.7.12: no Reserved IP Address (IANA's special-purpose registries).
    if not ip.is_global or ip.is_multicast:
        raise NameRefused(
            name,
            "reserved-ip",
            f"{name} is a reserved IP address (private, loopback, link-local, documentation "
            "or other special-purpose range); only public addresses can be certified "
            "(BR 7.1.2.7.12)",
        )
