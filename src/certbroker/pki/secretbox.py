"""Encryption at rest of private keys: AES-256-GCM (NIST SP 800-38D) with named master keys.

Tokens look like ``v1:<key id>:<urlsafe base64 of nonce || ciphertext+tag>``. The key id lets
master keys rotate: old tokens stay readable while new ones use the current key. The caller's
``context`` (e.g. the order id) is the associated data, so a token copied to another row does not
decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION: Final = "v1"
_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12  # 96-bit random nonce, SP 800-38D 8.2.2
_TAG_BYTES: Final = 16
_KEY_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class SecretBoxError(ValueError):
    """A token could not be decrypted (malformed, unknown key id, tampered or wrong context)."""


def generate_master_key() -> str:
    """A new random 256-bit master key, urlsafe base64."""
    return base64.urlsafe_b64encode(os.urandom(_KEY_BYTES)).decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict urlsafe base64; missing '=' padding is tolerated."""
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)


def _decode_key(key_id: str, encoded: str) -> bytes:
    try:
        raw = _b64decode(encoded.strip())
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"master key {key_id!r} is not valid urlsafe base64") from exc
    if len(raw) != _KEY_BYTES:
        raise ValueError(
            f"master key {key_id!r} decodes to {len(raw)} bytes; {_KEY_BYTES} required (AES-256)"
        )
    return raw


class SecretBox:
    """Encrypts with the ``current`` key, decrypts with any of ``keys``."""

    def __init__(self, keys: Mapping[str, str], current: str) -> None:
        if not keys:
            raise ValueError("at least one master key is required")
        self._ciphers: dict[str, AESGCM] = {}
        self._derivable: dict[str, bytes] = {}
        for key_id, encoded in keys.items():
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(
                    f"master key id {key_id!r} must be 1-64 characters of [A-Za-z0-9_.-]"
                )
            raw = _decode_key(key_id, encoded)
            self._ciphers[key_id] = AESGCM(raw)
            self._derivable[key_id] = raw
        if current not in self._ciphers:
            raise ValueError(f"current master key id {current!r} is not among the configured keys")
        self._current = current

    @property
    def current_key_id(self) -> str:
        return self._current

    def encrypt(self, plaintext: bytes, *, context: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self._current].encrypt(nonce, plaintext, context)
        payload = base64.urlsafe_b64encode(nonce + sealed).decode("ascii")
        return f"{_VERSION}:{self._current}:{payload}"

    def derive_key(self, purpose: bytes) -> bytes:
        """A 256-bit key for `purpose` derived from the current master key (HKDF-SHA256,
        RFC 5869, `purpose` as info), so other secrets need no key of their own. Values made
        with it must be stored: after a rotation the same purpose derives another key."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=purpose)
        return hkdf.derive(self._derivable[self._current])

    def decrypt(self, token: str, *, context: bytes) -> bytes:
        key_id, blob = _split(token)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise SecretBoxError(f"token was encrypted with unknown master key id {key_id!r}")
        try:
            return cipher.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], context)
        except InvalidTag as exc:
            raise SecretBoxError(
                "decryption failed: the token was tampered with or belongs to another context"
            ) from exc

    @staticmethod
    def key_id_of(token: str) -> str:
        """Id of the master key a token was encrypted with (to find tokens needing rotation)."""
        return _split(token)[0]


def _split(token: str) -> tuple[str, bytes]:
    parts = token.split(":") if isinstance(token, str) else []
    if len(parts) != 3 or parts[0] != _VERSION:
        raise SecretBoxError(f"malformed token: expected '{_VERSION}:<key id>:<data>'")
    key_id, payload = parts[1], parts[2]
    if not _KEY_ID.fullmatch(key_id):
        raise SecretBoxError("malformed token: invalid key id")
    try:
        blob = _b64decode(payload)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise SecretBoxError("malformed token: data is not valid urlsafe base64") from exc
    if len(blob) < _NONCE_BYTES + _TAG_BYTES:
        raise SecretBoxError("malformed token: data is too short")
    return key_id, blob
