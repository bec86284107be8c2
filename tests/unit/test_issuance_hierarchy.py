from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    CertificatePoliciesOID,
    ExtendedKeyUsageOID,
    NameOID,
)

from certbroker.issuance.hierarchy import (
    CA_FILES,
    Issuer,
    ca_endpoints,
    create_hierarchy,
    http_base_url,
    is_initialized,
    load_issuer,
)
from tests.helpers.pkilint_check import lint_ca, lint_chain

PUBLIC_URL = "https://certbroker.example.com"
NOW = datetime.now(UTC).replace(microsecond=0)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ca-parent") / "ca"
    create_hierarchy(directory, public_url=PUBLIC_URL, now=NOW, organization="Acme Test")
    return directory


ROOT_STEM = {"production": "root", "sandbox": "sandbox-root"}


@pytest.fixture(scope="module", params=["production", "sandbox"])
def issuer(request: pytest.FixtureRequest, ca_dir: Path) -> Issuer:
    return load_issuer(ca_dir, request.param, PUBLIC_URL)


@pytest.fixture(scope="module")
def root(issuer: Issuer, ca_dir: Path) -> x509.Certificate:
    """The root of `issuer`: production and sandbox have roots of their own."""
    return x509.load_pem_x509_certificate((ca_dir / f"{ROOT_STEM[issuer.name]}.pem").read_bytes())


def test_files_and_permissions(ca_dir: Path) -> None:
    assert sorted(p.name for p in ca_dir.iterdir()) == sorted(CA_FILES)
    assert _mode(ca_dir) == 0o700
    for name in CA_FILES:
        expected = 0o600 if name.endswith(".key") else 0o644
        assert _mode(ca_dir / name) == expected, name


def test_is_initialized(ca_dir: Path, tmp_path: Path) -> None:
    assert is_initialized(ca_dir)
    assert not is_initialized(tmp_path / "absent")
    assert not is_initialized(tmp_path)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
def test_key_files_are_never_readable_by_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Record each file's mode at the moment it is published: keys must already be 0o600.
    modes_when_published: dict[str, int] = {}
    real_link = os.link

    def spying_link(src: str | Path, dst: str | Path) -> None:
        modes_when_published[Path(dst).name] = stat.S_IMODE(os.stat(src).st_mode)
        real_link(src, dst)

    monkeypatch.setattr(os, "link", spying_link)
    directory = tmp_path / "ca"
    create_hierarchy(directory, public_url=PUBLIC_URL, now=NOW)
    assert set(modes_when_published) == set(CA_FILES)
    for name in CA_FILES:
        if name.endswith(".key"):
            assert modes_when_published[name] == 0o600, name
            assert _mode(directory / name) == 0o600, name
    assert _mode(directory) == 0o700
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]


def test_existing_hierarchy_is_not_overwritten(ca_dir: Path) -> None:
    before = {name: (ca_dir / name).read_bytes() for name in CA_FILES}
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        create_hierarchy(ca_dir, public_url=PUBLIC_URL, now=NOW)
    assert {name: (ca_dir / name).read_bytes() for name in CA_FILES} == before


def test_partial_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "intermediate.key").write_text("left over")
    with pytest.raises(FileExistsError, match=r"already holds intermediate\.key"):
        create_hierarchy(tmp_path, public_url=PUBLIC_URL, now=NOW)
    assert not (tmp_path / "root.key").exists()


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too long"):
        create_hierarchy(tmp_path / "a", public_url=PUBLIC_URL, now=NOW, organization="x" * 40)
    with pytest.raises(ValueError, match="two-letter"):
        create_hierarchy(tmp_path / "b", public_url=PUBLIC_URL, now=NOW, country="USA")
    with pytest.raises(ValueError, match="absolute http"):
        create_hierarchy(tmp_path / "c", public_url="certbroker.example.com", now=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        create_hierarchy(tmp_path / "d", public_url=PUBLIC_URL, now=datetime(2026, 11, 29))
    assert not is_initialized(tmp_path / "a")


ROOT_NAMES = {
    "production": "CN=Acme Test Root CA,O=Acme Test,C=US",
    "sandbox": "CN=Acme Test SANDBOX Root CA - NOT TRUSTED,O=Acme Test,C=US",
}


def test_root_profile(root: x509.Certificate, issuer: Issuer) -> None:
    assert root.subject == root.issuer
    assert root.subject.rfc4514_string() == ROOT_NAMES[issuer.name]
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp384r1"
    assert isinstance(root.signature_hash_algorithm, hashes.SHA384)
    root.verify_directly_issued_by(root)
    assert root.not_valid_before_utc == NOW
    assert root.not_valid_after_utc - root.not_valid_before_utc >= timedelta(days=365 * 20)
    assert root.serial_number.bit_length() > 64
    ext = root.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length is None
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    with pytest.raises(x509.ExtensionNotFound):
        ext.get_extension_for_class(x509.ExtendedKeyUsage)


def test_root_passes_pkilint(root: x509.Certificate) -> None:
    assert lint_ca(_pem(root)) == []


def test_intermediate_profile(issuer: Issuer, root: x509.Certificate) -> None:
    cert = issuer.certificate
    cert.verify_directly_issued_by(root)
    assert cert.issuer == root.subject
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= timedelta(days=365 * 8)
    assert cert.not_valid_after_utc < root.not_valid_after_utc
    ext = cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    policies = ext.get_extension_for_class(x509.CertificatePolicies).value
    assert [p.policy_identifier for p in policies] == [CertificatePoliciesOID.ANY_POLICY]
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    root_stem = ROOT_STEM[issuer.name]
    crl_dp = ext.get_extension_for_class(x509.CRLDistributionPoints).value
    assert crl_dp[0].full_name == [
        x509.UniformResourceIdentifier(f"http://certbroker.example.com/crl/{root_stem}.crl")
    ]
    aia = ext.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(a.access_method, a.access_location) for a in aia] == [
        (
            AuthorityInformationAccessOID.CA_ISSUERS,
            x509.UniformResourceIdentifier(f"http://certbroker.example.com/ca/{root_stem}.der"),
        )
    ]


