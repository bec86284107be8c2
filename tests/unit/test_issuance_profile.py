from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
)

from certbroker.issuance.hierarchy import Issuer, create_hierarchy, load_issuer
from certbroker.issuance.profile import (
    SubjectOrganization,
    ValidationLevel,
    build_leaf,
    new_serial,
    parse_validation_level,
    signature_hash,
)
from certbroker.issuance.validity import leaf_not_after
from tests.helpers.pkilint_check import lint_chain, lint_leaf, openssl_verify

PUBLIC_URL = "https://certbroker.example.com"
SECOND = timedelta(seconds=1)

OV_ORG = SubjectOrganization(
    name="Example Widgets GmbH",
    country="DE",
    state="Berlin",
    locality="Berlin",
    postal_code="10117",
    street="Unter den Linden 1",
)
EV_ORG = SubjectOrganization(
    name="Example Widgets GmbH",
    country="DE",
    state="Berlin",
    locality="Berlin",
    postal_code="10117",
    street="Unter den Linden 1",
    registration_number="HRB 123456 B",
    jurisdiction_country="DE",
    business_category="Private Organization",
)

SubjectKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("profile") / "ca"
    # The CA starts a minute before the leaves, as in production where it is created first.
    created = datetime.now(UTC) - timedelta(minutes=1)
    create_hierarchy(directory, public_url=PUBLIC_URL, now=created)
    return directory


@pytest.fixture(scope="module")
def production(ca_dir: Path) -> Issuer:
    return load_issuer(ca_dir, "production", PUBLIC_URL)


@pytest.fixture(scope="module")
def sandbox(ca_dir: Path) -> Issuer:
    return load_issuer(ca_dir, "sandbox", PUBLIC_URL)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _issue(
    issuer: Issuer,
    key: SubjectKey | ed25519.Ed25519PrivateKey,
    names: Sequence[str],
    level: ValidationLevel = "dv",
    organization: SubjectOrganization | None = None,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> x509.Certificate:
    start = not_before or datetime.now(UTC)
    return build_leaf(
        issuer,
        serial=new_serial(),
        public_key=key.public_key(),
        names=names,
        not_before=start,
        not_after=not_after or leaf_not_after(start),
        validation_level=level,
        organization=organization,
    )


@dataclass(frozen=True)
class Case:
    level: ValidationLevel
    names: tuple[str, ...]
    organization: SubjectOrganization | None
    subject: str  # RFC 4514, most specific first
    policy: str


CASES = {
    "dv-single": Case("dv", ("www.example.com",), None, "CN=www.example.com", "2.23.140.1.2.1"),
    "dv-wildcard": Case(
        "dv",
        ("*.example.com", "example.com", "shop.example.net"),
        None,
        "CN=*.example.com",
        "2.23.140.1.2.1",
    ),
    "dv-ip": Case("dv", ("1.1.1.1", "2606:4700:4700::1111"), None, "CN=1.1.1.1", "2.23.140.1.2.1"),
    "ov": Case(
        "ov",
        ("example.com", "www.example.com"),
        OV_ORG,
        "CN=example.com,O=Example Widgets GmbH,L=Berlin,ST=Berlin,C=DE",
        "2.23.140.1.2.2",
    ),
    "ev": Case(
        "ev",
        ("www.example.com", "example.com"),
        EV_ORG,
        "CN=www.example.com,O=Example Widgets GmbH,STREET=Unter den Linden 1,"
        "2.5.4.17=10117,L=Berlin,ST=Berlin,C=DE,2.5.4.5=HRB 123456 B,"
        "2.5.4.15=Private Organization,1.3.6.1.4.1.311.60.2.1.3=DE",
        "2.23.140.1.1",
    ),
}


def _san_texts(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in san]


@pytest.mark.parametrize("key_type", ["rsa2048", "p256"])
@pytest.mark.parametrize("case_id", list(CASES))
def test_leaf_profile_passes_pkilint_and_openssl(
    case_id: str,
    key_type: str,
    production: Issuer,
    rsa_key: rsa.RSAPrivateKey,
    p256_key: ec.EllipticCurvePrivateKey,
    tmp_path: Path,
) -> None:
    case = CASES[case_id]
    key: SubjectKey = rsa_key if key_type == "rsa2048" else p256_key
    cert = _issue(production, key, case.names, case.level, case.organization)
    pem = _pem(cert)

    assert lint_leaf(pem) == []
    assert lint_chain(production.chain_pem, pem) == []
    assert openssl_verify(pem, production.chain_pem, production.root_pem) == "leaf.pem: OK"

    assert cert.subject.rfc4514_string() == case.subject
    assert _san_texts(cert) == list(case.names)
    ext = cert.extensions
    assert not ext.get_extension_for_class(x509.SubjectAlternativeName).critical
    policies = ext.get_extension_for_class(x509.CertificatePolicies).value
    assert [p.policy_identifier.dotted_string for p in policies] == [case.policy]
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_encipherment
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    issuer_ski = production.certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value
    assert aki.key_identifier == issuer_ski.digest
    aia = ext.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert {(a.access_method, str(a.access_location.value)) for a in aia} == {
        (AuthorityInformationAccessOID.OCSP, "http://certbroker.example.com/ocsp/intermediate"),
        (
            AuthorityInformationAccessOID.CA_ISSUERS,
            "http://certbroker.example.com/ca/intermediate.der",
        ),
    }
    crl = ext.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [str(n.value) for n in crl[0].full_name or []] == [
        "http://certbroker.example.com/crl/intermediate.crl"
    ]
    with pytest.raises(x509.ExtensionNotFound):
        ext.get_extension_for_class(x509.SubjectKeyIdentifier)  # BR 7.1.2.7.6
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)  # P-384 issuer
    assert cert.public_key() == key.public_key()


