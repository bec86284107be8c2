from __future__ import annotations

import base64
import ipaddress
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtensionOID, NameOID

from certbroker.pki.csr import MAX_CSR_PEM_BYTES, CsrError, ParsedCsr, build_csr, parse_csr
from certbroker.pki.keys import private_key_to_pem, public_key_matches
from certbroker.policy.keys import key_refusal

SignHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


def make_csr(
    key: CertificateIssuerPrivateKeyTypes,
    cn: str | list[str] | None = "example.com",
    sans: list[x509.GeneralName] | None = None,
    hash_algorithm: SignHash | None = None,
    extra: list[x509.ExtensionType] | None = None,
) -> x509.CertificateSigningRequest:
    cns = [] if cn is None else [cn] if isinstance(cn, str) else cn
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, c) for c in cns])
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for ext in extra or []:
        builder = builder.add_extension(ext, critical=False)
    if hash_algorithm is None and not isinstance(
        key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
    ):
        hash_algorithm = hashes.SHA256()
    return builder.sign(key, hash_algorithm)


def pem_of(der: bytes) -> str:
    b64 = base64.b64encode(der).decode("ascii")
    body = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"


# --- minimal DER surgery, to build CSRs no library would sign -------------------------------


def _read_tlv(data: bytes, pos: int) -> tuple[int, int]:
    """(header length, content length) of the TLV at ``pos``."""
    first = data[pos + 1]
    if first < 0x80:
        return 2, first
    count = first & 0x7F
    return 2 + count, int.from_bytes(data[pos + 2 : pos + 2 + count], "big")


def _children(data: bytes) -> list[bytes]:
    header, length = _read_tlv(data, 0)
    content = data[header : header + length]
    out, pos = [], 0
    while pos < len(content):
        h, n = _read_tlv(content, pos)
        out.append(content[pos : pos + h + n])
        pos += h + n
    return out


def _sequence(parts: list[bytes]) -> bytes:
    content = b"".join(parts)
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return b"\x30" + length + content


def replace_spki(csr_der: bytes, spki_der: bytes) -> bytes:
    info, alg, sig = _children(csr_der)
    version, subject, _spki, attrs = _children(info)
    return _sequence([_sequence([version, subject, spki_der, attrs]), alg, sig])


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def good_csr(ec_key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    return make_csr(
        ec_key,
        "Example.COM",
        [
            x509.DNSName("example.com"),
            x509.DNSName("www.example.com"),
            x509.DNSName("*.example.com"),
            x509.DNSName("WWW.example.com."),
            x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
            x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
            x509.RFC822Name("admin@example.com"),
        ],
    )


def openssl_csr(tmp: Path, key: rsa.RSAPrivateKey, digest: str) -> str:
    # cryptography refuses to sign with MD5 or SHA-1 ("not supported for signatures"), so
    # these legacy CSRs come from the openssl CLI, which still produces them.
    key_file = tmp / f"key-{digest}.pem"
    key_file.write_text(private_key_to_pem(key))
    out = subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            f"-{digest}",
            "-key",
            str(key_file),
            "-subj",
            f"/CN={digest}.example.com",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout


# --- the happy path -------------------------------------------------------------------------


def test_parse_valid_csr(good_csr: x509.CertificateSigningRequest) -> None:
    der = good_csr.public_bytes(DER)
    parsed = parse_csr(good_csr.public_bytes(PEM).decode("ascii"))
    assert parsed.der == der
    assert parsed.pem == pem_of(der)
    assert parsed.common_name == "example.com"
    assert parsed.dns_names == ("example.com", "www.example.com", "*.example.com")
    assert parsed.ip_addresses == ("192.0.2.7", "2001:db8::1")
    assert parsed.names == (
        "example.com",
        "www.example.com",
        "*.example.com",
        "192.0.2.7",
        "2001:db8::1",
    )
    assert parsed.key_description == "ECDSA P-256"
    assert parsed.signature_hash == "sha256"
    assert parsed.public_key == good_csr.public_key()


def test_parse_accepts_crlf_whitespace_new_label_and_surrounding_text(
    good_csr: x509.CertificateSigningRequest,
) -> None:
    der = good_csr.public_bytes(DER)
    pem = pem_of(der)
    variants: list[str | bytes] = [
        "\r\n".join(pem.splitlines()) + "\r\n",
        "\n\n   " + pem + "  \t\n",
        pem.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"),
        "Certificate Request:\n    Data: (openssl -text output)\n" + pem,
        pem.encode("ascii"),
        pem.replace("\n", "\\n"),  # JSON-escaped twice by the client
    ]
    for variant in variants:
        parsed = parse_csr(variant)
        assert parsed.der == der
        assert parsed.pem == pem


def test_cn_only_and_san_only(ec_key: ec.EllipticCurvePrivateKey) -> None:
    cn_only = parse_csr(make_csr(ec_key, "a.example.org").public_bytes(PEM).decode())
    assert (cn_only.names, cn_only.dns_names) == (("a.example.org",), ())
    san_only = parse_csr(
        make_csr(ec_key, None, [x509.DNSName("b.example.org")]).public_bytes(PEM).decode()
    )
    assert san_only.common_name is None
    assert san_only.names == ("b.example.org",)


def test_idn_names_are_converted(ec_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(ec_key, "bücher.example", [x509.DNSName("xn--bcher-kva.example")])
    parsed = parse_csr(csr.public_bytes(PEM).decode())
    assert parsed.names == ("xn--bcher-kva.example",)


@pytest.mark.parametrize(
    ("key_factory", "digest", "description", "hash_name"),
    [
        (lambda: rsa.generate_private_key(65537, 3072), hashes.SHA384(), "RSA 3072", "sha384"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), hashes.SHA384(), "ECDSA P-384", "sha384"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), hashes.SHA512(), "ECDSA P-256", "sha512"),
    ],
)
def test_other_allowed_keys_and_hashes(
    key_factory: Callable[[], CertificateIssuerPrivateKeyTypes],
    digest: SignHash,
    description: str,
    hash_name: str,
) -> None:
    parsed = parse_csr(make_csr(key_factory(), hash_algorithm=digest).public_bytes(PEM).decode())
    assert (parsed.key_description, parsed.signature_hash) == (description, hash_name)


