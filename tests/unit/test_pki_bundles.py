from __future__ import annotations

import datetime
import string
import subprocess
from pathlib import Path

import jks
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from certbroker.pki.bundles import make_jks, make_pkcs12, random_password
from certbroker.pki.keys import PrivateKey, generate_private_key, public_key_matches

KEYTOOL = "/usr/bin/keytool"


def _cert(
    subject_key: PrivateKey, cn: str, issuer_key: PrivateKey, issuer_cn: str, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


class Material:
    def __init__(self, spec: str) -> None:
        ca_key = generate_private_key("ec256")
        self.ca = _cert(ca_key, "Test CA", ca_key, "Test CA", ca=True)
        self.key = generate_private_key(spec)
        self.cert = _cert(self.key, f"{spec}.example.com", ca_key, "Test CA", ca=False)


@pytest.fixture(scope="module", params=["rsa2048", "ec256"])
def material(request: pytest.FixtureRequest) -> Material:
    return Material(str(request.param))


def _run(args: list[str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _colon_hex(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in data)


def test_random_password() -> None:
    pw = random_password()
    assert len(pw) == 16
    assert set(pw) <= set(string.ascii_letters + string.digits)
    assert len(random_password(40)) == 40
    assert len({random_password() for _ in range(50)}) == 50
    with pytest.raises(ValueError, match="at least 1"):
        random_password(0)


def test_pkcs12_round_trip_with_cryptography(material: Material) -> None:
    password = random_password()
    data = make_pkcs12(material.key, material.cert, [material.ca], password, "my cert")
    loaded = pkcs12.load_pkcs12(data, password.encode())
    assert loaded.key is not None and loaded.cert is not None
    assert loaded.cert.certificate == material.cert
    assert loaded.cert.friendly_name == b"my cert"
    assert [c.certificate for c in loaded.additional_certs] == [material.ca]
    assert public_key_matches(material.key, loaded.key.public_key())
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(data, b"wrong password")


def test_pkcs12_read_by_openssl_and_keytool(material: Material, tmp_path: Path) -> None:
    password = random_password()
    path = tmp_path / "bundle.p12"
    path.write_bytes(make_pkcs12(material.key, material.cert, [material.ca], password, "web"))

    out = _run(["openssl", "pkcs12", "-in", str(path), "-passin", f"pass:{password}", "-nodes"])
    assert "friendlyName: web" in out
    key = serialization.load_pem_private_key(
        out[out.index("-----BEGIN PRIVATE KEY-----") :].encode(), password=None
    )
    assert public_key_matches(material.key, key.public_key())
    assert out.count("-----BEGIN CERTIFICATE-----") == 2

    listing = _run(
        [
            KEYTOOL,
            "-list",
            "-v",
            "-keystore",
            str(path),
            "-storetype",
            "PKCS12",
            "-storepass",
            password,
        ]
    )
    assert "PrivateKeyEntry" in listing
    assert "Certificate chain length: 2" in listing
    assert _colon_hex(material.cert.fingerprint(hashes.SHA256())) in listing


def test_jks_round_trip_with_pyjks(material: Material) -> None:
    password = random_password()
    data = make_jks(material.key, material.cert, [material.ca], password, "MyAlias")
    store = jks.KeyStore.loads(data, password)
    entry = store.private_keys["myalias"]  # pyjks and keytool lower-case aliases
    assert entry.is_decrypted()  # decrypted with the store password: same password
    key = serialization.load_der_private_key(entry.pkey_pkcs8, password=None)
    assert public_key_matches(material.key, key.public_key())
    assert [der for _, der in entry.cert_chain] == [
        material.cert.public_bytes(serialization.Encoding.DER),
        material.ca.public_bytes(serialization.Encoding.DER),
    ]
    with pytest.raises(jks.util.KeystoreSignatureException):
        jks.KeyStore.loads(data, "wrong")


def test_jks_read_by_keytool(material: Material, tmp_path: Path) -> None:
    password = random_password()
    path = tmp_path / "bundle.jks"
    path.write_bytes(make_jks(material.key, material.cert, [material.ca], password, "tomcat"))

    listing = _run(
        [
            KEYTOOL,
            "-list",
            "-v",
            "-keystore",
            str(path),
            "-storepass",
            password,
            "-storetype",
            "JKS",
        ]
    )
    assert "Your keystore contains 1 entry" in listing
    assert "Alias name: tomcat" in listing
    assert "Entry type: PrivateKeyEntry" in listing
    assert "Certificate chain length: 2" in listing
    assert _colon_hex(material.cert.fingerprint(hashes.SHA256())) in listing

    # Converting to PKCS#12 makes Java decrypt the key entry; the key must still fit the cert.
    converted = tmp_path / "converted.p12"
    _run(
        [
            KEYTOOL,
            "-importkeystore",
            "-noprompt",
            "-srckeystore",
            str(path),
            "-srcstoretype",
            "JKS",
            "-srcstorepass",
            password,
            "-destkeystore",
            str(converted),
            "-deststoretype",
            "PKCS12",
            "-deststorepass",
            password,
        ]
    )
    loaded = pkcs12.load_pkcs12(converted.read_bytes(), password.encode())
    assert loaded.key is not None and loaded.cert is not None
    assert loaded.cert.certificate == material.cert
    assert public_key_matches(material.key, loaded.key.public_key())


def test_bundles_refuse_mismatched_key_and_empty_password(material: Material) -> None:
    other = generate_private_key("ec256")
    for make in (make_pkcs12, make_jks):
        with pytest.raises(ValueError, match="private key does not match the certificate"):
            make(other, material.cert, [], "pw", "x")
        with pytest.raises(ValueError, match="bundle password must not be empty"):
            make(material.key, material.cert, [], "", "x")
    with pytest.raises(ValueError, match="alias must not be empty"):
        make_jks(material.key, material.cert, [], "pw", "")


def test_pkcs12_without_chain(material: Material) -> None:
    data = make_pkcs12(material.key, material.cert, [], "pw", "")
    loaded = pkcs12.load_pkcs12(data, b"pw")
    assert loaded.additional_certs == []
    assert loaded.cert is not None and loaded.cert.friendly_name is None
