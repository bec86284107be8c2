"""The Subscriber Server certificate profile (CA/B Forum Baseline Requirements 7.1.2.7)."""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from certbroker.issuance.validity import max_leaf_validity, validity_period
from certbroker.pki.names import classify_name
from certbroker.policy.keys import WeakKeyList, check_key
from certbroker.policy.names import DEFAULT_POLICY, NamePolicy, check_name

if TYPE_CHECKING:
    from certbroker.issuance.hierarchy import Issuer

ValidationLevel = Literal["dv", "ov", "ev"]
SubjectPublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
GeneralNameEntry = x509.DNSName | x509.IPAddress

# BR 7.1.2.7.9: exactly one reserved policy OID, matching the validation level.
POLICY_OIDS: dict[str, x509.ObjectIdentifier] = {
    "dv": x509.ObjectIdentifier("2.23.140.1.2.1"),
    "ov": x509.ObjectIdentifier("2.23.140.1.2.2"),
    "ev": x509.ObjectIdentifier("2.23.140.1.1"),
}

# EV Guidelines 9.2.3.
EV_BUSINESS_CATEGORIES = frozenset(
    {"Private Organization", "Government Entity", "Business Entity", "Non-Commercial Entity"}
)

# X.520 upper bounds (RFC 5280 Appendix A) for the attributes we emit.
_MAX_LENGTHS: dict[str, int] = {
    "organization name": 64,
    "state or province": 128,
    "locality": 128,
    "postal code": 40,
    "street address": 128,
    "registration number": 64,
}

_COUNTRY = re.compile(r"^[A-Z]{2}$")
_PRINTABLE = re.compile(r"^[A-Za-z0-9 '()+,\-./:=?]+$")  # X.680 PrintableString


@dataclass(frozen=True)
class SubjectOrganization:
    """The vetted organization (OV/EV); the last three fields are EV-only (EV Guidelines 9.2)."""

    name: str
    country: str
    state: str | None = None
    locality: str | None = None
    postal_code: str | None = None
    street: str | None = None
    registration_number: str | None = None
    jurisdiction_country: str | None = None
    business_category: str | None = None


def parse_validation_level(value: str) -> ValidationLevel:
    """Narrow a stored or submitted level ("dv", "ov", "ev") to ValidationLevel."""
    levels: dict[str, ValidationLevel] = {"dv": "dv", "ov": "ov", "ev": "ev"}
    if value in levels:
        return levels[value]
    raise ValueError(f"unknown validation level {value!r}; expected dv, ov or ev")


def new_serial() -> int:
    """A serial number from 127 CSPRNG bits: ≥ 64 random bits (BR 7.1), positive and at most
    20 octets once DER-encoded (RFC 5280 4.1.2.2)."""
    while True:
        serial = int.from_bytes(secrets.token_bytes(16), "big") & ~(1 << 127)
        if serial:
            return serial


def _general_names(
    names: Sequence[str], level: ValidationLevel, policy: NamePolicy
) -> tuple[list[GeneralNameEntry], list[str]]:
    """The SAN entries and their text forms, deduplicated, in the order given. Every name passes
    the name policy again (BR 7.1.2.7.12: no Internal Name, no Reserved IP Address), whatever
    path it came by."""
    entries: list[GeneralNameEntry] = []
    texts: list[str] = []
    for raw in names:
        text = check_name(raw, policy)
        entry: GeneralNameEntry
        if classify_name(text) == "ip":
            if level == "ev":
                raise ValueError(
                    f"EV certificates may contain DNS names only (EV Guidelines 9.8.1): {text}"
                )
            entry = x509.IPAddress(ipaddress.ip_address(text))
        else:
            if level == "ev" and text.startswith("*."):
                raise ValueError(
                    f"EV certificates cannot contain wildcard names (EV Guidelines 9.8.1): {text}"
                )
            entry = x509.DNSName(text)
        if text not in texts:
            texts.append(text)
            entries.append(entry)
    if not entries:
        raise ValueError("a certificate needs at least one name")
    return entries, texts