def test_openssl_made_csr(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text(private_key_to_pem(rsa_key))
    pem = subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-sha256",
            "-key",
            str(key_file),
            "-subj",
            "/CN=www.a.example",
            "-addext",
            "subjectAltName=DNS:www.a.example,DNS:a.example,IP:198.51.100.1",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    parsed = parse_csr(pem)
    assert parsed.names == ("www.a.example", "a.example", "198.51.100.1")
    assert parsed.key_description == "RSA 2048"
    assert public_key_matches(rsa_key, parsed.public_key)


# --- the broken-CSR corpus ------------------------------------------------------------------

Corpus = dict[str, str]


@pytest.fixture(scope="module")
def corpus(
    tmp_path_factory: pytest.TempPathFactory,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
    good_csr: x509.CertificateSigningRequest,
) -> Corpus:
    tmp = tmp_path_factory.mktemp("csr")
    good_der = good_csr.public_bytes(DER)
    good_pem = pem_of(good_der)
    lines = good_pem.splitlines()
    simple = make_csr(ec_key, "sig.example.com").public_bytes(DER)

    tampered_sig = bytearray(simple)
    tampered_sig[-3] ^= 0x01
    tampered_subject = simple.replace(b"sig.example.com", b"sog.example.com")
    assert tampered_subject != simple

    big_rsa = rsa.RSAPublicNumbers(65537, (1 << 8199) | 1).public_key()
    big_spki = big_rsa.public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    return {
        "empty": "",
        "blank": " \r\n\t ",
        "huge": good_pem + " " * MAX_CSR_PEM_BYTES,
        "no pem": "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA",
        "private key": private_key_to_pem(ec_key),
        "certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "two blocks": good_pem + private_key_to_pem(ec_key),
        "missing end": "\n".join(lines[:-3]),
        "truncated der": "\n".join([*lines[:3], lines[-1]]),
        "bad base64": "\n".join([lines[0], "!!!!" + lines[1][4:], *lines[2:]]),
        "empty block": "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----",
        "not a sequence": pem_of(bytes(range(1, 200))),
        "garbage der": pem_of(b"\x30\x06\x02\x01\x00\x04\x01\x00"),
        "trailing data": pem_of(good_der + b"\x00\x00"),
        "md5": openssl_csr(tmp, rsa_key, "md5"),
        "sha1": openssl_csr(tmp, rsa_key, "sha1"),
        "dsa": pem_of(make_csr(dsa.generate_private_key(2048)).public_bytes(DER)),
        "rsa1024": pem_of(make_csr(rsa.generate_private_key(65537, 1024)).public_bytes(DER)),  # noqa: S505
        "rsa8200": pem_of(replace_spki(simple, big_spki)),
        "p521": pem_of(
            make_csr(
                ec.generate_private_key(ec.SECP521R1()), hash_algorithm=hashes.SHA512()
            ).public_bytes(DER)
        ),
        "secp256k1": pem_of(make_csr(ec.generate_private_key(ec.SECP256K1())).public_bytes(DER)),
        "ed25519": pem_of(make_csr(ed25519.Ed25519PrivateKey.generate()).public_bytes(DER)),
        "ed448": pem_of(make_csr(ed448.Ed448PrivateKey.generate()).public_bytes(DER)),
        "tampered signature": pem_of(bytes(tampered_sig)),
        "tampered subject": pem_of(tampered_subject),
        "bad san": pem_of(
            make_csr(
                ec_key,
                extra=[
                    x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x31\x00")
                ],
            ).public_bytes(DER)
        ),
        "bad key usage": pem_of(
            make_csr(
                ec_key, extra=[x509.UnrecognizedExtension(ExtensionOID.KEY_USAGE, b"\x31\x00")]
            ).public_bytes(DER)
        ),
        "underscore san": pem_of(
            make_csr(ec_key, None, [x509.DNSName("a_b.example.com")]).public_bytes(DER)
        ),
        "ip in dns san": pem_of(
            make_csr(ec_key, None, [x509.DNSName("192.0.2.1")]).public_bytes(DER)
        ),
        "bad cn": pem_of(make_csr(ec_key, "My Company Ltd").public_bytes(DER)),
        "two cns": pem_of(make_csr(ec_key, ["a.example.com", "b.example.com"]).public_bytes(DER)),
        "no names": pem_of(
            make_csr(ec_key, None, [x509.RFC822Name("a@example.com")]).public_bytes(DER)
        ),
        "bad wildcard": pem_of(make_csr(ec_key, "*.com").public_bytes(DER)),
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "CSR is empty"),
        ("blank", "CSR is empty"),
        ("huge", "bytes; at most 32768 accepted"),
        ("no pem", "no PEM block found; expected -----BEGIN CERTIFICATE REQUEST-----"),
        ("private key", "expected a CERTIFICATE REQUEST PEM block, found PRIVATE KEY"),
        ("certificate", "expected a CERTIFICATE REQUEST PEM block, found CERTIFICATE"),
        (
            "two blocks",
            "expected exactly one PEM block, found 2 (CERTIFICATE REQUEST, PRIVATE KEY)",
        ),
        ("missing end", "CSR PEM block is truncated: the -----END CERTIFICATE REQUEST----- line"),
        ("truncated der", "CSR DER is truncated: it declares"),
        ("bad base64", "CSR PEM body is not valid base64"),
        ("empty block", "CSR PEM block is empty"),
        ("not a sequence", "it does not start with an ASN.1 SEQUENCE"),
        ("garbage der", "CSR DER does not parse as a PKCS#10 certification request"),
        ("trailing data", "CSR DER has 2 bytes of trailing data"),
        ("md5", "CSR is signed with MD5; MD5 and SHA-1 signatures are not accepted (BR 7.1.3.2)"),
        ("sha1", "CSR is signed with SHA-1; MD5 and SHA-1 signatures are not accepted"),
        ("dsa", "DSA 2048 keys are not supported"),
        ("ed25519", "Ed25519 keys are not supported"),
        ("ed448", "Ed448 keys are not supported"),
        ("tampered signature", "CSR signature does not verify"),
        ("tampered subject", "CSR signature does not verify"),
        ("bad san", "CSR subjectAltName extension does not parse"),
        ("bad key usage", "CSR extension request does not parse"),
        (
            "underscore san",
            "CSR subjectAltName DNS name ‘a_b.example.com’ is not a valid name: "
            "‘a_b.example.com’: label ‘a_b’ contains ‘_’",
        ),
        ("ip in dns san", "CSR subjectAltName DNS name ‘192.0.2.1’ is an IP address"),
        ("bad cn", "CSR common name ‘My Company Ltd’ is not a valid name"),
        ("two cns", "CSR subject has 2 common names; at most one is allowed"),
        ("no names", "CSR names no domain"),
        ("bad wildcard", "CSR common name ‘*.com’ is not a valid name"),
    ],
)
def test_broken_csr(corpus: Corpus, case: str, message: str) -> None:
    with pytest.raises(CsrError) as err:
        parse_csr(corpus[case])
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("rsa1024", "RSA key is 1024 bits; at least 2048 required"),
        ("p521", "EC key uses curve P-521 (secp521r1); only P-256 and P-384 are accepted"),
        ("secp256k1", "EC key uses curve secp256k1; only P-256"),
    ],
)
def test_csr_keys_outside_the_key_policy(corpus: Corpus, case: str, message: str) -> None:
    # pki parses them; sizes and curves are the key policy's to refuse (policy/keys.py).
    refusal = key_refusal(parse_csr(corpus[case]).public_key)
    assert refusal is not None
    assert message in refusal.reason


