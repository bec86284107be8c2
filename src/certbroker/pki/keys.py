"""Private key generation and (de)serialisation, for the key types certbroker handles (RSA,
ECDSA). Which sizes, curves and exponents may be certified is the key policy's
(certbroker.policy.keys), asked by the orders layer and the certificate profile.
"""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import (
    dsa,
    ec,
    ed448,
    ed25519,
    rsa,
    x448,
    x25519,
)
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

KEY_SPECS: Final = ("rsa2048", "rsa3072", "rsa4096", "ec256", "ec384")

# A PEM private key of the largest accepted size (RSA 8192) is about 6.5 KB.
MAX_KEY_PEM_BYTES: Final = 64 * 1024

# PKCS#8 and the traditional OpenSSL formats; DSA is listed so it reaches the key policy message.
_KEY_LABELS: Final = frozenset(
    {"PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "DSA PRIVATE KEY"}
)
_CURVE_NAMES: Final = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_SPECS: Final[dict[str, int | ec.EllipticCurve]] = {
    "rsa2048": 2048,
    "rsa3072": 3072,
    "rsa4096": 4096,
    "ec256": ec.SECP256R1(),
    "ec384": ec.SECP384R1(),
}


class KeyFormatError(ValueError):
    """A private key could not be loaded or is not acceptable under the key policy."""


def generate_private_key(spec: str) -> PrivateKey:
    """Generate a new key; ``spec`` is one of :data:`KEY_SPECS`."""
    param = _SPECS.get(spec)
    if param is None:
        raise ValueError(f"unknown key spec {spec!r}; expected one of {', '.join(KEY_SPECS)}")
    if isinstance(param, int):
        return rsa.generate_private_key(public_exponent=65537, key_size=param)
    return ec.generate_private_key(param)


def private_key_to_pem(key: PrivateKey) -> str:
    """Serialise as unencrypted PKCS#8 PEM (``-----BEGIN PRIVATE KEY-----``)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _curve_label(curve: ec.EllipticCurve) -> str:
    return _CURVE_NAMES.get(curve.name, curve.name)


def describe_key(public_key: PublicKeyTypes | PrivateKeyTypes) -> str:
    """Human-readable key type, e.g. ``"RSA 2048"`` or ``"ECDSA P-256"``."""
    key: PublicKeyTypes | PrivateKeyTypes = public_key
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"ECDSA {_curve_label(key.curve)}"
    if isinstance(key, dsa.DSAPrivateKey | dsa.DSAPublicKey):
        return f"DSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, x25519.X25519PrivateKey | x25519.X25519PublicKey):
        return "X25519"
    if isinstance(key, x448.X448PrivateKey | x448.X448PublicKey):
        return "X448"
    return type(key).__name__


def _supported(key: PrivateKeyTypes) -> PrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyFormatError(f"{describe_key(key)} keys are not supported; use RSA or ECDSA")
    return key


def _pem_label(data: bytes) -> str | None:
    start = data.find(b"-----BEGIN ")
    if start < 0:
        return None
    end = data.find(b"-----", start + 11)
    if end < 0:
        return None
    return data[start + 11 : end].decode("ascii", "replace").strip()


def load_private_key_pem(pem: str | bytes, *, trusted: bool = False) -> PrivateKey:
    """Load an unencrypted PEM private key (PKCS#8, or traditional RSA/EC) and apply the policy.

    ``trusted=True`` is for keys certbroker generated itself: the full RSA consistency check
    (tens of milliseconds) is skipped. Never pass it for keys that came from outside.
    """
    data = pem.encode("utf-8") if isinstance(pem, str) else bytes(pem)
    if not data.strip():
        raise KeyFormatError("private key is empty")
    if len(data) > MAX_KEY_PEM_BYTES:
        raise KeyFormatError(
            f"private key is {len(data)} bytes; at most {MAX_KEY_PEM_BYTES} accepted"
        )
    label = _pem_label(data)
    if label is None:
        raise KeyFormatError("no PEM block found; expected -----BEGIN PRIVATE KEY-----")
    if label == "ENCRYPTED PRIVATE KEY":
        raise KeyFormatError("private key is encrypted; supply it without a passphrase")
    if not label.endswith("PRIVATE KEY"):
        raise KeyFormatError(f"expected a PRIVATE KEY PEM block, found {label}")
    if label not in _KEY_LABELS:
        raise KeyFormatError(
            f"unsupported private key format {label}; expected PKCS#8 "
            "(-----BEGIN PRIVATE KEY-----) or a traditional RSA/EC PEM key"
        )
    try:
        key = serialization.load_pem_private_key(
            data, password=None, unsafe_skip_rsa_key_validation=trusted
        )
    except TypeError as exc:
        # Raised for a traditional PEM with a "Proc-Type: 4,ENCRYPTED" header.
        raise KeyFormatError("private key is encrypted; supply it without a passphrase") from exc
    except UnsupportedAlgorithm as exc:
        raise KeyFormatError(f"private key type is not supported ({label})") from exc
    except ValueError as exc:
        raise KeyFormatError(
            f"private key does not parse ({label} block is corrupted or inconsistent)"
        ) from exc
    return _supported(key)


def public_key_matches(key: PrivateKey, public_key: PublicKeyTypes) -> bool:
    """True when ``public_key`` belongs to ``key`` (SubjectPublicKeyInfo DER equality)."""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    try:
        return key.public_key().public_bytes(der, spki) == public_key.public_bytes(der, spki)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