def test_ip_san_entries_are_ip_addresses(production: Issuer, p256_key: SubjectKey) -> None:
    cert = _issue(production, p256_key, ["www.example.com", "1.1.1.1"])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("1.1.1.1")]
    assert san.get_values_for_type(x509.DNSName) == ["www.example.com"]


def test_names_are_normalized_and_deduplicated(production: Issuer, p256_key: SubjectKey) -> None:
    cert = _issue(production, p256_key, ["WWW.Example.com", "www.example.com", " example.com "])
    assert _san_texts(cert) == ["www.example.com", "example.com"]


def test_long_first_name_leaves_the_subject_empty_and_san_critical(
    production: Issuer, p256_key: SubjectKey
) -> None:
    long_name = ("a" * 60) + ".example.com"
    cert = _issue(production, p256_key, [long_name, "example.com"])
    assert len(cert.subject) == 0
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    assert _san_texts(cert) == [long_name, "example.com"]
    assert lint_leaf(_pem(cert)) == []


def test_sandbox_leaf_chains_to_the_sandbox_intermediate(
    sandbox: Issuer, production: Issuer, p256_key: SubjectKey
) -> None:
    pem = _pem(_issue(sandbox, p256_key, ["sandbox.example.com"]))
    assert "SANDBOX" in x509.load_pem_x509_certificate(pem.encode()).issuer.rfc4514_string()
    assert lint_leaf(pem) == []
    assert openssl_verify(pem, sandbox.chain_pem, sandbox.root_pem) == "leaf.pem: OK"
    # It does not verify through the production intermediate.
    assert "OK" not in openssl_verify(pem, production.chain_pem, production.root_pem)


def test_leaf_at_the_exact_maximum_is_accepted(production: Issuer, p256_key: SubjectKey) -> None:
    start = datetime.now(UTC).replace(microsecond=0)
    end = start + timedelta(days=200) - SECOND
    cert = _issue(production, p256_key, ["example.com"], not_before=start, not_after=end)
    assert cert.not_valid_after_utc == end
    # Legal, but BR 6.3.2 says SHOULD NOT; pkilint warns, which is why leaf_not_after keeps a
    # day of margin. This also proves the lint helper reports warnings.
    findings = lint_leaf(_pem(cert))
    assert len(findings) == 1
    assert "certificate_validity_period_exceeds_199_days" in findings[0]


def test_lint_leaf_flags_a_ca_certificate(production: Issuer) -> None:
    findings = lint_leaf(production.chain_pem)
    assert findings and findings[0].startswith("TYPE detected as INTERNAL-UNCONSTRAINED-TLS-CA")


def test_one_second_over_the_maximum_is_refused(production: Issuer, p256_key: SubjectKey) -> None:
    start = datetime.now(UTC)
    with pytest.raises(ValueError, match=r"exceeds the 200-day maximum .*\(BR 6\.3\.2\)"):
        _issue(
            production,
            p256_key,
            ["example.com"],
            not_before=start,
            not_after=start + timedelta(days=200),
        )


def test_not_after_beyond_the_issuing_ca_is_refused(
    production: Issuer, p256_key: SubjectKey
) -> None:
    start = production.certificate.not_valid_after_utc - timedelta(days=10)
    with pytest.raises(ValueError, match="after the issuing CA's notAfter"):
        _issue(production, p256_key, ["example.com"], not_before=start)


def test_new_serial() -> None:
    serials = [new_serial() for _ in range(200)]
    assert len(set(serials)) == len(serials)
    assert all(0 < s < 1 << 127 for s in serials)
    # 127 random bits: some serial among 200 uses the top bits (odds of failing ~2^-200).
    assert max(s.bit_length() for s in serials) >= 120


