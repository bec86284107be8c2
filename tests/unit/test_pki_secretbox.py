from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from certbroker.pki.secretbox import SecretBox, SecretBoxError, generate_master_key

CTX = b"order:42"


@pytest.fixture()
def keys() -> dict[str, str]:
    return {"k1": generate_master_key(), "k2": generate_master_key()}


def _payload(token: str) -> bytes:
    return base64.urlsafe_b64decode(token.split(":")[2])


def test_generate_master_key() -> None:
    key = generate_master_key()
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert generate_master_key() != key


def test_round_trip_and_format(keys: dict[str, str]) -> None:
    box = SecretBox(keys, current="k2")
    plaintext = b"-----BEGIN PRIVATE KEY-----..."
    token = box.encrypt(plaintext, context=CTX)
    version, key_id, _ = token.split(":")
    assert (version, key_id) == ("v1", "k2")
    assert SecretBox.key_id_of(token) == "k2"
    assert box.key_id_of(token) == "k2"
    assert box.current_key_id == "k2"
    assert box.decrypt(token, context=CTX) == plaintext
    # nonce (12) + ciphertext (as long as the plaintext) + tag (16)
    assert len(_payload(token)) == 12 + len(plaintext) + 16
    # A fresh random nonce each time.
    assert box.encrypt(b"same", context=CTX) != box.encrypt(b"same", context=CTX)


def test_is_real_aes_256_gcm_with_context_as_aad(keys: dict[str, str]) -> None:
    token = SecretBox(keys, current="k1").encrypt(b"secret", context=CTX)
    blob = _payload(token)
    aes = AESGCM(base64.urlsafe_b64decode(keys["k1"]))
    assert aes.decrypt(blob[:12], blob[12:], CTX) == b"secret"


def test_rotation_keeps_old_tokens_readable(keys: dict[str, str]) -> None:
    old = SecretBox({"k1": keys["k1"]}, current="k1").encrypt(b"old", context=CTX)
    rotated = SecretBox(keys, current="k2")
    assert rotated.decrypt(old, context=CTX) == b"old"
    assert rotated.key_id_of(old) != rotated.current_key_id


def test_wrong_context_fails(keys: dict[str, str]) -> None:
    box = SecretBox(keys, current="k1")
    token = box.encrypt(b"secret", context=CTX)
    with pytest.raises(SecretBoxError, match="tampered with or belongs to another context"):
        box.decrypt(token, context=b"order:43")


def test_tampering_fails(keys: dict[str, str]) -> None:
    box = SecretBox(keys, current="k1")
    token = box.encrypt(b"secret", context=CTX)
    blob = bytearray(_payload(token))
    for index in (0, 12, len(blob) - 1):  # nonce, ciphertext, tag
        bad = bytearray(blob)
        bad[index] ^= 0x01
        forged = "v1:k1:" + base64.urlsafe_b64encode(bytes(bad)).decode()
        with pytest.raises(SecretBoxError, match="tampered with"):
            box.decrypt(forged, context=CTX)
    # Relabelling the token with another key id does not help either.
    with pytest.raises(SecretBoxError, match="tampered with"):
        box.decrypt(token.replace("v1:k1:", "v1:k2:"), context=CTX)


def test_unknown_key_id(keys: dict[str, str]) -> None:
    token = SecretBox(keys, current="k2").encrypt(b"secret", context=CTX)
    box = SecretBox({"k1": keys["k1"]}, current="k1")
    with pytest.raises(SecretBoxError, match="unknown master key id 'k2'"):
        box.decrypt(token, context=CTX)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "malformed token: expected 'v1:<key id>:<data>'"),
        ("v2:k1:AAAA", "malformed token: expected 'v1:<key id>:<data>'"),
        ("v1:k1", "malformed token: expected"),
        ("v1:k1:AA:BB", "malformed token: expected"),
        ("v1::AAAA", "malformed token: invalid key id"),
        ("v1:k1:***", "data is not valid urlsafe base64"),
        ("v1:k1:" + "A" * 20, "data is too short"),
    ],
)
def test_malformed_tokens(keys: dict[str, str], token: str, message: str) -> None:
    box = SecretBox(keys, current="k1")
    with pytest.raises(SecretBoxError) as err:
        box.decrypt(token, context=CTX)
    assert message in str(err.value)
    with pytest.raises(SecretBoxError):
        SecretBox.key_id_of(token)


def test_key_validation(keys: dict[str, str]) -> None:
    short = base64.urlsafe_b64encode(b"x" * 16).decode()
    with pytest.raises(ValueError, match=r"master key 'k' decodes to 16 bytes; 32 required"):
        SecretBox({"k": short}, current="k")
    with pytest.raises(ValueError, match="master key 'k' is not valid urlsafe base64"):
        SecretBox({"k": "not base64 at all!"}, current="k")
    with pytest.raises(ValueError, match="current master key id 'k9' is not among"):
        SecretBox(keys, current="k9")
    with pytest.raises(ValueError, match="at least one master key is required"):
        SecretBox({}, current="k1")
    with pytest.raises(ValueError, match="must be 1-64 characters"):
        SecretBox({"a:b": keys["k1"]}, current="a:b")
    # Unpadded keys are accepted (some secret stores strip '=').
    box = SecretBox({"k": keys["k1"].rstrip("=")}, current="k")
    assert box.decrypt(box.encrypt(b"x", context=b""), context=b"") == b"x"
