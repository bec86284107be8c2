"""The built-in CA: a production root and TLS issuing intermediate, and a sandbox pair.

Files in the CA directory (mode 0o700): root.pem/root.key, intermediate.pem/intermediate.key,
sandbox-root.pem/sandbox-root.key, sandbox-intermediate.pem/sandbox-intermediate.key. The
sandbox has a root of its own so that its certificates, issued without domain validation, never
chain to the production root. Key files are mode 0o600 from the moment
they exist. Profiles follow CA/B Forum Baseline Requirements 7.1.2.1 (root) and 7.1.2.6 /
7.1.2.10 (TLS subordinate CA operated by the root's owner, i.e. an Affiliate).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    CertificatePoliciesOID,
    ExtendedKeyUsageOID,
    NameOID,
)

from certbroker.issuance.profile import new_serial

IssuerName = Literal["production", "sandbox"]
CaName = Literal["root", "sandbox-root", "production", "sandbox"]
CaPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# File stem of each CA in the CA directory and in its public URLs.
FILE_STEMS: dict[CaName, str] = {
    "root": "root",
    "sandbox-root": "sandbox-root",
    "production": "intermediate",
    "sandbox": "sandbox-intermediate",
}
# The sandbox has a root of its own: its certificates skip domain validation, so nothing that
# trusts the production root may ever trust them.
ROOT_OF: dict[IssuerName, CaName] = {"production": "root", "sandbox": "sandbox-root"}
CA_FILES: tuple[str, ...] = tuple(
    f"{stem}.{ext}" for stem in FILE_STEMS.values() for ext in ("key", "pem")
)

# Public paths served by certbroker under CERTBROKER_PUBLIC_URL (DER certificate, DER CRL, OCSP).
CA_CERT_PATH = "/ca/{stem}.der"
CRL_PATH = "/crl/{stem}.crl"
OCSP_PATH = "/ocsp/{stem}"

ROOT_VALIDITY = timedelta(days=7305)  # 20 years; BR 7.1.2.1.1 allows 2922 to 9132 days
INTERMEDIATE_VALIDITY = timedelta(days=2922)  # 8 years
DEFAULT_COUNTRY = "US"

_KEY_MODE = 0o600
_CERT_MODE = 0o644
_DIR_MODE = 0o700


@dataclass(frozen=True)
class CaEndpoints:
    """Where relying parties fetch a CA's certificate, its CRL and OCSP answers."""

    cert_url: str
    crl_url: str
    ocsp_url: str


@dataclass(frozen=True)
class Issuer:
    """An issuing intermediate, loaded once and kept in memory by the caller."""

    name: IssuerName
    certificate: x509.Certificate
    key: CaPrivateKey
    chain_pem: str  # the intermediate only: what the API returns as caCertificate
    root_pem: str
    crl_url: str
    ocsp_url: str
    ca_issuers_url: str


def http_base_url(public_url: str) -> str:
    """`public_url` with the http scheme: BR 7.1.2.7.7 and 7.1.2.11.2 require http:// URLs in
    AIA and CRL distribution points (an https fetch would need revocation checking itself)."""
    parts = urlsplit(public_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"public URL {public_url!r} must be an absolute http:// or https:// URL")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"public URL {public_url!r} must not have credentials, query or fragment")
    return urlunsplit(("http", parts.netloc, parts.path.rstrip("/"), "", ""))


def ca_endpoints(public_url: str, which: CaName) -> CaEndpoints:
    base = http_base_url(public_url)
    stem = FILE_STEMS[which]
    return CaEndpoints(
        cert_url=base + CA_CERT_PATH.format(stem=stem),
        crl_url=base + CRL_PATH.format(stem=stem),
        ocsp_url=base + OCSP_PATH.format(stem=stem),
    )


def is_initialized(ca_dir: Path) -> bool:
    return all((ca_dir / name).is_file() for name in CA_FILES)


def _ca_name(country: str, organization: str, common_name: str) -> x509.Name:
    # BR 7.1.2.10.2: C, O and CN, in the order of BR 7.1.4.2, one attribute per RDN.
    return x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, country)]),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
            ),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
        ]
    )


