"""Sectigo-style domain control validation values derived from the CSR (SPEC Appendix C).

Both hashes are taken over the DER encoding of the CSR:

- file method (BR 3.2.2.4.18 "Agreed-Upon Change to Website v2"):
  ``/.well-known/pki-validation/<MD5 upper-case>.txt`` containing
  ``<sha256>\\n<ca domain>[\\n<uniqueValue>]``;
- DNS method (BR 3.2.2.4.7 "DNS Change"): CNAME ``_<md5 lower-case>.<domain>`` pointing to
  ``<sha256[0:32]>.<sha256[32:64]>[.<uniqueValue>].<ca domain>``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

DEFAULT_CA_DOMAIN: Final = "sectigo.com"
# SPEC 3.1: uniqueValue is 1-20 characters [a-zA-Z0-9].
_UNIQUE_VALUE: Final = re.compile(r"[A-Za-z0-9]{1,20}")


@dataclass(frozen=True)
class CsrHashes:
    """Lower-case hex digests of the DER CSR."""

    md5: str
    sha256: str


def csr_hashes(der: bytes) -> CsrHashes:
    # MD5 is not used for security here: it only names the file/record, as the CA convention does.
    return CsrHashes(
        md5=hashlib.md5(der, usedforsecurity=False).hexdigest(),
        sha256=hashlib.sha256(der).hexdigest(),
    )


def _unique(unique_value: str | None) -> str | None:
    if not unique_value:
        return None
    if not _UNIQUE_VALUE.fullmatch(unique_value):
        raise ValueError(f"uniqueValue {unique_value!r} must be 1-20 letters or digits")
    return unique_value


def file_name(h: CsrHashes) -> str:
    return h.md5.upper() + ".txt"


def file_content(h: CsrHashes, unique_value: str | None, ca_domain: str = DEFAULT_CA_DOMAIN) -> str:
    lines = [h.sha256, ca_domain]
    unique = _unique(unique_value)
    if unique is not None:
        lines.append(unique)
    return "\n".join(lines)


def dns_host(h: CsrHashes) -> str:
    """Record name relative to the validated domain."""
    return "_" + h.md5.lower()


def dns_value(h: CsrHashes, unique_value: str | None, ca_domain: str = DEFAULT_CA_DOMAIN) -> str:
    sha = h.sha256.lower()
    parts = [sha[0:32], sha[32:64]]
    unique = _unique(unique_value)
    if unique is not None:
        parts.append(unique)
    parts.append(ca_domain)
    return ".".join(parts)


def _lines(text: str) -> list[str]:
    text = text.removeprefix("\ufeff")  # a BOM left by Windows editors
    lines = [line.rstrip().lower() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def file_content_matches(body: str, expected: str) -> bool:
    """Whether a fetched validation file says what :func:`file_content` produced.

    Tolerated: CRLF line ends, whitespace at line ends, trailing empty lines and a leading BOM.
    Every line is compared case-insensitively: the hex hash because its case carries no
    meaning, the CA domain because domain names are case-insensitive, and the uniqueValue for
    simplicity (it sits beside a 256-bit hash, so case adds nothing to the proof of control).
    """
    return _lines(body) == _lines(expected)
