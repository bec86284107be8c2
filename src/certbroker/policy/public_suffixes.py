"""The Public Suffix List: registrable domains and the suffixes under which a CA may certify.

The list comes with the `publicsuffixlist` package, so a check never downloads it (a network
failure or a tampered download must not change what may be certified or who may approve a
name). The operator keeps it current without a release of certbroker in either of two ways:
upgrading the package (`pip install -U publicsuffixlist`, a new list every few weeks), or
pointing the `PUBLIC_SUFFIX_LIST` setting at a newer `public_suffix_list.dat`, read at start-up
(`use_list_file`).

Two readings of the list serve two rules:
- Both sections (ICANN and private, e.g. github.io) bound the Base Domain Name (BR 1.6.1) used
  for approver addresses and CAA (BR 3.2.2.4 prunes labels only down to it), so nobody approves
  `user.github.io` through `admin@github.io`; and no public suffix of either section is
  certified itself or as a wildcard's base (BR 3.2.2.6).
- The ICANN section alone says which top-level domains exist: a name whose suffix is not in it
  (`.corp`, `.lan`, a typo) is an Internal Name (BR 4.2.2, 7.1.2.7.12).
"""

from __future__ import annotations

import functools
from ipaddress import ip_address
from pathlib import Path

from publicsuffixlist import PSLFILE, PublicSuffixList

_source: Path = Path(PSLFILE)


def use_list_file(path: Path | None) -> None:
    """Read the list from `path` from now on (None: the package's bundled list). The file is
    parsed first: one that does not parse raises and changes nothing."""
    global _source
    new = Path(path) if path is not None else Path(PSLFILE)
    _parsed(new)
    _source = new


def list_file() -> Path:
    return _source


@functools.cache
def _parsed(path: Path) -> tuple[PublicSuffixList, PublicSuffixList]:
    """(both sections, ICANN only); unknown TLDs are not suffixes in the ICANN-only reading."""
    text = path.read_text("utf-8")
    if "===BEGIN ICANN DOMAINS===" not in text:
        raise ValueError(f"{path} is not a Public Suffix List (no ICANN section marker)")
    both = PublicSuffixList(text.splitlines())
    icann = PublicSuffixList(text.splitlines(), only_icann=True, accept_unknown=False)
    return both, icann


def _lists() -> tuple[PublicSuffixList, PublicSuffixList]:
    return _parsed(_source)


def _psl() -> PublicSuffixList:
    return _lists()[0]


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
    """True for a public suffix of either section ("com", "co.uk", "github.io")."""
    host = _host(name)
    return host is not None and bool(_psl().is_public(host))


def public_suffix(name: str) -> str | None:
    """The longest public suffix of either section that ends `name` ("a.github.io" →
    "github.io"); an unknown TLD counts as one (the list's default rule `*`)."""
    host = _host(name)
    return None if host is None else _psl().publicsuffix(host)


def icann_suffix(name: str) -> str | None:
    """The ICANN-section public suffix that ends `name`, None when its TLD is not in that
    section (an Internal Name, BR 7.1.2.7.12)."""
    host = _host(name)
    if host is None:
        return None
    found: str | None = _lists()[1].publicsuffix(host)
    return found


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