def test_intermediate_passes_pkilint(issuer: Issuer, root: x509.Certificate) -> None:
    assert lint_ca(issuer.chain_pem) == []
    assert lint_chain(_pem(root), issuer.chain_pem) == []


def test_sandbox_intermediate_says_so(ca_dir: Path) -> None:
    sandbox = load_issuer(ca_dir, "sandbox", PUBLIC_URL)
    production = load_issuer(ca_dir, "production", PUBLIC_URL)
    assert _cn(sandbox.certificate) == "Acme Test SANDBOX TLS Issuing CA - NOT TRUSTED"
    assert _cn(production.certificate) == "Acme Test TLS Issuing CA"
    assert "SANDBOX" not in production.certificate.subject.rfc4514_string()
    assert sandbox.certificate.public_key() != production.certificate.public_key()


def test_load_issuer_fields(issuer: Issuer, root: x509.Certificate, ca_dir: Path) -> None:
    stem = "intermediate" if issuer.name == "production" else "sandbox-intermediate"
    assert issuer.chain_pem.count("BEGIN CERTIFICATE") == 1
    assert x509.load_pem_x509_certificate(issuer.chain_pem.encode()) == issuer.certificate
    assert x509.load_pem_x509_certificate(issuer.root_pem.encode()) == root
    assert issuer.certificate == x509.load_pem_x509_certificate(
        (ca_dir / f"{stem}.pem").read_bytes()
    )
    assert issuer.key.public_key() == issuer.certificate.public_key()
    assert issuer.ca_issuers_url == f"http://certbroker.example.com/ca/{stem}.der"
    assert issuer.crl_url == f"http://certbroker.example.com/crl/{stem}.crl"
    assert issuer.ocsp_url == f"http://certbroker.example.com/ocsp/{stem}"


def test_load_issuer_rejects_a_key_that_does_not_match(ca_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "ca"
    broken.mkdir()
    for name in CA_FILES:
        (broken / name).write_bytes((ca_dir / name).read_bytes())
    (broken / "intermediate.key").write_bytes((ca_dir / "sandbox-intermediate.key").read_bytes())
    with pytest.raises(ValueError, match=r"intermediate\.key does not match"):
        load_issuer(broken, "production", PUBLIC_URL)


def test_load_issuer_rejects_an_intermediate_from_another_root(
    ca_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    create_hierarchy(other, public_url=PUBLIC_URL, now=NOW, organization="Acme Test")
    (other / "root.pem").unlink()
    (other / "root.pem").write_bytes((ca_dir / "root.pem").read_bytes())
    with pytest.raises(ValueError, match=r"is not issued by root\.pem"):
        load_issuer(other, "production", PUBLIC_URL)


def test_sandbox_does_not_chain_to_the_production_root(ca_dir: Path) -> None:
    """Sandbox certificates skip DCV: whoever trusts the production root must reject them."""
    production_root = x509.load_pem_x509_certificate((ca_dir / "root.pem").read_bytes())
    sandbox = load_issuer(ca_dir, "sandbox", PUBLIC_URL)
    assert sandbox.certificate.issuer != production_root.subject
    root_key = production_root.public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey)
    with pytest.raises(InvalidSignature):
        root_key.verify(
            sandbox.certificate.signature,
            sandbox.certificate.tbs_certificate_bytes,
            ec.ECDSA(hashes.SHA384()),
        )


def test_load_issuer_from_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"root\.pem is missing"):
        load_issuer(tmp_path, "production", PUBLIC_URL)


def test_public_urls_use_http() -> None:
    assert http_base_url("https://certbroker.example.com/") == "http://certbroker.example.com"
    assert http_base_url("https://ca.example.com:8443/pki") == "http://ca.example.com:8443/pki"
    endpoints = ca_endpoints("https://certbroker.example.com", "sandbox")
    assert endpoints.crl_url == "http://certbroker.example.com/crl/sandbox-intermediate.crl"
    for bad in ("ftp://certbroker.example.com", "https://certbroker.example.com/?a=1", "/x"):
        with pytest.raises(ValueError, match="public URL"):
            http_base_url(bad)