@pytest.mark.parametrize(
    ("names", "level", "organization", "message"),
    [
        (["ex_ample.com"], "dv", None, "label ‘ex_ample’ contains ‘_’"),
        (["-bad.example.com"], "dv", None, "starts or ends with a hyphen"),
        (["ab--cd.example.com"], "dv", None, "reserved for IDNA"),
        (["xn--bcher-kva5a6e.example.com"], "dv", None, "not a valid IDNA 2008 A-label"),
        (["shop.example.corp"], "dv", None, "internal names cannot be certified"),
        (["localhost"], "dv", None, "not a fully qualified"),
        (["*.*.example.com"], "dv", None, "label ‘\\*’ contains ‘\\*’"),
        ([], "dv", None, "at least one name"),
        ([""], "dv", None, "name is empty"),
        (["10.0.0.1"], "dv", None, "10.0.0.1 is a reserved IP address"),
        (["::1"], "dv", None, "reserved IP address"),
        (["*.example.com"], "ev", EV_ORG, "cannot contain wildcard"),
        (["example.com", "1.1.1.1"], "ev", EV_ORG, "DNS names only"),
        (["example.com"], "ov", None, "OV certificates need the subject organization"),
        (
            ["example.com"],
            "ov",
            SubjectOrganization(name="Example", country="DE"),
            "state or province, a locality, or both",
        ),
        (
            ["example.com"],
            "ov",
            SubjectOrganization(name="Example", country="Germany", locality="Berlin"),
            "two-letter ISO 3166-1 code",
        ),
        (
            ["example.com"],
            "ov",
            SubjectOrganization(name="E" * 65, country="DE", locality="Berlin"),
            "organization name is 65 characters; at most 64",
        ),
        (["example.com"], "ev", OV_ORG, "registration number is required"),
        (
            ["example.com"],
            "ev",
            SubjectOrganization(
                name="Example",
                country="DE",
                locality="Berlin",
                registration_number="HRB 1",
                jurisdiction_country="DE",
                business_category="Startup",
            ),
            "business category 'Startup' is not one of",
        ),
        (
            ["example.com"],
            "ev",
            SubjectOrganization(
                name="Example",
                country="DE",
                locality="Berlin",
                registration_number="HRB_1",
                jurisdiction_country="DE",
                business_category="Private Organization",
            ),
            "outside PrintableString",
        ),
    ],
)
def test_invalid_requests_are_refused(
    names: list[str],
    level: ValidationLevel,
    organization: SubjectOrganization | None,
    message: str,
    production: Issuer,
    p256_key: SubjectKey,
) -> None:
    with pytest.raises(ValueError, match=message):
        _issue(production, p256_key, names, level, organization)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (
            rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505
            "RSA key is 1024 bits; at least 2048 required",
        ),
        (ec.generate_private_key(ec.SECP521R1()), r"curve P-521 \(secp521r1\); only P-256"),
        (ed25519.Ed25519PrivateKey.generate(), "Ed25519 keys are not supported"),
    ],
    ids=["rsa1024", "p521", "ed25519"],
)
def test_weak_or_unsupported_keys_are_refused(
    key: SubjectKey | ed25519.Ed25519PrivateKey, message: str, production: Issuer
) -> None:
    with pytest.raises(ValueError, match=message):
        _issue(production, key, ["example.com"])


def test_bad_validity_inputs_are_refused(production: Issuer, p256_key: SubjectKey) -> None:
    start = datetime.now(UTC)
    with pytest.raises(ValueError, match="is not after notBefore"):
        _issue(production, p256_key, ["example.com"], not_before=start, not_after=start)
    with pytest.raises(ValueError, match="timezone-aware"):
        _issue(
            production,
            p256_key,
            ["example.com"],
            not_before=datetime(2026, 12, 1),
            not_after=datetime(2026, 12, 2),
        )


def test_subject_cn_of_an_ipv6_leaf_is_its_canonical_text(
    production: Issuer, p256_key: SubjectKey
) -> None:
    cert = _issue(production, p256_key, ["2606:4700:4700:0:0:0:0:1111"])
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "2606:4700:4700::1111"


@pytest.mark.parametrize(
    ("issuer_key", "expected"),
    [
        (ec.generate_private_key(ec.SECP256R1()), hashes.SHA256),
        (ec.generate_private_key(ec.SECP384R1()), hashes.SHA384),
        (ec.generate_private_key(ec.SECP521R1()), hashes.SHA512),
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), hashes.SHA256),
    ],
    ids=["p256", "p384", "p521", "rsa"],
)
def test_signature_hash_follows_the_issuer_key(
    issuer_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, expected: type[hashes.HashAlgorithm]
) -> None:
    assert isinstance(signature_hash(issuer_key), expected)


def test_parse_validation_level() -> None:
    assert parse_validation_level("ov") == "ov"
    with pytest.raises(ValueError, match="unknown validation level 'iv'"):
        parse_validation_level("iv")
