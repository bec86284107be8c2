"""Key + certificate bundles handed to resellers: PKCS#12 (RFC 7292) and Java KeyStore (JKS)."""

from __future__ import annotations

import secrets
import string
from collections.abc import Sequence
from typing import Final

import jks
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from .keys import PrivateKey, public_key_matches

_PASSWORD_ALPHABET: Final = string.ascii_letters + string.digits
# OpenSSL 3 and Java 17 both read PBES2/AES-256 with an HMAC-SHA256 MAC; the legacy
# RC2/3DES defaults are refused by OpenSSL 3 without the legacy provider.
# 2048 PBKDF2 rounds, OpenSSL's default: the passwords are 16 random characters (~95 bits,
# random_password), which stretching cannot strengthen; 50,000 rounds cost 12 ms of CPU per
# bundle for nothing (docs/PERFORMANCE.md).
_PKCS12_KDF_ROUNDS: Final = 2048


def random_password(length: int = 16) -> str:
    """A random password of letters and digits (about 5.95 bits per character)."""
    if length < 1:
        raise ValueError("password length must be at least 1")
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


def _check_inputs(key: PrivateKey, cert: x509.Certificate, password: str) -> None:
    if not password:
        raise ValueError("bundle password must not be empty")
    if not public_key_matches(key, cert.public_key()):
        raise ValueError("private key does not match the certificate's public key")


def make_pkcs12(
    key: PrivateKey,
    cert: x509.Certificate,
    chain: Sequence[x509.Certificate],
    password: str,
    friendly_name: str,
) -> bytes:
    """PKCS#12 with the key, the certificate and the chain (issuer first)."""
    _check_inputs(key, cert, password)
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(_PKCS12_KDF_ROUNDS)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password.encode("utf-8"))
    )
    return pkcs12.serialize_key_and_certificates(
        name=friendly_name.encode("utf-8") if friendly_name else None,
        key=key,
        cert=cert,
        cas=list(chain) or None,
        encryption_algorithm=encryption,
    )


def make_jks(
    key: PrivateKey,
    cert: x509.Certificate,
    chain: Sequence[x509.Certificate],
    password: str,
    alias: str,
) -> bytes:
    """JKS keystore with one private key entry; the entry uses the store password.

    pyjks lower-cases the alias (keytool does the same). The key is given as PKCS#8, so the
    algorithm identifier is kept and RSA and EC keys both work.
    """
    _check_inputs(key, cert, password)
    if not alias:
        raise ValueError("keystore alias must not be empty")
    der = serialization.Encoding.DER
    certs = [cert.public_bytes(der), *(c.public_bytes(der) for c in chain)]
    pkcs8 = key.private_bytes(der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    entry = jks.PrivateKeyEntry.new(alias, certs, pkcs8, "pkcs8")
    store = jks.KeyStore.new("jks", [entry])
    data: bytes = store.saves(password)
    return data
