"""What the registration authority needs from outside, gathered once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from certbroker.catalog.catalog import Catalog
from certbroker.clock import Clock
from certbroker.issuance.builtin import BuiltinCa
from certbroker.pki.secretbox import SecretBox
from certbroker.store.db import Database


@dataclass(frozen=True)
class Policy:
    """Operator settings that orders/ applies (taken from Settings by the app factory)."""

    dcv_window: timedelta = timedelta(days=30)
    dcv_retry: tuple[timedelta, ...] = (
        timedelta(minutes=1),
        timedelta(minutes=5),
        timedelta(minutes=15),
        timedelta(hours=1),
    )
    dcv_ca_domain: str = "sectigo.com"
    dcv_http_port: int = 80
    dcv_https_port: int = 443
    dcv_timeout_seconds: float = 10.0
    dcv_allow_networks: tuple[str, ...] = ()
    dcv_resolver: str | None = None
    cancel_refund_window: timedelta = timedelta(days=30)
    lease: timedelta = timedelta(minutes=2)
    utc_offset_hours: int = 8
    default_key_spec: str = "rsa2048"
    approver_local_parts: tuple[str, ...] = field(
        default=("admin", "administrator", "webmaster", "hostmaster", "postmaster")
    )


@dataclass
class OrdersContext:
    db: Database
    catalog: Catalog
    ca: BuiltinCa
    box: SecretBox
    clock: Clock
    policy: Policy