def _ca_key_usage(*, digital_signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _build_root(
    key: ec.EllipticCurvePrivateKey, name: x509.Name, now: datetime
) -> x509.Certificate:
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)  # BR 7.1.2.1: byte-identical to the subject
        .public_key(key.public_key())
        .serial_number(new_serial())
        .not_valid_before(now)
        .not_valid_after(now + ROOT_VALIDITY - timedelta(seconds=1))
        # BR 7.1.2.1.4: cA true, no pathLenConstraint.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        # BR 7.1.2.1.2: keyCertSign and cRLSign; no EKU, no policies, no AIA, no CRL DP.
        .add_extension(_ca_key_usage(digital_signature=False), critical=True)
        .add_extension(ski, critical=False)
        # BR 7.1.2.1.3: AKI keyIdentifier equal to the SKI.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA384())
    )


def _build_intermediate(
    *,
    key: ec.EllipticCurvePrivateKey,
    name: x509.Name,
    root: x509.Certificate,
    root_key: ec.EllipticCurvePrivateKey,
    root_endpoints: CaEndpoints,
    now: datetime,
) -> x509.Certificate:
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(new_serial())
        .not_valid_before(now)
        .not_valid_after(now + INTERMEDIATE_VALIDITY - timedelta(seconds=1))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
            critical=False,
        )
        # BR 7.1.2.10.4: pathLenConstraint 0, this CA issues only Subscriber certificates.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        # BR 7.1.2.10.5: an Affiliate's TLS CA may assert anyPolicy; one intermediate then
        # issues DV, OV and EV leaves (reserved OIDs would allow only one of them).
        .add_extension(
            x509.CertificatePolicies(
                [x509.PolicyInformation(CertificatePoliciesOID.ANY_POLICY, None)]
            ),
            critical=False,
        )
        # BR 7.1.2.10.3 / 7.1.2.11.2: the root's certificate and CRL over http.
        .add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(root_endpoints.crl_url)],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(root_endpoints.cert_url),
                    )
                ]
            ),
            critical=False,
        )
        # BR 7.1.2.10.7: digitalSignature lets this CA sign its own OCSP responses.
        .add_extension(_ca_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # BR 7.1.2.10.6: a TLS CA asserts serverAuth.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(root_key, hashes.SHA384())
    )


