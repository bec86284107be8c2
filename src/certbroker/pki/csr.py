"""Parsing and building PKCS#10 certificate signing requests (RFC 2986).

:func:`parse_csr` is the single gate for CSRs coming from resellers: every failure becomes a
:class:`CsrError` whose message can be shown to the reseller as is.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .keys import PrivateKey, PublicKey, describe_key
from .names import NameSyntaxError, classify_name, normalize_name
from .text import quoted, safe_text

MAX_CSR_PEM_BYTES: Final = 32 * 1024
# RFC 5280 Appendix A: ub-common-name INTEGER ::= 64
MAX_COMMON_NAME_LENGTH: Final = 64

_CSR_LABELS: Final = ("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST")
_BEGIN: Final = re.compile(r"-----BEGIN ([^-\n]*)-----")
# BR 7.1.3.2 forbids MD5 and SHA-1 signatures; a CSR signed with them proves nothing.
_WEAK_HASHES: Final = {"md5": "MD5", "sha1": "SHA-1"}


class CsrError(ValueError):
    """A CSR is unusable; the message says why, for the reseller."""


@dataclass(frozen=True)
class ParsedCsr:
    """A CSR that passed every check of :func:`parse_csr`.

    ``common_name`` is the normalized subject CN. ``dns_names`` and ``ip_addresses`` are the
    normalized subjectAltName entries (other SAN types, such as e-mail, are ignored).
    ``names`` is every requested name: CN first, then the SANs, without duplicates.
    """

    pem: str
    der: bytes
    common_name: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    names: tuple[str, ...]
    key_description: str
    public_key: PublicKey
    signature_hash: str


def _der_to_pem(der: bytes) -> str:
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + "\n".join(lines)
        + ("\n-----END CERTIFICATE REQUEST-----\n")
    )


def _extract_der(text: str) -> bytes:
    """Find the single PEM block and base64-decode its body."""
    blocks = _BEGIN.findall(text)
    if not blocks:
        raise CsrError("no PEM block found; expected -----BEGIN CERTIFICATE REQUEST-----")
    labels = [b.strip() for b in blocks]
    if len(labels) > 1:
        raise CsrError(
            f"expected exactly one PEM block, found {len(labels)} "
            f"({safe_text(', '.join(labels), 200)})"
        )
    label = labels[0]
    if label not in _CSR_LABELS:
        found = safe_text(label, 100) if label else "no label"
        raise CsrError(f"expected a CERTIFICATE REQUEST PEM block, found {found}")
    begin = f"-----BEGIN {blocks[0]}-----"
    end = f"-----END {blocks[0]}-----"
    start = text.index(begin) + len(begin)
    stop = text.find(end, start)
    if stop < 0:
        raise CsrError(f"CSR PEM block is truncated: the {end} line is missing")
    body = "".join(text[start:stop].split())
    if not body:
        raise CsrError("CSR PEM block is empty")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CsrError("CSR PEM body is not valid base64 (truncated or corrupted)") from exc


def _check_outer_length(der: bytes) -> None:
    """Tell truncation and trailing bytes apart from other DER damage (X.690 8.1.3)."""
    if len(der) < 2 or der[0] != 0x30:
        raise CsrError("CSR is not DER: it does not start with an ASN.1 SEQUENCE")
    first = der[1]
    if first < 0x80:
        header, length = 2, first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or len(der) < 2 + count:
            raise CsrError("CSR DER has an invalid length encoding")
        header, length = 2 + count, int.from_bytes(der[2 : 2 + count], "big")
    total = header + length
    if total > len(der):
        raise CsrError(
            f"CSR DER is truncated: it declares {total} bytes but only {len(der)} are present"
        )
    if total < len(der):
        raise CsrError(f"CSR DER has {len(der) - total} bytes of trailing data")


def _normalize(raw: str, where: str) -> str:
    try:
        return normalize_name(raw)
    except NameSyntaxError as exc:
        raise CsrError(f"CSR {where} {quoted(raw)} is not a valid name: {exc}") from exc


def _common_name(csr: x509.CertificateSigningRequest) -> str | None:
    attrs = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    if len(attrs) > 1:
        raise CsrError(f"CSR subject has {len(attrs)} common names; at most one is allowed")
    value = attrs[0].value
    if not isinstance(value, str):
        raise CsrError("CSR common name is not a text string")
    return _normalize(value, "common name")


def _san_entries(csr: x509.CertificateSigningRequest) -> tuple[list[str], list[str]]:
    try:
        extensions = csr.extensions
    except x509.DuplicateExtension as exc:
        raise CsrError(f"CSR requests the extension {exc.oid.dotted_string} twice") from exc
    except ValueError as exc:
        if "subject_alternative_name" in str(exc):
            raise CsrError("CSR subjectAltName extension does not parse") from exc
        raise CsrError("CSR extension request does not parse") from exc
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    dns: list[str] = []
    ips: list[str] = []
    for entry in san:
        if isinstance(entry, x509.DNSName):
            name = _normalize(entry.value, "subjectAltName DNS name")
            if classify_name(name) == "ip":
                raise CsrError(
                    f"CSR subjectAltName DNS name {quoted(entry.value)} is an IP address"
                )
            if name not in dns:
                dns.append(name)
        elif isinstance(entry, x509.IPAddress):
            if not isinstance(entry.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
                raise CsrError("CSR subjectAltName IP entry is a network, not an address")
            text = str(entry.value)
            if text not in ips:
                ips.append(text)
    return dns, ips


def _signature_hash(csr: x509.CertificateSigningRequest) -> str:
    try:
        algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        oid = csr.signature_algorithm_oid
        raise CsrError(f"CSR signature algorithm {oid.dotted_string} is not supported") from exc
    if algorithm is None:  # only for Ed25519/Ed448, rejected by the key policy before
        raise CsrError("CSR signature algorithm has no hash and is not supported")
    name = algorithm.name.lower()
    if name in _WEAK_HASHES:
        raise CsrError(
            f"CSR is signed with {_WEAK_HASHES[name]}; MD5 and SHA-1 signatures are not "
            "accepted (BR 7.1.3.2), sign it with SHA-256"
        )
    return name


def _public_key(csr: x509.CertificateSigningRequest) -> PublicKey:
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrError(
            "CSR public key algorithm is not supported; use RSA (2048-8192 bits) "
            "or ECDSA P-256/P-384"
        ) from exc
    # Sizes, curves and exponents are the key policy's (certbroker.policy.keys).
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise CsrError(f"{describe_key(key)} keys are not supported; use RSA or ECDSA")
    return key


def parse_csr(pem: str | bytes) -> ParsedCsr:
    """Parse and check a PEM CSR; raises :class:`CsrError` with a precise message."""
    # The size is checked before anything else touches the input.
    if isinstance(pem, bytes) or pem.isascii():
        size = len(pem)
    else:
        size = len(pem.encode("utf-8", "surrogatepass"))
    if size > MAX_CSR_PEM_BYTES:
        raise CsrError(f"CSR is {size} bytes; at most {MAX_CSR_PEM_BYTES} accepted")
    if isinstance(pem, bytes):
        try:
            text = pem.decode("ascii")
        except UnicodeDecodeError as exc:
            raise CsrError("CSR contains non-ASCII bytes") from exc
    else:
        text = pem
    # Some clients send the PEM JSON-escaped twice, with literal "\n" sequences; a backslash is
    # never part of PEM, so turning them back into line breaks cannot change a valid CSR.
    text = text.replace("\\r", "\r").replace("\\n", "\n")
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        raise CsrError("CSR is empty")

    der = _extract_der(text)
    _check_outer_length(der)
    try:
        csr = x509.load_der_x509_csr(der)
    except Exception as exc:  # cryptography raises ValueError and InvalidVersion here
        raise CsrError("CSR DER does not parse as a PKCS#10 certification request") from exc

    try:
        public_key = _public_key(csr)
        signature_hash = _signature_hash(csr)
        try:
            valid = csr.is_signature_valid
        except Exception as exc:
            raise CsrError("CSR signature does not verify") from exc
        if not valid:
            raise CsrError("CSR signature does not verify")
        common_name = _common_name(csr)
        dns_names, ip_addresses = _san_entries(csr)
    except CsrError:
        raise
    except Exception as exc:  # a CsrError must be the only thing that leaves this function
        raise CsrError(f"CSR could not be processed: {type(exc).__name__}") from exc

    names: list[str] = [] if common_name is None else [common_name]
    for name in (*dns_names, *ip_addresses):
        if name not in names:
            names.append(name)
    if not names:
        raise CsrError(
            "CSR names no domain: it has no common name and no subjectAltName DNS or IP entries"
        )

    return ParsedCsr(
        pem=_der_to_pem(der),
        der=der,
        common_name=common_name,
        dns_names=tuple(dns_names),
        ip_addresses=tuple(ip_addresses),
        names=tuple(names),
        key_description=describe_key(public_key),
        public_key=public_key,
        signature_hash=signature_hash,
    )


def build_csr(key: PrivateKey, names: Sequence[str]) -> ParsedCsr:
    """Build a SHA-256 signed CSR for ``names`` (the first one also becomes the CN if it fits)."""
    if isinstance(names, str):
        raise TypeError("names must be a sequence of names, not a single string")
    normalized: list[str] = []
    for raw in names:
        name = _normalize(raw, "name")
        if name not in normalized:
            normalized.append(name)
    if not normalized:
        raise CsrError("cannot build a CSR without names")

    general_names: list[x509.GeneralName] = []
    for name in normalized:
        if classify_name(name) == "ip":
            general_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        else:
            general_names.append(x509.DNSName(name))
    subject: list[x509.NameAttribute[str]] = []
    if len(normalized[0]) <= MAX_COMMON_NAME_LENGTH:
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, normalized[0]))

    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
    )
    request = builder.sign(key, hashes.SHA256())
    return parse_csr(request.public_bytes(serialization.Encoding.PEM).decode("ascii"))
