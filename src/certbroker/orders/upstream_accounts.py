"""certbroker's accounts at upstream ACME CAs (RFC 8555 7.3): made once, checked at start-up.

The account key is made and stored (encrypted, context `upstream-account:<row id>`) before the
first registration attempt, so a retry registers the same key instead of leaving orphan
accounts upstream. `check` finds the account with onlyReturnExisting, else registers it with
External Account Binding (7.3.4), and records the outcome; `place` reads that outcome and
answers -6 for an upstream whose account is not usable, charging nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from certbroker.catalog.catalog import Product
from certbroker.issuance.acme_upstream import (
    AcmeUpstream,
    UpstreamConfig,
    UpstreamError,
    new_account_key_pem,
    thumbprint,
)
from certbroker.orders.context import OrdersContext
from certbroker.orders.errors import ApiError, Code
from certbroker.store.models import UpstreamAccount

log = structlog.get_logger("certbroker.upstream")

VALID = "valid"
FAILED = "failed"


def key_context(account_id: int) -> bytes:
    return f"upstream-account:{account_id}".encode("ascii")


@dataclass(frozen=True)
class AccountCheck:
    upstream: str
    ok: bool
    account_url: str | None
    problem: str | None

    def line(self) -> str:
        """One readable line for `certbroker upstream check` and the start-up log."""
        if self.ok:
            return f"{self.upstream}: ok, account {self.account_url}"
        return f"{self.upstream}: FAILED: {self.problem}"


@dataclass(frozen=True)
class AccountKey:
    key_pem: bytes
    account_url: str | None
    thumbprint: str


def _ensure_key(ctx: OrdersContext, config: UpstreamConfig) -> AccountKey:
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        row = session.scalar(select(UpstreamAccount).where(UpstreamAccount.upstream == config.name))
        if row is None:
            key_pem = new_account_key_pem(config.account_key)
            row = UpstreamAccount(
                upstream=config.name,
                key_encrypted="",
                thumbprint=thumbprint(key_pem),
                eab_kid=config.eab_kid,
                status=FAILED,
                last_problem="not registered yet",
                created_at=now,
            )
            session.add(row)
            session.flush()  # the row id is the key's associated data
            row.key_encrypted = ctx.box.encrypt(key_pem, context=key_context(row.id))
            return AccountKey(key_pem, None, row.thumbprint)
        key_pem = ctx.box.decrypt(row.key_encrypted, context=key_context(row.id))
        return AccountKey(key_pem, row.account_url, row.thumbprint)


def account_key(ctx: OrdersContext, session: Session, upstream: str) -> AccountKey | None:
    """The usable account at `upstream` (None when it is missing or failed its check)."""
    row = session.scalar(select(UpstreamAccount).where(UpstreamAccount.upstream == upstream))
    if row is None or row.status != VALID or row.account_url is None:
        return None
    key_pem = ctx.box.decrypt(row.key_encrypted, context=key_context(row.id))
    return AccountKey(key_pem, row.account_url, row.thumbprint)


def check(ctx: OrdersContext, name: str) -> AccountCheck:
    """Find or register the account at upstream `name` and record the outcome."""
    config = ctx.upstreams[name]
    key = _ensure_key(ctx, config)
    account_url: str | None = None
    problem: str | None = None
    try:
        # A fresh client: a check must not reuse a session that holds a stale account URL.
        account_url = AcmeUpstream(config, key.key_pem, None).register()
    except UpstreamError as exc:
        problem = f"{exc.problem}: {exc.detail}"
        if exc.problem == "unauthorized" and config.eab_kid:
            problem += f" (check the EAB key of kid {config.eab_kid!r})"
        elif exc.problem == "externalAccountRequired":
            problem += " (set eab_kid and the EAB HMAC key)"
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        row = session.scalar(select(UpstreamAccount).where(UpstreamAccount.upstream == name))
        assert row is not None
        row.checked_at = now
        row.eab_kid = config.eab_kid
        if problem is None:
            row.status, row.account_url, row.last_problem = VALID, account_url, None
        else:
            row.status, row.last_problem = FAILED, problem
    ctx.upstream_clients.forget(name)
    result = AccountCheck(name, problem is None, account_url, problem)
    if result.ok:
        log.info("upstream account ready", upstream=name, account=account_url)
    else:
        log.error("upstream account unusable", upstream=name, problem=problem)
    return result


def check_all(ctx: OrdersContext, names: list[str] | None = None) -> list[AccountCheck]:
    return [check(ctx, name) for name in names or sorted(ctx.upstreams)]


def require_available(ctx: OrdersContext, session: Session, product: Product) -> None:
    """-6 (CA_FAILED) for a product whose upstream account is not usable: nothing is charged."""
    upstream = product.issuer.upstream
    if upstream is None:
        return
    row = session.scalar(select(UpstreamAccount).where(UpstreamAccount.upstream == upstream))
    if row is not None and row.status == VALID and upstream in ctx.upstreams:
        return
    why = "its account has not been registered" if row is None else row.last_problem
    raise ApiError(
        Code.CA_FAILED,
        f"product {product.code} is issued by the upstream CA {upstream!r}, which is not "
        f"available now ({why}); nothing was charged, try again later",
    )
