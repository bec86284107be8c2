"""Syntax of the names a TLS certificate may carry: DNS names, wildcards and IP addresses.

Only syntax lives here; which names a product or policy allows (public suffixes, private IP
ranges, ...) is decided elsewhere.

Internationalised names follow IDNA 2008 (RFC 5890-5893) with the UTS 46 mapping, through the
`idna` package: U-labels are mapped (case, full-width dots) and converted to A-labels, and an
A-label is accepted only when it decodes to a valid IDNA 2008 U-label and encodes back to
itself. Names are carried as A-labels everywhere after this point (RFC 5280 7.2, BR 7.1.2.7.12).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final, Literal

import idna

from .text import quoted, safe_text

NameKind = Literal["dns", "wildcard", "ip"]

MAX_NAME_LENGTH: Final = 253  # RFC 1035 2.3.4: 255 octets on the wire = 253 text characters
MAX_LABEL_LENGTH: Final = 63  # RFC 1035 2.3.4

# Letters, digits and hyphens (RFC 1034 3.5 "preferred name syntax", RFC 5280 4.2.1.6).
# Underscores are not allowed in dNSName entries (BR 7.1.2.7.12).
_LDH_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


class NameSyntaxError(ValueError):
    """A domain name or IP address is syntactically invalid."""


def _to_a_labels(text: str) -> str:
    """UTS 46 mapping and IDNA 2008 conversion of a name with non-ASCII characters."""
    try:
        return idna.encode(text, uts46=True, transitional=False).decode("ascii")
    except idna.IDNAError as exc:
        raise NameSyntaxError(
            f"{quoted(text)} is not a valid IDNA 2008 name ({safe_text(str(exc))})"
        ) from exc


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        raise NameSyntaxError(
            f"{quoted(text)}: an IPv6 zone id (%...) is not allowed in a certificate"
        )
    return ip


def normalize_name(raw: str) -> str:
    """Canonical form of a requested name, validated with :func:`classify_name`.

    Strips surrounding whitespace and one trailing dot, lower-cases, converts U-labels to
    A-labels (IDNA 2008 with UTS 46 mapping) and writes IP addresses in their canonical text
    form (``2001:DB8:0::1`` -> ``2001:db8::1``).
    """
    text = raw.strip()
    if not text:
        raise NameSyntaxError("name is empty")
    ip = _parse_ip(text)
    if ip is not None:
        return str(ip)
    if not text.isascii():
        wildcard = text.startswith("*.")
        text = ("*." if wildcard else "") + _to_a_labels(text[2:] if wildcard else text)
    text = text.lower()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise NameSyntaxError(f"{quoted(raw.strip())} is not a domain name")
    name = text
    classify_name(name)
    return name


def _check_label(label: str, name: str) -> None:
    if not label:
        raise NameSyntaxError(f"{quoted(name)} has an empty label")
    if len(label) > MAX_LABEL_LENGTH:
        raise NameSyntaxError(
            f"{quoted(name)}: label {quoted(label[:20])}... is {len(label)} characters; "
            f"at most {MAX_LABEL_LENGTH} allowed (RFC 1035 2.3.4)"
        )
    if label.startswith("-") or label.endswith("-"):
        raise NameSyntaxError(
            f"{quoted(name)}: label {quoted(label)} starts or ends with a hyphen (RFC 1034 3.5)"
        )
    if not _LDH_LABEL.fullmatch(label):
        bad = next((c for c in label if not (c.isascii() and (c.isalnum() or c == "-"))), "?")
        raise NameSyntaxError(
            f"{quoted(name)}: label {quoted(label)} contains {quoted(bad)}; only letters, "
            "digits and hyphens are allowed (RFC 1034 3.5, BR 7.1.2.7.12)"
        )
    if label.startswith("xn--"):
        # An A-label must decode to a valid IDNA 2008 U-label and encode back to itself
        # (RFC 5891 5.4; BR 7.1.2.7.12 calls other xn-- labels Fake A-labels).
        try:
            valid = idna.encode(idna.decode(label)).decode("ascii") == label
        except (idna.IDNAError, UnicodeError):
            valid = False
        if not valid:
            raise NameSyntaxError(
                f"{quoted(name)}: label {quoted(label)} is not a valid IDNA 2008 A-label "
                "(RFC 5891 5.4)"
            )
    elif label[2:4] == "--":
        # RFC 5891 4.2.3.1: hyphens in positions 3-4 are reserved for IDNA prefixes.
        raise NameSyntaxError(
            f"{quoted(name)}: label {quoted(label)} has ‘--’ in positions 3-4, which is reserved "
            "for IDNA (RFC 5891 4.2.3.1)"
        )


def classify_name(name: str) -> NameKind:
    """Kind of an already normalized name; raises :class:`NameSyntaxError` when invalid."""
    if not name:
        raise NameSyntaxError("name is empty")
    ip = _parse_ip(name)
    if ip is not None:
        if str(ip) != name:
            raise NameSyntaxError(
                f"{quoted(name)} is not normalized (canonical form is {quoted(str(ip))})"
            )
        return "ip"
    if name != name.lower() or name != name.strip():
        raise NameSyntaxError(f"{quoted(name)} is not normalized")
    if len(name) > MAX_NAME_LENGTH:
        raise NameSyntaxError(
            f"name is {len(name)} characters; at most {MAX_NAME_LENGTH} allowed (RFC 1035 2.3.4)"
        )
    labels = name.split(".")
    kind: NameKind = "dns"
    if labels[0] == "*":
        # RFC 6125 6.4.3 / BR 3.2.2.6: the wildcard is the whole leftmost label, and it may not
        # stand directly above a top-level domain.
        kind = "wildcard"
        labels = labels[1:]
        if len(labels) < 2:
            raise NameSyntaxError(
                f"{quoted(name)}: a wildcard needs at least two labels after ‘*.’ (BR 3.2.2.6)"
            )
    elif "*" in name:
        raise NameSyntaxError(
            f"{quoted(name)}: ‘*’ is only allowed as the whole leftmost label, as in "
            "‘*.example.com’ (RFC 6125 6.4.3)"
        )
    if len(labels) < 2:
        raise NameSyntaxError(f"{quoted(name)} is not a fully qualified domain name (needs a dot)")
    for label in labels:
        _check_label(label, name)
    if labels[-1].isdigit():
        raise NameSyntaxError(
            f"{quoted(name)}: the top-level label {quoted(labels[-1])} is all-numeric "
            "(RFC 3696 2; not a valid IP address either)"
        )
    return kind


def base_domain_of_wildcard(name: str) -> str:
    """``"*.a.com"`` -> ``"a.com"``."""
    if not name.startswith("*."):
        raise NameSyntaxError(f"{quoted(name)} is not a wildcard name")
    return name[2:]
