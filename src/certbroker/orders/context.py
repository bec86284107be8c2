"""What the registration authority needs from outside, gathered once at start-up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from certbroker.catalog.catalog import Catalog
from certbroker.clock import Clock
from certbroker.dns_delegation.publisher import DnsPublisher
from certbroker.issuance.acme_upstream import UpstreamClients, UpstreamConfig
from certbroker.issuance.builtin import BuiltinCa
from certbroker.orders.upstream_health import UpstreamHealth
from certbroker.pki.key_pool import KeyPool
from certbroker.pki.secretbox import SecretBox
from certbroker.policy.keys import WeakKeyList
from certbroker.policy.names import DEFAULT_POLICY, NamePolicy
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
    # Checks in flight at once: in all, of one account, and against one target (the name
    # checked), so one tenant's hanging hosts cannot hold up another tenant's orders.
    dcv_max_checks: int = 50
    dcv_max_per_account: int = 20
    dcv_max_per_target: int = 2
    # Orders of a product priced 0 (free trials) one account may place per day (orders/free_orders).
    free_orders_per_day: int = 20
    cancel_refund_window: timedelta = timedelta(days=30)
    # Automatic reissue inside a subscription starts this long before a certificate ends.
    renew_lead: timedelta = timedelta(days=30)
    # renew (SPEC 4.8) is accepted this long before the subscription ends.
    renew_window: timedelta = timedelta(days=90)
    # CAA (RFC 8659): the issuer domains this CA answers to, and the wait after a refusal.
    caa_domains: tuple[str, ...] = ("certbroker.example.com",)
    caa_retry: timedelta = timedelta(minutes=15)
    lease: timedelta = timedelta(minutes=2)
    utc_offset_hours: int = 8
    default_key_spec: str = "rsa2048"
    approver_local_parts: tuple[str, ...] = field(
        default=("admin", "administrator", "webmaster", "hostmaster", "postmaster")
    )
    # Approver e-mail (BR 3.2.2.4.4): where mail goes out, and the base of approval links.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_from: str = "certbroker@example.com"
    public_url: str = "http://certbroker.example.com"
    # The issuance policy's operator inputs (policy/): the name blocklist, and the published
    # weak-key list when installed (None: only the checks that need no data run).
    names: NamePolicy = DEFAULT_POLICY
    weak_keys: WeakKeyList | None = field(default=None, compare=False)


@dataclass
class OrdersContext:
    db: Database
    catalog: Catalog
    ca: BuiltinCa
    box: SecretBox
    clock: Clock
    policy: Policy
    # Called after a commit that made work due now (place, updateDCV, reissue...): the
    # in-process worker starts a pass at once instead of at its next poll.
    wake: Callable[[], None] = field(default=lambda: None)
    # RSA keys made ahead for `place` without a CSR (pki/key_pool.py); None: made inline.
    key_pool: KeyPool | None = None
    # Upstream ACME CAs by name (docs/UPSTREAMS.md), and their clients (one per thread).
    upstreams: dict[str, UpstreamConfig] = field(default_factory=dict)
    upstream_clients: UpstreamClients = field(default_factory=UpstreamClients)
    # Back-off state and circuit breakers of the upstreams, in this process.
    upstream_health: UpstreamHealth = field(default_factory=UpstreamHealth)
    # dns-01 through the persistent CNAME delegation (docs/DNS-DELEGATION.md): the zone
    # ("" = not offered) and the publisher that puts TXT values into it.
    dcv_zone: str = ""
    dns_publisher: DnsPublisher | None = None
    dns_txt_ttl: int = 60
