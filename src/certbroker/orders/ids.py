"""Identifiers shown to clients: opaque and unguessable, never a database sequence."""

from __future__ import annotations

import secrets
import string
from datetime import datetime

_LOWER = string.ascii_lowercase


def new_cert_id(now: datetime) -> str:
    # Like the live service: yyMMdd + 10 lowercase letters (26^10 ≈ 2^47 per day).
    return now.strftime("%y%m%d") + "".join(secrets.choice(_LOWER) for _ in range(10))


def new_order_num(now: datetime) -> str:
    return "CB" + now.strftime("%y%m%d%H%M%S") + f"{secrets.randbelow(10**6):06d}"


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(16)


def new_api_token() -> str:
    return "cb_" + secrets.token_urlsafe(32)
