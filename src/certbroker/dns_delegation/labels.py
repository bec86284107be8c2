"""The delegation label of an (account, base domain) and the record the customer publishes.

label = base32(HMAC-SHA256(secret, f"{account_id}|{base_domain}"))[:26], lower case: 130 bits,
letters a-z and digits 2-7, a valid DNS label (RFC 1035 2.3.1). Bound to the tenant and not
guessable without the secret, so one account cannot point a name at another account's label.
The secret is derived from the master key (SecretBox.derive_key), and the label is computed
once and stored (store/dns_delegation.py): orders, upstream CAs, reissues and master-key
rotations all reuse the stored label, so the customer's CNAME stays valid forever.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

LABEL_CHARS = 26
CHALLENGE_LABEL = "_acme-challenge"  # RFC 8555 8.4
LABEL_KEY_PURPOSE = b"certbroker dcv-delegation label v1"


def base_domain(name: str) -> str:
    """The name a delegation is for: lower case, no final dot, without `*.` (one CNAME covers
    `example.com` and `*.example.com`: both are validated at `_acme-challenge.example.com`)."""
    text = name.strip().lower().rstrip(".")
    return text[2:] if text.startswith("*.") else text


def make_label(secret: bytes, account_id: int, base: str) -> str:
    digest = hmac.new(secret, f"{account_id}|{base}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii")[:LABEL_CHARS].lower()


def challenge_name(base: str) -> str:
    """Where the customer's CNAME lives: `_acme-challenge.<base>`."""
    return f"{CHALLENGE_LABEL}.{base}"


def target_name(label: str, zone: str) -> str:
    """The CNAME target and the TXT owner: `<label>.<zone>.` (absolute, as shown to customers)."""
    return f"{label}.{zone.strip().lower().rstrip('.')}."
