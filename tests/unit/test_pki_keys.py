from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from certbroker.pki.keys import (
    KEY_SPECS,
    KeyFormatError,
    describe_key,
    generate_private_key,
    load_private_key_pem,
    private_key_to_pem,
    public_key_matches,
)
from certbroker.policy.keys import key_refusal

EXPECTED_DESCRIPTIONS = {
    "rsa2048": "RSA 2048",
    "rsa3072": "RSA 3072",
    "rsa4096": "RSA 4096",
    "ec256": "ECDSA P-256",
    "ec384": "ECDSA P-384",
}


def _pem(key: object, fmt: serialization.PrivateFormat, password: bytes | None = None) -> str:
    assert isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | dsa.DSAPrivateKey
        | ed25519.Ed25519PrivateKey,
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption).decode("ascii")


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("spec", KEY_SPECS)
def test_generate_round_trip(spec: str) -> None:
    key = generate_private_key(spec)
    assert describe_key(key.public_key()) == EXPECTED_DESCRIPTIONS[spec]
    pem = private_key_to_pem(key)
    assert pem.startswith("-----BEGIN PRIVATE KEY-----\n")
    for trusted in (False, True):
        loaded = load_private_key_pem(pem, trusted=trusted)
        assert public_key_matches(loaded, key.public_key())
        assert private_key_to_pem(loaded) == pem
    assert load_private_key_pem(pem.encode("ascii")).public_key() == key.public_key()


def test_unknown_spec() -> None:
    with pytest.raises(ValueError, match=r"unknown key spec 'rsa1024'; expected one of rsa2048"):
        generate_private_key("rsa1024")


def test_traditional_formats_are_accepted(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    rsa_pem = _pem(rsa_key, serialization.PrivateFormat.TraditionalOpenSSL)
    ec_pem = _pem(ec_key, serialization.PrivateFormat.TraditionalOpenSSL)
    assert rsa_pem.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert ec_pem.startswith("-----BEGIN EC PRIVATE KEY-----")
    assert public_key_matches(load_private_key_pem(rsa_pem), rsa_key.public_key())
    assert public_key_matches(load_private_key_pem(ec_pem), ec_key.public_key())


def test_public_key_matches_rejects_other_keys(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    assert public_key_matches(ec_key, ec_key.public_key())
    assert not public_key_matches(ec_key, other.public_key())
    assert not public_key_matches(ec_key, rsa_key.public_key())
    assert not public_key_matches(rsa_key, ed25519.Ed25519PrivateKey.generate().public_key())


def test_describe_other_key_types(ec_key: ec.EllipticCurvePrivateKey) -> None:
    assert describe_key(ed25519.Ed25519PrivateKey.generate().public_key()) == "Ed25519"
    assert describe_key(ec.generate_private_key(ec.SECP521R1()).public_key()) == "ECDSA P-521"
    assert describe_key(ec.generate_private_key(ec.SECP256K1()).public_key()) == "ECDSA secp256k1"
    assert describe_key(ec_key) == "ECDSA P-256"  # a private key is described too


@pytest.fixture(scope="module")
def bad_pems(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    pkcs8 = serialization.PrivateFormat.PKCS8
    trad = serialization.PrivateFormat.TraditionalOpenSSL
    good = _pem(ec_key, pkcs8)
    body = good.splitlines()
    return {
        "empty": "  \n",
        "not pem": "hello",
        "certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "encrypted pkcs8": _pem(ec_key, pkcs8, b"secret"),
        "encrypted traditional": _pem(rsa_key, trad, b"secret"),
        "corrupted": "\n".join([body[0], body[1][:10] + "AAAA" + body[1][14:], *body[2:]]),
        "dsa": _pem(dsa.generate_private_key(2048), pkcs8),
        "openssh": _pem(ec_key, serialization.PrivateFormat.OpenSSH),
        "ed25519": _pem(ed25519.Ed25519PrivateKey.generate(), pkcs8),
        "rsa1024": _pem(rsa.generate_private_key(65537, 1024), pkcs8),  # noqa: S505
        "p521": _pem(ec.generate_private_key(ec.SECP521R1()), pkcs8),
        "huge": good + "\n" * (70 * 1024),
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "private key is empty"),
        ("not pem", "no PEM block found; expected -----BEGIN PRIVATE KEY-----"),
        ("certificate", "expected a PRIVATE KEY PEM block, found CERTIFICATE"),
        ("openssh", "unsupported private key format OPENSSH PRIVATE KEY; expected PKCS#8"),
        ("encrypted pkcs8", "private key is encrypted; supply it without a passphrase"),
        ("encrypted traditional", "private key is encrypted; supply it without a passphrase"),
        ("corrupted", "private key does not parse (PRIVATE KEY block is corrupted"),
        ("dsa", "DSA 2048 keys are not supported; use RSA or ECDSA"),
        ("ed25519", "Ed25519 keys are not supported"),
        ("huge", "bytes; at most 65536 accepted"),
    ],
)
def test_load_private_key_pem_rejects(bad_pems: dict[str, str], case: str, message: str) -> None:
    with pytest.raises(KeyFormatError) as err:
        load_private_key_pem(bad_pems[case])
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("rsa1024", "RSA key is 1024 bits; at least 2048 required"),
        ("p521", "EC key uses curve P-521 (secp521r1); only P-256 and P-384 are accepted"),
    ],
)
def test_loaded_keys_outside_the_key_policy(
    bad_pems: dict[str, str], case: str, message: str
) -> None:
    # pki loads them; sizes and curves are the key policy's to refuse (policy/keys.py).
    refusal = key_refusal(load_private_key_pem(bad_pems[case]).public_key())
    assert refusal is not None
    assert message in refusal.reason


def test_trusted_skips_rsa_consistency_check(rsa_key: rsa.RSAPrivateKey) -> None:
    # An RSA key whose CRT exponent is wrong: full validation must catch it, trusted mode
    # (for keys certbroker generated itself) deliberately does not look.
    numbers = rsa_key.private_numbers()
    broken = rsa.RSAPrivateNumbers(
        p=numbers.p,
        q=numbers.q,
        d=numbers.d,
        dmp1=numbers.dmp1 ^ 2,
        dmq1=numbers.dmq1,
        iqmp=numbers.iqmp,
        public_numbers=numbers.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    pem = _pem(broken, serialization.PrivateFormat.PKCS8)
    with pytest.raises(KeyFormatError, match="private key does not parse"):
        load_private_key_pem(pem)
    assert load_private_key_pem(pem, trusted=True).key_size == 2048