def _key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    # With a passphrase: encrypted PKCS#8 (PBES2, the best scheme cryptography offers).
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _publish(directory: Path, name: str, data: bytes, mode: int) -> None:
    """Write `directory/name` atomically: a fresh temporary file created with its final mode
    (so a key is never readable by others, even briefly), synced, then hard-linked into
    place, which unlike rename fails instead of replacing an existing file."""
    tmp = directory / f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, directory / name)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_hierarchy(
    ca_dir: Path,
    *,
    public_url: str,
    now: datetime,
    organization: str = "certbroker",
    country: str = DEFAULT_COUNTRY,
    passphrase: bytes | None = None,
) -> None:
    """Create the root and both intermediates (ECDSA P-384) in `ca_dir`.

    With `passphrase` the key files are encrypted with it (they are 0600 either way).

    Refuses to touch a directory that already holds any CA file. Concurrent callers are safe:
    files are published in a fixed order without overwriting, so only one caller succeeds.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    now = now.replace(microsecond=0)
    if len(country) != 2 or not country.isascii() or not country.isupper():
        raise ValueError(f"country must be a two-letter ISO 3166-1 code, got {country!r}")
    if not organization.strip() or len(organization) > 64:
        raise ValueError(f"organization {organization!r} must be 1 to 64 characters")
    names = {
        "root": f"{organization} Root CA",
        "production": f"{organization} TLS Issuing CA",
        "sandbox-root": f"{organization} SANDBOX Root CA - NOT TRUSTED",
        "sandbox": f"{organization} SANDBOX TLS Issuing CA - NOT TRUSTED",
    }
    if any(len(cn) > 64 for cn in names.values()):
        raise ValueError(
            f"organization {organization!r} is too long: CA common names are limited to 64 "
            "characters"
        )
    ca_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(ca_dir, _DIR_MODE)
    present = [name for name in CA_FILES if (ca_dir / name).exists()]
    if present:
        raise FileExistsError(
            f"CA directory {ca_dir} already holds {', '.join(present)}; refusing to overwrite"
        )

    outputs: list[tuple[str, bytes, int]] = []
    issuers: tuple[IssuerName, ...] = ("production", "sandbox")
    for which in issuers:
        root_name = ROOT_OF[which]
        root_key = ec.generate_private_key(ec.SECP384R1())
        root = _build_root(root_key, _ca_name(country, organization, names[root_name]), now)
        outputs.append((f"{FILE_STEMS[root_name]}.key", _key_pem(root_key, passphrase), _KEY_MODE))
        outputs.append((f"{FILE_STEMS[root_name]}.pem", _cert_pem(root), _CERT_MODE))
        key = ec.generate_private_key(ec.SECP384R1())
        cert = _build_intermediate(
            key=key,
            name=_ca_name(country, organization, names[which]),
            root=root,
            root_key=root_key,
            root_endpoints=ca_endpoints(public_url, root_name),
            now=now,
        )
        stem = FILE_STEMS[which]
        outputs.append((f"{stem}.key", _key_pem(key, passphrase), _KEY_MODE))
        outputs.append((f"{stem}.pem", _cert_pem(cert), _CERT_MODE))
    for name, data, mode in outputs:
        _publish(ca_dir, name, data, mode)
    _fsync_dir(ca_dir)


def _read(ca_dir: Path, name: str) -> bytes:
    path = ca_dir / name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"CA file {path} is missing; the CA directory is not initialized"
        ) from None


def _load_cert(ca_dir: Path, name: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(ca_dir, name))
    except ValueError as exc:
        raise ValueError(f"CA file {ca_dir / name} is not a PEM certificate: {exc}") from None


def _load_key(ca_dir: Path, name: str, passphrase: bytes | None = None) -> CaPrivateKey:
    data = _read(ca_dir, name)
    encrypted = (
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data
    )
    path = ca_dir / name
    if encrypted and not passphrase:
        raise ValueError(f"CA key {path} is encrypted; set CERTBROKER_CA_KEY_PASSPHRASE")
    if not encrypted and passphrase:
        raise ValueError(
            f"CA key {path} is not encrypted but CERTBROKER_CA_KEY_PASSPHRASE is set; encrypt "
            "the key files with it (see docs/SETTINGS.md) or unset it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except (ValueError, TypeError) as exc:
        if encrypted:  # the library's message does not help more than this
            raise ValueError(
                f"CA key {path} could not be decrypted with CERTBROKER_CA_KEY_PASSPHRASE"
            ) from None
        raise ValueError(f"CA file {path} is not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"CA file {ca_dir / name} holds a {type(key).__name__}; need EC or RSA")
    return key


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_issuer(
    ca_dir: Path, which: IssuerName, public_url: str, passphrase: bytes | None = None
) -> Issuer:
    """Load an issuing intermediate, checking that its key matches and the root signed it."""
    if which not in ("production", "sandbox"):
        raise ValueError(f"unknown issuer {which!r}; expected 'production' or 'sandbox'")
    stem = FILE_STEMS[which]
    root_file = f"{FILE_STEMS[ROOT_OF[which]]}.pem"
    root = _load_cert(ca_dir, root_file)
    cert = _load_cert(ca_dir, f"{stem}.pem")
    key = _load_key(ca_dir, f"{stem}.key", passphrase)
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise ValueError(f"CA key {stem}.key does not match certificate {stem}.pem in {ca_dir}")
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise ValueError(
            f"CA certificate {stem}.pem in {ca_dir} is not issued by {root_file}"
        ) from None
    endpoints = ca_endpoints(public_url, which)
    return Issuer(
        name=which,
        certificate=cert,
        key=key,
        chain_pem=_cert_pem(cert).decode("ascii"),
        root_pem=_cert_pem(root).decode("ascii"),
        crl_url=endpoints.crl_url,
        ocsp_url=endpoints.ocsp_url,
        ca_issuers_url=endpoints.cert_url,
    )
