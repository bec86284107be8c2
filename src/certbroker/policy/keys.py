"""Which public keys certbroker may certify (BR 6.1.1.3, 6.1.5, 6.1.6).

`key_refusal` is the one answer, asked for a customer's CSR and private key, for keys the
platform generates, and by the certificate profile before signing:
- types and sizes (BR 6.1.5): RSA 2048-8192 bits, a multiple of 8; ECDSA P-256 or P-384;
- the RSA public exponent (BR 6.1.6 asks for an odd number >= 3; we take the NIST SP 800-89
  range, odd and 2^16+1 <= e < 2^256, so e = 3 is refused);
- weak keys (BR 6.1.1.3 (4)): ROCA, close primes (Fermat, 100 rounds), small or shared factors,
  through the `badkeys` package; and, when its blocklist data is installed, the published
  compromised keys it lists, Debian's weak keys (CVE-2008-0166) among them;
- keys known to be compromised here: the caller says whether the key's SPKI hash is on the
  compromised-key list (every key revoked for keyCompromise, plus the operator's additions).
"""

from __future__ import annotations

import hashlib
import json
import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from badkeys.checks import checkrsa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from certbroker.pki.keys import describe_key

KeyRule = Literal["key-type", "key-size", "curve", "exponent", "weak", "compromised"]

RSA_MIN_BITS: Final = 2048
RSA_MAX_BITS: Final = 8192  # larger keys buy nothing here and make every signature check slow
ALLOWED_CURVES: Final = frozenset({"secp256r1", "secp384r1"})
_CURVE_LABELS: Final = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
MIN_EXPONENT: Final = 65537
# badkeys checks that need no downloaded data; "blocklist" is asked separately (WeakKeyList).
_BADKEYS_CHECKS: Final = ("roca", "fermat", "smallfactors", "sharedprimes", "smalld", "rsainvalid")
_WHY: Final = {
    "roca": "it was made by a library with the ROCA flaw (CVE-2017-15361)",
    "fermat": "its primes are so close that it factors at once (close primes, Fermat)",
    "smallfactors": "its modulus has a small prime factor",
    "sharedprimes": "it shares a prime with keys published as broken",
    "smalld": "its private exponent is small enough to recover (Wiener)",
    "rsainvalid": "its public exponent is invalid",
}


class KeyRefused(ValueError):
    """A public key certbroker will not certify, with the rule that refuses it and why."""

    def __init__(self, rule: KeyRule, reason: str) -> None:
        super().__init__(reason)
        self.rule: KeyRule = rule
        self.reason = reason


def spki_sha256(public_key: PublicKeyTypes) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo: how the compromised-key list names a key."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class WeakKeyList:
    """badkeys' blocklist (`badkeys --update-bl` writes `blocklist.dat` and
    `badkeysdata.json`): sorted 16-byte records, the first 15 bytes of SHA-256 over the RSA
    modulus or EC x coordinate (big-endian, minimal length) and a list id."""

    data: bytes | mmap.mmap  # mapped, not read: the published list is hundreds of megabytes
    names: dict[int, str]

    @classmethod
    def load(cls, directory: Path) -> WeakKeyList | None:
        """The list in `directory`, or None when it is not installed there."""
        try:
            meta = json.loads((directory / "badkeysdata.json").read_text("utf-8"))
            with (directory / "blocklist.dat").open("rb") as f:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (FileNotFoundError, ValueError):
            return None
        names = {int(b["id"]): str(b["name"]) for b in meta.get("blocklists", [])}
        return cls(data, names)

    def lookup(self, value: int) -> str | None:
        """The name of the list that holds `value`, or None."""
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        wanted = hashlib.sha256(raw).digest()[:15]
        low, high = 0, len(self.data) // 16 - 1
        while low <= high:
            middle = (low + high) // 2
            found = self.data[middle * 16 : middle * 16 + 15]
            if found == wanted:
                list_id = self.data[middle * 16 + 15]
                return self.names.get(list_id, f"list {list_id}")
            if wanted > found:
                low = middle + 1
            else:
                high = middle - 1
        return None


def curve_label(curve: ec.EllipticCurve) -> str:
    return _CURVE_LABELS.get(curve.name, curve.name)


def key_refusal(
    public_key: PublicKeyTypes,
    *,
    compromised: bool = False,
    weak_keys: WeakKeyList | None = None,
) -> KeyRefused | None:
    """Why `public_key` may not be certified, or None. `compromised`: its `spki_sha256` is on
    the compromised-key list (the caller looks it up)."""
    if compromised:
        return KeyRefused(
            "compromised",
            "this key is known to be compromised (a certificate for it was revoked for "
            "keyCompromise, or the CA was told so) and cannot be certified again (BR 6.1.1.3); "
            "generate a new key",
        )
    if isinstance(public_key, rsa.RSAPublicKey):
        problem = _rsa_refusal(public_key)
        value = public_key.public_numbers().n
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        problem = _ec_refusal(public_key)
        value = public_key.public_numbers().x
    else:
        return KeyRefused(
            "key-type",
            f"{describe_key(public_key)} keys are not supported; "
            "use RSA (2048-8192 bits) or ECDSA P-256/P-384 (BR 6.1.5)",
        )
    if problem is not None:
        return problem
    listed = weak_keys.lookup(value) if weak_keys is not None else None
    if listed is not None:
        return KeyRefused(
            "weak",
            f"this key is on the published list of compromised keys ({listed}) and cannot "
            "be certified (BR 6.1.1.3); generate a new key",
        )
    return None


def check_key(
    public_key: PublicKeyTypes,
    *,
    compromised: bool = False,
    weak_keys: WeakKeyList | None = None,
) -> None:
    """`key_refusal`, raised."""
    problem = key_refusal(public_key, compromised=compromised, weak_keys=weak_keys)
    if problem is not None:
        raise problem


def _rsa_refusal(key: rsa.RSAPublicKey) -> KeyRefused | None:
    bits = key.key_size
    if bits < RSA_MIN_BITS:
        return KeyRefused("key-size", f"RSA key is {bits} bits; at least {RSA_MIN_BITS} required")
    if bits > RSA_MAX_BITS:
        return KeyRefused("key-size", f"RSA key is {bits} bits; at most {RSA_MAX_BITS} supported")
    if bits % 8:
        return KeyRefused(
            "key-size", f"RSA key is {bits} bits; the size must be a multiple of 8 (BR 6.1.5)"
        )
    numbers = key.public_numbers()
    e = numbers.e
    if e % 2 == 0 or e < MIN_EXPONENT or e.bit_length() > 256:
        shown = e if e.bit_length() <= 64 else f"a {e.bit_length()}-bit number"
        return KeyRefused(
            "exponent",
            f"RSA public exponent {shown} is not allowed; use 65537 "
            "(an odd number from 65537 to 2^256, BR 6.1.6, NIST SP 800-89)",
        )
    found = checkrsa(numbers.n, e=e, checks=_BADKEYS_CHECKS)
    if found:
        check = next(iter(found))
        why = _WHY.get(check, f"the {check} check finds it weak")
        return KeyRefused("weak", f"this RSA key is weak: {why} (BR 6.1.1.3); generate a new key")
    return None


def _ec_refusal(key: ec.EllipticCurvePublicKey) -> KeyRefused | None:
    name = key.curve.name
    if name not in ALLOWED_CURVES:
        label = curve_label(key.curve)
        shown = label if label == name else f"{label} ({name})"
        return KeyRefused(
            "curve", f"EC key uses curve {shown}; only P-256 and P-384 are accepted (BR 6.1.5)"
        )
    return None
