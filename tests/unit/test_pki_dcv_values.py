from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certbroker.pki.csr import build_csr, parse_csr
from certbroker.pki.dcv_values import (
    CsrHashes,
    csr_hashes,
    dns_host,
    dns_value,
    file_content,
    file_content_matches,
    file_name,
)

# Values captured from a live Sectigo order (SPEC Appendix C).
CAPTURED = CsrHashes(
    md5="148ecc23d64f50cdcca4f0daf72a9a4b",
    sha256="f7b3b82e12a4b76d0532898e04fde790c5325e133b17373ff31c17d9f84393b7",
)


def test_captured_example() -> None:
    assert file_name(CAPTURED) == "148ECC23D64F50CDCCA4F0DAF72A9A4B.txt"
    assert dns_host(CAPTURED) == "_148ecc23d64f50cdcca4f0daf72a9a4b"
    assert dns_value(CAPTURED, None) == (
        "f7b3b82e12a4b76d0532898e04fde790.c5325e133b17373ff31c17d9f84393b7.sectigo.com"
    )
    # File name and DNS host carry the same MD5, only the case differs.
    assert file_name(CAPTURED).removesuffix(".txt").lower() == dns_host(CAPTURED)[1:]


def test_file_content_and_unique_value() -> None:
    assert file_content(CAPTURED, None) == CAPTURED.sha256 + "\nsectigo.com"
    assert file_content(CAPTURED, "") == CAPTURED.sha256 + "\nsectigo.com"
    assert file_content(CAPTURED, "abc123XYZ", "comodoca.com") == (
        CAPTURED.sha256 + "\ncomodoca.com\nabc123XYZ"
    )
    assert dns_value(CAPTURED, "u1q2", "ca.test") == (
        "f7b3b82e12a4b76d0532898e04fde790.c5325e133b17373ff31c17d9f84393b7.u1q2.ca.test"
    )


@pytest.mark.parametrize("bad", ["has space", "a" * 21, "dot.ted", "ünï"])
def test_unique_value_syntax(bad: str) -> None:
    with pytest.raises(ValueError, match="must be 1-20 letters or digits"):
        file_content(CAPTURED, bad)
    with pytest.raises(ValueError, match="must be 1-20 letters or digits"):
        dns_value(CAPTURED, bad)


def test_hashes_of_a_real_csr() -> None:
    parsed = build_csr(ec.generate_private_key(ec.SECP256R1()), ["dcv.example.com"])
    h = csr_hashes(parsed.der)
    assert h.md5 == hashlib.md5(parsed.der).hexdigest()  # noqa: S324 - reference value
    assert h.sha256 == hashlib.sha256(parsed.der).hexdigest()
    assert h.md5 == h.md5.lower() and len(h.md5) == 32
    assert len(h.sha256) == 64
    # The hash is of the DER, so line endings of the submitted PEM do not change it.
    reparsed = parse_csr(parsed.pem.replace("\n", "\r\n"))
    assert csr_hashes(reparsed.der) == h
    assert dns_value(h, None).split(".")[:2] == [h.sha256[:32], h.sha256[32:]]


@pytest.mark.parametrize(
    "body",
    [
        CAPTURED.sha256 + "\nsectigo.com\nUnique1",
        CAPTURED.sha256 + "\r\nsectigo.com\r\nUnique1\r\n",
        CAPTURED.sha256.upper() + "  \nSECTIGO.COM\t\nunique1\n\n\n",
        "\ufeff" + CAPTURED.sha256 + "\nsectigo.com\nUnique1",
    ],
)
def test_file_content_matches_tolerates(body: str) -> None:
    assert file_content_matches(body, file_content(CAPTURED, "Unique1"))


@pytest.mark.parametrize(
    "body",
    [
        "",
        CAPTURED.sha256,
        CAPTURED.sha256 + "\nsectigo.com",  # uniqueValue missing
        CAPTURED.sha256 + "\ncomodoca.com\nUnique1",
        CAPTURED.sha256[:-1] + "0\nsectigo.com\nUnique1",
        CAPTURED.sha256 + "\nsectigo.com\nUnique1\nextra",
        "\n" + CAPTURED.sha256 + "\nsectigo.com\nUnique1",  # leading empty line
        " " + CAPTURED.sha256 + "\nsectigo.com\nUnique1",  # leading whitespace is not stripped
        CAPTURED.sha256 + "\n\nsectigo.com\nUnique1",
    ],
)
def test_file_content_matches_rejects(body: str) -> None:
    assert not file_content_matches(body, file_content(CAPTURED, "Unique1"))