def test_size_limit_is_checked_before_parsing() -> None:
    # Over the limit even though the content is not a CSR at all.
    with pytest.raises(CsrError, match="CSR is 32769 bytes"):
        parse_csr("x" * (MAX_CSR_PEM_BYTES + 1))
    with pytest.raises(CsrError, match="CSR is 32770 bytes"):
        parse_csr("é" * (MAX_CSR_PEM_BYTES // 2 + 1))


def test_non_ascii_bytes() -> None:
    with pytest.raises(CsrError, match="CSR contains non-ASCII bytes"):
        parse_csr(b"\xff\xfe-----BEGIN CERTIFICATE REQUEST-----")


def test_mutated_csrs_only_raise_csr_error(good_csr: x509.CertificateSigningRequest) -> None:
    # Whatever the damage, the only exception that may escape is CsrError.
    der = good_csr.public_bytes(DER)
    rng = random.Random(20240601)
    outcomes: set[str] = set()
    for _ in range(400):
        data = bytearray(der)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            del data[rng.randrange(len(data)) :]
        try:
            parse_csr(pem_of(bytes(data)))
            outcomes.add("ok")
        except CsrError as exc:
            outcomes.add(str(exc).split(":")[0])
    assert "CSR signature does not verify" in outcomes
    assert len(outcomes) >= 3


# --- build_csr ------------------------------------------------------------------------------


def test_build_csr_rsa(rsa_key: rsa.RSAPrivateKey) -> None:
    parsed = build_csr(rsa_key, ["WWW.Example.com", "example.com", "192.0.2.1", "www.example.com"])
    assert isinstance(parsed, ParsedCsr)
    assert parsed.common_name == "www.example.com"
    assert parsed.dns_names == ("www.example.com", "example.com")
    assert parsed.ip_addresses == ("192.0.2.1",)
    assert parsed.names == ("www.example.com", "example.com", "192.0.2.1")
    assert parsed.signature_hash == "sha256"
    assert parsed.key_description == "RSA 2048"
    assert public_key_matches(rsa_key, parsed.public_key)
    csr = x509.load_pem_x509_csr(parsed.pem.encode())
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.1")]


def test_build_csr_long_first_name_has_no_cn(ec_key: ec.EllipticCurvePrivateKey) -> None:
    long_name = "a" * 60 + ".example.com"  # 72 characters > ub-common-name (64)
    parsed = build_csr(ec_key, [long_name, "*.example.com"])
    assert parsed.common_name is None
    assert parsed.names == (long_name, "*.example.com")
    ip_first = build_csr(ec_key, ["2001:DB8::5"])
    assert (ip_first.common_name, ip_first.ip_addresses) == ("2001:db8::5", ("2001:db8::5",))


def test_build_csr_errors(ec_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(CsrError, match="cannot build a CSR without names"):
        build_csr(ec_key, [])
    with pytest.raises(CsrError, match=r"CSR name ‘bad_name\.com’ is not a valid name"):
        build_csr(ec_key, ["ok.example.com", "bad_name.com"])
    with pytest.raises(TypeError, match="not a single string"):
        build_csr(ec_key, "example.com")
