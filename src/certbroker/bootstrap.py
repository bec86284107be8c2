"""First start and every start: data directory, master key, schema, CA, first account."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import func, select

from certbroker import keyring
from certbroker.catalog.catalog import Catalog, UpstreamLimits
from certbroker.clock import Clock, SystemClock
from certbroker.dns_delegation.publishers import make_publisher
from certbroker.issuance.acme_upstream import UpstreamConfig
from certbroker.issuance.builtin import BuiltinCa
from certbroker.orders import accounts
from certbroker.orders.context import OrdersContext, Policy
from certbroker.pki.key_pool import KeyPool
from certbroker.pki.secretbox import SecretBox
from certbroker.policy import public_suffixes
from certbroker.policy.keys import WeakKeyList
from certbroker.policy.names import NamePolicy, parse_blocklist
from certbroker.settings import Settings
from certbroker.store.db import Database
from certbroker.store.models import Account

log = structlog.get_logger("certbroker.policy")

MASTER_KEY_FILE = keyring.LEGACY_KEY_FILE
MASTER_KEY_ID = keyring.LEGACY_KEY_ID


def master_keys(settings: Settings) -> SecretBox:
    """The master-key ring (keyring.py): from settings, else the data directory's (made on
    first start), reloaded by the running process when `certbroker keys rotate` changes it."""
    return keyring.open_ring(settings)


def issuance_policy(settings: Settings) -> tuple[NamePolicy, WeakKeyList | None]:
    """The name policy and weak-key list of `settings`; loads the Public Suffix List now, so a
    bad list file stops start-up."""
    public_suffixes.use_list_file(settings.public_suffix_list)
    weak_keys = WeakKeyList.load(settings.effective_weak_keys_dir)
    if weak_keys is None:
        log.warning(
            "weak-key list not installed: Debian weak keys and other published compromised "
            "keys are not refused (docs/SETTINGS.md, WEAK_KEYS_DIR)",
            directory=str(settings.effective_weak_keys_dir),
        )
    return NamePolicy(blocked=parse_blocklist(settings.name_blocklist)), weak_keys


def policy_from(settings: Settings) -> Policy:
    names, weak_keys = issuance_policy(settings)
    return Policy(
        dcv_window=timedelta(days=settings.dcv_window_days),
        dcv_retry=tuple(timedelta(seconds=s) for s in settings.dcv_retry_seconds)
        or Policy.dcv_retry,
        dcv_ca_domain=settings.dcv_ca_domain,
        dcv_http_port=settings.dcv_http_port,
        dcv_https_port=settings.dcv_https_port,
        dcv_timeout_seconds=settings.dcv_timeout_seconds,
        dcv_allow_networks=tuple(settings.dcv_allow_networks),
        dcv_resolver=settings.dcv_resolver,
        dcv_max_checks=settings.dcv_max_checks,
        dcv_max_per_account=settings.dcv_max_per_account,
        dcv_max_per_target=settings.dcv_max_per_target,
        free_orders_per_day=settings.free_orders_per_day,
        cancel_refund_window=timedelta(days=settings.cancel_refund_days),
        utc_offset_hours=settings.api_utc_offset_hours,
        lease=timedelta(seconds=settings.worker_lease_seconds),
        smtp_host=settings.smtp_host,
        smtp_port=settings.smtp_port,
        smtp_from=settings.smtp_from,
        public_url=settings.public_url,
        caa_domains=tuple(settings.caa_domains),
        renew_lead=timedelta(days=settings.renew_lead_days),
        names=names,
        weak_keys=weak_keys,
    )


def ca_passphrase(settings: Settings) -> bytes | None:
    secret = settings.ca_key_passphrase
    return secret.get_secret_value().encode("utf-8") if secret is not None else None


def prepare_data_dir(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)


def open_database(settings: Settings, *, migrate: bool = True) -> Database:
    prepare_data_dir(settings)
    db = Database(settings.effective_database_url)
    if migrate:
        db.upgrade()
    return db


def key_pool_from(settings: Settings) -> KeyPool | None:
    """The pool of RSA keys made ahead (pki/key_pool.py); inert until used or until the app's
    lifespan starts it, so CLI commands that never place an order start no process."""
    return KeyPool(settings.key_pool_size) if settings.key_pool_size > 0 else None


def upstream_limits(settings: Settings) -> dict[str, UpstreamLimits]:
    """What each configured upstream certifies, as the catalog checks products against it."""
    curves = {"P-256": "ec256", "P-384": "ec384"}
    return {
        name: UpstreamLimits(
            max_identifiers=up.capabilities.max_identifiers,
            wildcard=up.capabilities.wildcard == "dns-01",
            ip=up.capabilities.ip,
            key_types=frozenset(
                [f"rsa{bits}" for bits in up.capabilities.rsa]
                + [curves[c] for c in up.capabilities.ec]
            ),
        )
        for name, up in settings.upstreams.items()
    }


def upstream_configs(settings: Settings) -> dict[str, UpstreamConfig]:
    """The upstream ACME CAs of the settings, as the ACME wrapper takes them."""
    limits = upstream_limits(settings)
    return {
        name: UpstreamConfig(
            name=name,
            directory=up.directory,
            contact=up.contact,
            eab_kid=up.eab_kid,
            eab_hmac_key=up.hmac_key(),
            ca_bundle=up.ca_bundle,
            account_key=up.account_key,
            caa_identities=tuple(up.caa_identities),
            timeout_seconds=up.timeout_seconds,
            max_concurrent_steps=up.max_concurrent_steps,
            circuit_failures=up.circuit_failures,
            circuit_cooldown_seconds=up.circuit_cooldown_seconds,
            key_types=tuple(sorted(limits[name].key_types)),
        )
        for name, up in settings.upstreams.items()
    }


def load_catalog(settings: Settings) -> Catalog:
    """The shipped catalogue merged with CATALOG, checked against the upstreams: a product
    promising what its upstream cannot certify stops start-up (CatalogError)."""
    catalog = Catalog.load(settings.catalog)
    catalog.check_upstreams(upstream_limits(settings))
    return catalog


def build_context(settings: Settings, clock: Clock | None = None) -> OrdersContext:
    clock = clock or SystemClock()
    db = open_database(settings)
    policy = policy_from(settings)
    ca = BuiltinCa.load_or_create(
        settings.ca_dir,
        public_url=settings.public_url,
        organization=settings.ca_organization,
        now=clock.now(),
        passphrase=ca_passphrase(settings),
        lint_mode=settings.pre_issuance_lint,
    )
    ca.names_policy, ca.weak_keys = policy.names, policy.weak_keys
    delegation = settings.dcv_delegation
    return OrdersContext(
        db=db,
        catalog=load_catalog(settings),
        ca=ca,
        box=master_keys(settings),
        clock=clock,
        policy=policy,
        key_pool=key_pool_from(settings),
        upstreams=upstream_configs(settings),
        dcv_zone=delegation.zone.strip().lower().rstrip("."),
        dns_publisher=make_publisher(delegation, db, clock) if delegation.zone else None,
        dns_txt_ttl=delegation.txt_ttl,
    )


@dataclass(frozen=True)
class FirstAccount:
    name: str
    token: str


def ensure_first_account(ctx: OrdersContext) -> FirstAccount | None:
    """On an empty database create one reseller account; its token is shown once."""
    with ctx.db.transaction() as session:
        if session.scalar(select(func.count()).select_from(Account)):
            return None
        now = ctx.clock.now()
        account = accounts.create_account(session, "default", sandbox=False, now=now)
        _row, token = accounts.create_token(session, account, label="first start", now=now)
        return FirstAccount(name=account.name, token=token)
