"""The compromised-key list as the operator sees it (`certbroker policy block-key`).

Revocations for keyCompromise add to it by themselves (lifecycle.revoke_certificates); the key
policy (policy/keys.py) refuses every key on it for every later order, reissue and CSR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from certbroker.policy.keys import spki_sha256
from certbroker.store import compromised_keys
from certbroker.store.db import Database


@dataclass(frozen=True)
class Blocked:
    spki_sha256: str
    added: bool  # False: it was on the list already


def public_key_of(pem: bytes) -> PublicKeyTypes:
    """The public key in a PEM certificate, CSR, public key or (unencrypted) private key."""

    def from_private(data: bytes) -> PublicKeyTypes:
        return serialization.load_pem_private_key(data, password=None).public_key()

    def from_certificate(data: bytes) -> PublicKeyTypes:
        return x509.load_pem_x509_certificate(data).public_key()

    def from_csr(data: bytes) -> PublicKeyTypes:
        return x509.load_pem_x509_csr(data).public_key()

    loaders: tuple[Callable[[bytes], PublicKeyTypes], ...] = (
        from_certificate,
        from_csr,
        serialization.load_pem_public_key,
        from_private,
    )
    for load in loaders:
        try:
            return load(pem)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
    raise ValueError(
        "no certificate, CSR, public key or unencrypted private key found in the PEM text"
    )


def block_key(db: Database, pem: bytes, note: str, now: datetime) -> Blocked:
    digest = spki_sha256(public_key_of(pem))
    with db.transaction() as session:
        added = compromised_keys.add(
            session, digest, source="operator", note=note or "added by the operator", now=now
        )
    return Blocked(digest, added)


def list_blocked(db: Database) -> list[tuple[str, str, str, datetime]]:
    """(SPKI SHA-256, source, note, added at), oldest first."""
    with db.read() as session:
        return [
            (row.spki_sha256, row.source, row.note, row.created_at)
            for row in compromised_keys.listed(session)
        ]
