"""Registrable domains from the Public Suffix List, shipped offline.

The list comes bundled with the `publicsuffixlist` package, so a check never downloads it (a CA
must not let a network failure or a tampered download change who may approve a name); updating
it means upgrading the package.

Both sections of the list are used, the ICANN one and the private one (github.io, ...). BR 1.6.1
defines the Base Domain Name as the label left of a "registry-controlled or public suffix", and
BR 3.2.2.4 lets a CA prune labels only down to it: with the private section too, nobody can
approve `user.github.io` through `admin@github.io`. Names under an unknown top-level label
(`example.test`) get the list's default rule `*`, so `example.test` is their registrable domain.
"""

from __future__ import annotations

import functools
from ipaddress import ip_address

from publicsuffixlist import PublicSuffixList


@functools.cache
def _psl() -> PublicSuffixList:
    # Parsing the bundled list takes a moment; do it once, on first use.
    return PublicSuffixList()


def _host(name: str) -> str | None:
    """Lower-case, without a trailing dot or a leading `*.`; None for an IP or an empty name."""
    host = name.strip().lower().rstrip(".")
    host = host.removeprefix("*.")
    if not host or host.startswith(".") or ".." in host:
        return None
    try:
        ip_address(host.strip("[]"))
    except ValueError:
        return host
    return None


def registrable_domain(name: str) -> str | None:
    """The eTLD+1 of `name` ("shop.example.co.uk" → "example.co.uk"); a wildcard counts as its
    base. None when `name` is a public suffix itself ("co.uk"), an IP address or empty."""
    host = _host(name)
    if host is None:
        return None
    found: str | None = _psl().privatesuffix(host)
    return found


def is_public_suffix(name: str) -> bool:
    """True for a public suffix ("com", "co.uk", "github.io"); False for IPs and other names."""
    host = _host(name)
    return host is not None and bool(_psl().is_public(host))


def parents_to_registrable(name: str) -> list[str]:
    """`name` (the base of a wildcard) and each parent down to its registrable domain, nearest
    first ("a.shop.example.co.uk" → [itself, "shop.example.co.uk", "example.co.uk"]). Empty for
    a public suffix or an IP: such a name has no Authorization Domain Name (BR 3.2.2.4)."""
    host = _host(name)
    if host is None:
        return []
    base = registrable_domain(host)
    if base is None:
        return []
    labels = host.split(".")
    keep = len(base.split("."))
    return [".".join(labels[i:]) for i in range(len(labels) - keep + 1)]