def _check_text(value: str | None, what: str, *, required: bool) -> str | None:
    if value is None or not value.strip():
        if required:
            raise ValueError(f"{what} is required")
        return None
    if value != value.strip():
        raise ValueError(f"{what} {value!r} has leading or trailing whitespace")
    limit = _MAX_LENGTHS.get(what)
    if limit is not None and len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters; at most {limit}")
    return value


def _check_country(value: str | None, what: str) -> str:
    if value is None or not _COUNTRY.match(value):
        raise ValueError(f"the {what} must be a two-letter ISO 3166-1 code, got {value!r}")
    return value


def _subject(
    level: ValidationLevel, org: SubjectOrganization | None, common_name: str | None
) -> x509.Name:
    """BR 7.1.2.7.2-4 and EV Guidelines 9.2; attribute order per BR 7.1.4.2."""
    attrs: list[x509.NameAttribute[str]] = []
    if level != "dv":
        if org is None:
            raise ValueError(f"{level.upper()} certificates need the subject organization")
        name = _check_text(org.name, "organization name", required=True)
        state = _check_text(org.state, "state or province", required=False)
        locality = _check_text(org.locality, "locality", required=False)
        country = _check_country(org.country, "organization's country")
        # BR 7.1.2.7.4 / EV Guidelines 9.2.6: at least one of stateOrProvince and locality.
        if state is None and locality is None:
            raise ValueError("the organization needs a state or province, a locality, or both")
        if level == "ev":
            number = _check_text(org.registration_number, "registration number", required=True)
            if number is not None and not _PRINTABLE.match(number):
                raise ValueError(
                    f"the registration number {number!r} has characters outside PrintableString"
                )
            jurisdiction = _check_country(org.jurisdiction_country, "jurisdiction country")
            if org.business_category not in EV_BUSINESS_CATEGORIES:
                allowed = ", ".join(sorted(EV_BUSINESS_CATEGORIES))
                raise ValueError(
                    f"business category {org.business_category!r} is not one of: {allowed}"
                )
            attrs += [
                x509.NameAttribute(NameOID.JURISDICTION_COUNTRY_NAME, jurisdiction),
                x509.NameAttribute(NameOID.BUSINESS_CATEGORY, org.business_category),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, str(number)),
            ]
        attrs.append(x509.NameAttribute(NameOID.COUNTRY_NAME, country))
        if state is not None:
            attrs.append(x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, state))
        if locality is not None:
            attrs.append(x509.NameAttribute(NameOID.LOCALITY_NAME, locality))
        # BR 7.1.2.7.4: postal code and street are NOT RECOMMENDED in OV; EVG 9.2.5 allows them.
        if level == "ev":
            postal = _check_text(org.postal_code, "postal code", required=False)
            street = _check_text(org.street, "street address", required=False)
            if postal is not None:
                attrs.append(x509.NameAttribute(NameOID.POSTAL_CODE, postal))
            if street is not None:
                attrs.append(x509.NameAttribute(NameOID.STREET_ADDRESS, street))
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(name)))
    if common_name is not None:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name([x509.RelativeDistinguishedName([a]) for a in attrs])


def signature_hash(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    """BR 7.1.3.2.2: the hash matching an ECDSA issuer's curve; SHA-256 for RSA issuers."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size > 384:
            return hashes.SHA512()
        if key.curve.key_size > 256:
            return hashes.SHA384()
    return hashes.SHA256()


def _check_validity(issuer: Issuer, not_before: datetime, not_after: datetime) -> None:
    for value, what in ((not_before, "notBefore"), (not_after, "notAfter")):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{what} must be a timezone-aware datetime")
    if not_after <= not_before:
        raise ValueError(
            f"notAfter {not_after.isoformat()} is not after notBefore {not_before.isoformat()}"
        )
    period = validity_period(not_before, not_after)
    limit = max_leaf_validity(not_before)
    if period > limit:
        raise ValueError(
            f"validity period of {period} exceeds the {limit.days}-day maximum in force on "
            f"{not_before.date().isoformat()} (BR 6.3.2)"
        )
    ca_not_after = issuer.certificate.not_valid_after_utc
    if not_after > ca_not_after:
        raise ValueError(
            f"notAfter {not_after.isoformat()} is after the issuing CA's notAfter "
            f"{ca_not_after.isoformat()}"
        )


def build_leaf(
    issuer: Issuer,
    *,
    serial: int,
    public_key: CertificatePublicKeyTypes,
    names: Sequence[str],
    not_before: datetime,
    not_after: datetime,
    validation_level: ValidationLevel,
    organization: SubjectOrganization | None,
    names_policy: NamePolicy = DEFAULT_POLICY,
    weak_keys: WeakKeyList | None = None,
) -> x509.Certificate:
    """Sign a TLS server certificate for `names` following BR 7.1.2.7.

    Raises ValueError, with a message fit for the API client, when an input breaks the profile
    or the issuance policy (NameRefused, KeyRefused).
    """
    builder = leaf_builder(
        issuer,
        serial=serial,
        public_key=public_key,
        names=names,
        not_before=not_before,
        not_after=not_after,
        validation_level=validation_level,
        organization=organization,
        names_policy=names_policy,
        weak_keys=weak_keys,
    )
    return builder.sign(issuer.key, signature_hash(issuer.key))


def leaf_builder(
    issuer: Issuer,
    *,
    serial: int,
    public_key: CertificatePublicKeyTypes,
    names: Sequence[str],
    not_before: datetime,
    not_after: datetime,
    validation_level: ValidationLevel,
    organization: SubjectOrganization | None,
    names_policy: NamePolicy = DEFAULT_POLICY,
    weak_keys: WeakKeyList | None = None,
) -> x509.CertificateBuilder:
    """build_leaf's to-be-signed certificate, checked, before any signature (pre-issuance
    linting signs it with a throwaway key first: issuance/prelint.py).

    Raises ValueError, with a message fit for the API client, when an input breaks the profile
    or the issuance policy (NameRefused, KeyRefused).
    """
    validation_level = parse_validation_level(validation_level)
    if not 0 < serial < 1 << 159:
        raise ValueError("serial number must be positive and fit in 20 octets (RFC 5280 4.1.2.2)")
    check_key(public_key, weak_keys=weak_keys)  # BR 6.1.1.3, 6.1.5, 6.1.6
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError(f"{type(public_key).__name__} keys are not allowed")  # pragma: no cover
    key: SubjectPublicKey = public_key
    # X.509 time has whole seconds; check the values that will actually be encoded.
    not_before = not_before.replace(microsecond=0)
    not_after = not_after.replace(microsecond=0)
    _check_validity(issuer, not_before, not_after)
    entries, texts = _general_names(names, validation_level, names_policy)

    # BR 7.1.4.3: commonName, if present, repeats one SAN entry; it cannot exceed 64 characters.
    # It is NOT RECOMMENDED (BR 7.1.2.7.2) but kept because reseller panels and older server
    # software still read the CN.
    common_name = texts[0] if len(texts[0]) <= 64 else None
    subject = _subject(validation_level, organization, common_name)

    issuer_ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        # RFC 5280 4.2.1.6: SAN is critical when the subject is empty.
        .add_extension(x509.SubjectAlternativeName(entries), critical=len(subject) == 0)
        .add_extension(
            # BR 7.1.2.7.11: digitalSignature only. keyEncipherment (RSA key transport, TLS 1.2
            # only) is allowed for RSA but discouraged alongside digitalSignature.
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # BR 7.1.2.7.10: serverAuth only (root programs forbid clientAuth in TLS server certs).
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value),
            critical=False,
        )
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(POLICY_OIDS[validation_level], None)]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(issuer.ocsp_url),
                    ),
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(issuer.ca_issuers_url),
                    ),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(issuer.crl_url)],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            critical=False,
        )
        # No subjectKeyIdentifier: BR 7.1.2.7.6 makes it NOT RECOMMENDED for Subscriber certs.
    )
    return builder
