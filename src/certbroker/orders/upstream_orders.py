"""Orders an upstream ACME CA issues (RFC 8555), driven one step at a time by the worker.

`place` commits the order, its charge and an `upstream_orders` row (status `new`). Each worker
step then re-reads the upstream object, takes one action and commits, so a crash anywhere
resumes at the last commit and nothing is issued or charged twice:

    new         -- newOrder (7.4) --> pending; authz rows with token and key authorization
    pending     per authz: pre-check the customer's publication, then answer the challenge
                (7.5.1); the authz is re-read until valid or invalid.
                http-01 (8.3): our own fetcher reads the customer's file.
                dns-01 (8.4), CNAME_CSR_HASH: the customer's persistent CNAME
                `_acme-challenge.<base>` -> `<label>.<zone>.` is checked (exact target, never
                followed); only then is base64url(SHA-256(keyAuthorization)) published at
                `<label>.<zone>` through the DnsPublisher (every value in flight there: a
                wildcard and its base share the name), confirmed at the zone's authoritative
                server, and the challenges answered. When no authz there is in flight any more
                the values are removed.
    ready       -- finalize with the order's CSR (7.4); `finalize_sent_at` is committed first,
                   and a repeated finalize answers orderNotReady, so it is idempotent
    processing  re-read the order until valid
    valid       -- download the chain (7.4.2) --> downloaded: one transaction stores the
                   certificate, completes the order and writes its event

Before a challenge is answered (or a reused authz accepted) the pre-check also asks CAA for
the upstream's issuer domains; a refusal waits like a wrong publication, with its reason in the
name's `lastError`.

The pre-check is the tenant gate: an authz is only answered, and a name only counts as
validated, once this order's publication was fetched by certbroker (dns-01: the CNAME to this
account's label was seen), so customer mistakes burn no upstream failed-validation quota and
no order finalizes on another tenant's proof. It never replaces the upstream CA's own
validation. An authz the upstream returns already `valid` (authz reuse) counts only once the
same pre-check passes for this order; until then the name waits with the pre-check's
`lastError` (retried on the DCV back-off) and the order is never finalized; if the validation
window ends first the order fails and is refunded as any order whose names were not validated.
The reused authz is not deactivated. For http-01 the reused authz's token is another order's
(perhaps another reseller's, whose file may still be served), so such a name gets a token of
its own, made by certbroker, which only the pre-check reads; dns-01 needs no such token: the
CNAME target is this account's label.

When the upstream fails (docs/UPSTREAMS.md, "When the upstream fails"): a 5xx or time-out
backs the order off (30 s doubling to 1 h, with jitter) and counts toward the upstream's
circuit breaker (orders/upstream_health.py); `rateLimited` waits for its Retry-After (RFC 8555
6.6); `badNonce` is retried by the next pass (acme already retried once, 6.5). Each shows the
order's `lastError` in words a customer can act on, cleared by the next step that succeeds.
`accountDoesNotExist` (7.3) or a 404 on the order means the upstream lost our state (a
restarted CA): the account is looked up or registered again and a new attempt starts, with
nothing charged again; dns-01 through the CNAME completes without the customer, http-01 shows
the new token (`dcv.updated`).

An invalid authz puts the upstream's problem in the name's `lastError` and starts a new
attempt (a new upstream order, hence a new token). rejectedIdentifier, badCSR, badPublicKey,
unsupportedIdentifier and invalidProfile cannot be cured by retrying: the order FAILS and is
refunded through the common path (orders/refunds.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import ip_network
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from certbroker import metrics
from certbroker.dns_delegation.instructions import delegation_for
from certbroker.dns_delegation.labels import challenge_name
from certbroker.dns_delegation.publisher import DnsPublisher, PublishError
from certbroker.issuance.acme_upstream import (
    AcmeUpstream,
    AuthzSnapshot,
    OrderSnapshot,
    UpstreamError,
    ari_cert_id,
    dns01_txt_value,
    key_authorization,
    retry_after_time,
)
from certbroker.orders import upstream_accounts
from certbroker.orders.context import OrdersContext
from certbroker.orders.dcv import next_delay
from certbroker.orders.events import record_event
from certbroker.orders.params import DomainRequest
from certbroker.orders.refunds import settle_failure
from certbroker.orders.states import Status
from certbroker.orders.terms import next_renewal, subscription_end
from certbroker.orders.upstream_accounts import account_key
from certbroker.orders.upstream_health import BACKOFF_MAX as BACKOFF_MAX
from certbroker.orders.upstream_health import backoff
from certbroker.orders.upstream_rules import DNS01_METHOD
from certbroker.pki.bundles import make_jks, make_pkcs12, random_password
from certbroker.pki.keys import load_private_key_pem
from certbroker.store.db import lock_row
from certbroker.store.models import Certificate, Order, OrderName, UpstreamAuthz, UpstreamOrder
from certbroker.validation.caa import check_caa
from certbroker.validation.delegation_cname import check_delegation_cname
from certbroker.validation.http_file import (
    ACME_CHALLENGE_DIR,
    check_http_file,
    key_authorization_matches,
)
from certbroker.validation.resolver import make_address_resolver
from certbroker.validation.safe_addresses import AddressPolicy

log = structlog.get_logger("certbroker.upstream")

INSERT_UPSTREAM_ORDER = insert(UpstreamOrder)

# RFC 8555 6.7 problems that no retry cures: the order fails and is refunded.
FATAL_PROBLEMS = frozenset(
    {"rejectedIdentifier", "badCSR", "badPublicKey", "unsupportedIdentifier", "invalidProfile"}
)
# How soon an answered authz or a processing order is read again (absent a Retry-After): soon
# after the action, then less often (half the time waited so far), never more than POLL_DELAY
# apart. Validation and signing usually take well under a second.
POLL_FIRST = timedelta(milliseconds=200)
POLL_DELAY = timedelta(seconds=2)


def poll_delay(since: datetime | None, now: datetime) -> timedelta:
    """The wait before reading again what was set in motion at `since`."""
    if since is None:
        return POLL_DELAY
    return min(POLL_DELAY, max(POLL_FIRST, (now - since) / 2))


# Back-off after a failed upstream call: 30 s doubling to 1 h (orders/upstream_health.py).
VERIFIED_HOW = "upstream http-01"
VERIFIED_HOW_DNS = "upstream dns-01"
# An authz the upstream returned already valid, accepted after this order's own pre-check.
VERIFIED_HOW_REUSE = "upstream-reuse"
HTTP01, DNS01 = "http-01", "dns-01"

# A cancelled PENDING order's upstream order: its authorizations are given up (RFC 8555
# 7.5.2) by the worker after the cancel committed, so the cancel never waits on the upstream.
DEACTIVATING = "deactivating"
DEACTIVATE_FROM = frozenset({"pending", "ready", "processing", "valid", DEACTIVATING})
LIVE_STATUSES = ("new", "pending", "ready", "processing", "valid")
# RFC 5280 5.3.1 CRLReason for a certificate a cancelled order never wanted.
REASON_CESSATION_OF_OPERATION = 5

# Test hook (environment, for tests that run a real process): see _test_hold.
TEST_HOLD_BEFORE_FINALIZE = "CERTBROKER_TEST_HOLD_BEFORE_FINALIZE"

# Test hook: called after each committed step with (step, upstream order id). Tests raise in it
# to kill a step at a precise point, as a crash would.
after_commit: Callable[[str, int], None] | None = None


def new_upstream_order(order_id: int, upstream: str, now: datetime) -> dict[str, Any]:
    """The `upstream_orders` row place writes in its transaction (first attempt)."""
    return {
        "order_id": order_id,
        "attempt": 1,
        "upstream": upstream,
        "status": "new",
        "created_at": now,
        "updated_at": now,
        "next_attempt_at": now,
    }


def ensure_delegations(
    ctx: OrdersContext,
    session: Session,
    account_id: int,
    domains: Iterable[DomainRequest],
    now: datetime,
) -> None:
    """Make (once) and store the delegation label of every CNAME_CSR_HASH name, inside the
    caller's transaction, so its CNAME is known from place on (one per base domain)."""
    if not ctx.dcv_zone:
        return
    for domain in domains:
        if domain.dcv_method == DNS01_METHOD:
            delegation_for(session, ctx.box, account_id, domain.name, zone=ctx.dcv_zone, now=now)


def _test_hold(ctx: OrdersContext, facts: _Facts, owner: str) -> str:
    """Tests only (CERTBROKER_TEST_HOLD_BEFORE_FINALIZE set): a ready order (RFC 8555 7.4) is
    not finalized but read again later, so an end-to-end test can SIGKILL the process once
    every order is answered and none finalized. Never set it in production."""
    log.warning("test hook: holding a ready order before finalize", id=facts.upstream_order_id)
    return "held by the test hook" if _read_again_later(ctx, facts, owner) else "not ours"


def _read_again_later(ctx: OrdersContext, facts: _Facts, owner: str) -> bool:
    """Release the step, due again in POLL_DELAY; False when it is no longer ours."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        row = _leased(session, facts.upstream_order_id, owner)
        if row is None:
            return False
        _release(row, now, now + POLL_DELAY)
    return True


def _committed(step: str, upstream_order_id: int) -> None:
    if after_commit is not None:
        after_commit(step, upstream_order_id)


# --- claiming -------------------------------------------------------------------------------


def claim_steps(ctx: OrdersContext, owner: str, limit: int = 10) -> list[tuple[int, str]]:
    """Lease due upstream orders, as (id, upstream); none of an upstream whose circuit is open
    (PostgreSQL: SKIP LOCKED lets workers share)."""
    now = ctx.clock.now()
    paused = ctx.upstream_health.paused(now)
    with ctx.db.transaction() as session:
        query = (
            select(UpstreamOrder.id, UpstreamOrder.upstream)
            .where(
                UpstreamOrder.next_attempt_at.is_not(None),
                UpstreamOrder.next_attempt_at <= now,
                UpstreamOrder.lease_until.is_(None) | (UpstreamOrder.lease_until < now),
            )
            .order_by(UpstreamOrder.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if paused:
            query = query.where(UpstreamOrder.upstream.not_in(sorted(paused)))
        claimed = [(int(i), str(u)) for i, u in session.execute(query)]
        ids = [i for i, _u in claimed]
        if ids:
            session.execute(
                update(UpstreamOrder)
                .where(UpstreamOrder.id.in_(ids))
                .values(lease_owner=owner, lease_until=now + ctx.policy.lease)
            )
    return claimed


def _leased(session: Session, upstream_order_id: int, owner: str) -> UpstreamOrder | None:
    row = lock_row(session, UpstreamOrder, upstream_order_id)
    if row is None or row.lease_owner != owner:
        return None  # taken over after our lease ran out
    return row


def _release(row: UpstreamOrder, now: datetime, due: datetime | None) -> None:
    row.next_attempt_at = due
    row.lease_owner = None
    row.lease_until = None
    row.updated_at = now


# --- one step -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Facts:
    """What a step reads before it talks to the upstream (outside any transaction)."""

    upstream_order_id: int
    order_id: int
    account_id: int
    upstream: str
    status: str
    order_url: str | None
    csr_pem: str
    order_status: str
    certificate_url: str | None
    # A failure is on show (order lastError) or counted: the next success clears it.
    failing: bool = False
    # An automatic renewal: the ARI certID it replaces (RFC 9773 4.2).
    replaces: str | None = None


def run_step(ctx: OrdersContext, upstream_order_id: int, owner: str) -> str:
    """One step of one upstream order; returns what was done (for logs and tests)."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        row = _leased(session, upstream_order_id, owner)
        if row is None:
            return "not ours"
        order = session.get(Order, row.order_id)
        assert order is not None
        deactivate = (
            order.status == Status.CANCELLED
            and row.order_url is not None
            and row.status in DEACTIVATE_FROM
        )
        if order.status != Status.PENDING and not deactivate:
            # Failed meanwhile (or cancelled before any upstream order): no upstream action.
            row.status = "abandoned" if row.status not in ("downloaded", "failed") else row.status
            _release(row, now, None)
            return "abandoned"
        if deactivate:
            row.status = DEACTIVATING
        facts = _Facts(
            row.id,
            order.id,
            order.account_id,
            row.upstream,
            row.status,
            row.order_url,
            order.csr_pem,
            order.status,
            row.certificate_url,
            failing=bool(row.failures or order.last_error),
            replaces=row.replaces,
        )
        key = account_key(ctx, session, row.upstream)
        config = ctx.upstreams.get(row.upstream)
        if key is None or config is None or key.account_url is None:
            row.last_problem = f"upstream {row.upstream!r} has no usable account"
            _release(row, now, now + BACKOFF_MAX)
            return "no account"
    client = ctx.upstream_clients.get(config, key.key_pem, key.account_url)
    try:
        done = _one_step(ctx, client, facts, key.thumbprint, owner)
    except UpstreamError as exc:
        if _lost_state(exc):
            return _start_over(ctx, facts, owner, exc)
        return _record_problem(ctx, facts, owner, exc)
    ctx.upstream_health.succeeded(facts.upstream)
    metrics.observe_upstream_step(facts.upstream, "ok")
    if facts.failing and done != "not ours":
        _recovered(ctx, facts)
    return done


def _one_step(
    ctx: OrdersContext, client: AcmeUpstream, facts: _Facts, thumbprint: str, owner: str
) -> str:
    if facts.status == DEACTIVATING:
        return _deactivate(ctx, client, facts, owner)
    if facts.status == "new":
        return _new_order(ctx, client, facts, thumbprint, owner)
    if facts.status == "pending":
        return _pending(ctx, client, facts, owner)
    if facts.status in ("ready", "processing"):
        return _finalize_or_wait(ctx, client, facts, owner)
    if facts.status == "valid":
        return _download(ctx, client, facts, owner)
    return "nothing to do"


def _recovered(ctx: OrdersContext, facts: _Facts) -> None:
    """The upstream answered again: reset the back-off and take the failure off the order."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        row = lock_row(session, UpstreamOrder, facts.upstream_order_id)
        if row is not None:
            row.failures = 0
        order = lock_row(session, Order, facts.order_id)
        if order is not None and order.status == Status.PENDING and order.last_error:
            order.last_error = None
            order.updated_at = now


def _lost_state(exc: UpstreamError) -> bool:
    """The upstream forgot our account (RFC 8555 7.3) or the order (a 404 on its URL)."""
    return exc.problem == "accountDoesNotExist" or exc.status == 404


def _start_over(ctx: OrdersContext, facts: _Facts, owner: str, exc: UpstreamError) -> str:
    """Look the account up again, else register it (onlyReturnExisting, then EAB: 7.3.1,
    7.3.4), and start a new attempt of the upstream order. The customer's charge stays the
    one of `place`; the order's validation window is unchanged (the expiry scan still ends
    it). A new upstream order brings new tokens: dns-01 through the CNAME needs nothing from
    the customer, http-01 shows the new file (`dcv.updated`, written by the new order step)."""
    text = f"{exc.problem}: {exc.detail}"
    log.warning(
        "the upstream lost its state: registering again and starting a new attempt",
        upstream=facts.upstream,
        upstream_order_id=facts.upstream_order_id,
        problem=text,
    )
    metrics.observe_upstream_step(facts.upstream, "restarted", exc.problem)
    ctx.upstream_health.succeeded(facts.upstream)  # it answered: not a circuit failure
    checked = upstream_accounts.check(ctx, facts.upstream)
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        row = _leased(session, facts.upstream_order_id, owner)
        if row is None:
            return "not ours"
        if not checked.ok:
            # Registration failed too (the upstream is still unwell): back off and retry.
            row.failures += 1
            row.last_problem = json.dumps(exc.as_json())
            _release(row, now, now + backoff(row.failures))
            return "retry later"
        row.status = "lost"
        row.last_problem = json.dumps(exc.as_json())
        _release(row, now, None)
        session.execute(
            INSERT_UPSTREAM_ORDER,
            dict(new_upstream_order(facts.order_id, facts.upstream, now), attempt=row.attempt + 1),
        )
        order = lock_row(session, Order, facts.order_id)
        if order is not None and order.status == Status.PENDING:
            order.last_error = None
            order.updated_at = now
    _committed("start_over", facts.upstream_order_id)
    return "new attempt"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _record_problem(ctx: OrdersContext, facts: _Facts, owner: str, exc: UpstreamError) -> str:
    now = ctx.clock.now()
    text = f"{exc.problem}: {exc.detail}"
    log.warning(
        "upstream step failed",
        upstream=facts.upstream,
        upstream_order_id=facts.upstream_order_id,
        problem=text,
        status=exc.status,
    )
    config = ctx.upstreams.get(facts.upstream)
    if exc.transient and config is not None:
        ctx.upstream_health.failed(
            facts.upstream,
            now,
            threshold=config.circuit_failures,
            cooldown=timedelta(seconds=config.circuit_cooldown_seconds),
        )
    elif not exc.transient:
        ctx.upstream_health.succeeded(facts.upstream)  # it answered
    # Retry-After read by the injected clock (a delay in seconds, or a date: RFC 9110 10.2.3).
    asked = retry_after_time(exc.retry_after_header, now) or exc.retry_after
    with ctx.db.transaction() as session:
        row = _leased(session, facts.upstream_order_id, owner)
        if row is None:
            return "not ours"
        row.last_problem = json.dumps(exc.as_json())
        order = lock_row(session, Order, facts.order_id)
        if exc.problem in FATAL_PROBLEMS:
            row.status = "failed"
            _release(row, now, None)
            if order is not None and order.status == Status.PENDING:
                _fail(ctx, session, order, f"the upstream CA refused the order: {text}", now)
            metrics.observe_upstream_step(facts.upstream, "failed", exc.problem)
            return "failed"
        if exc.problem == "badNonce":
            # RFC 8555 6.5: acme retried once with a fresh nonce; the next pass tries again.
            _release(row, now, now + POLL_DELAY)
            metrics.observe_upstream_step(facts.upstream, "retry", exc.problem)
            return "retry later"
        row.failures += 1
        due = now + backoff(row.failures)
        if asked is not None and asked > now:
            due = asked if exc.problem == "rateLimited" else max(due, asked)
        if exc.problem == "rateLimited":
            # RFC 8555 6.6: wait for Retry-After (the back-off when there is none).
            shown = (
                f"the upstream CA {facts.upstream!r} limits how fast certbroker may order "
                f"({exc.detail}); certbroker retries at {_when(due)}; nothing to do on your side"
            )
            outcome = "rate_limited"
        elif exc.transient:
            shown = (
                f"the upstream CA {facts.upstream!r} is not answering properly "
                f"({text}); certbroker retries at {_when(due)}; nothing to do on your side"
            )
            outcome = "retry"
        else:
            shown = (
                f"the upstream CA {facts.upstream!r} answered {text}; certbroker retries at "
                f"{_when(due)}; if this persists, contact support with this message"
            )
            outcome = "retry"
        _release(row, now, due)
        if order is not None and order.status == Status.PENDING:
            order.last_error = shown
            order.updated_at = now
    metrics.observe_upstream_step(facts.upstream, outcome, exc.problem)
    return "retry later"


def _fail(ctx: OrdersContext, session: Session, order: Order, reason: str, now: datetime) -> None:
    order.status = Status.FAILED
    order.failure_reason = reason
    order.last_error = reason
    order.updated_at = now
    settle_failure(ctx, session, order, now, "upstream CA refused")
    record_event(session, order, "order.failed", {"reason": reason}, now)


def mark_for_deactivation(session: Session, order_id: int, now: datetime) -> int:
    """Inside the cancel's transaction: every upstream order of `order_id` that exists upstream
    is due now for `_deactivate` (a crash or an unreachable upstream leaves it due)."""
    rows = session.scalars(
        select(UpstreamOrder).where(
            UpstreamOrder.order_id == order_id,
            UpstreamOrder.order_url.is_not(None),
            UpstreamOrder.status.in_(DEACTIVATE_FROM),
        )
    ).all()
    for row in rows:
        row.status = DEACTIVATING
        row.next_attempt_at = now
        row.updated_at = now
    return len(rows)


def _deactivate(ctx: OrdersContext, client: AcmeUpstream, facts: _Facts, owner: str) -> str:
    """Deactivate the authorizations of a cancelled order's upstream order (RFC 8555 7.5.2),
    so the shared upstream account keeps no validation the customer gave up. An authorization
    another live order also holds (upstream reuse) is left alone. A failure backs off through
    `_record_problem`; the step runs again until every authorization is done."""
    assert facts.order_url is not None
    snapshot = client.order(facts.order_url)
    if snapshot.status == "processing":
        # RFC 8555 7.4: finalize was sent before the cancel; a certificate may still come.
        if not _read_again_later(ctx, facts, owner):
            return "not ours"
        return "waiting for the certificate"
    revoked = None
    if snapshot.status == "valid" and snapshot.certificate:
        revoked = _revoke_unwanted(client, snapshot.certificate)
    urls = snapshot.authorizations
    with ctx.db.read() as session:
        shared = set(
            session.scalars(
                select(UpstreamAuthz.url)
                .join(UpstreamOrder, UpstreamOrder.id == UpstreamAuthz.upstream_order_id)
                .join(Order, Order.id == UpstreamOrder.order_id)
                .where(
                    UpstreamAuthz.url.in_(urls),
                    UpstreamOrder.id != facts.upstream_order_id,
                    UpstreamOrder.status.in_(LIVE_STATUSES),
                    Order.status == Status.PENDING,
                )
            )
        )
    states = {url: client.deactivate_authorization(url).status for url in urls if url not in shared}
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        row = _leased(session, facts.upstream_order_id, owner)
        if row is None:
            return "not ours"
        authzs = list(
            session.scalars(select(UpstreamAuthz).where(UpstreamAuthz.upstream_order_id == row.id))
        )
        for authz in authzs:
            authz.status = states.get(authz.url, authz.status)
        if revoked is not None:
            row.certificate_url = snapshot.certificate
            order = session.get(Order, facts.order_id)
            assert order is not None
            record_event(
                session,
                order,
                "upstream.certificate_revoked",
                {"serial": revoked, "reason": REASON_CESSATION_OF_OPERATION},
                now,
            )
        row.status = "deactivated"
        row.last_problem = None
        _release(row, now, None)
    # No authz of this order is in flight any more: its dns-01 values may go.
    _clean_txt(ctx, [a.txt_fqdn for a in authzs])
    _committed("deactivated", facts.upstream_order_id)
    return "deactivated"


def _revoke_unwanted(client: AcmeUpstream, url: str) -> str:
    """A cancelled order's upstream certificate (issued while the cancel raced the finalize):
    download it (RFC 8555 7.4.2), never store it as the order's, and revoke it at the upstream
    (7.6) with cessationOfOperation. Returns its serial (hex). Repeated after a crash, the
    upstream answers alreadyRevoked."""
    chain_pem = client.certificate_chain(url)
    leaf = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))[0]
    serial = format(leaf.serial_number, "x")
    try:
        client.revoke(
            leaf.public_bytes(Encoding.PEM).decode("ascii"), REASON_CESSATION_OF_OPERATION
        )
    except UpstreamError as exc:
        if exc.problem != "alreadyRevoked":
            raise
    log.warning("revoked the upstream certificate of a cancelled order", serial=serial, url=url)
    return serial


def _new_order(
    ctx: OrdersContext, client: AcmeUpstream, facts: _Facts, thumbprint: str, owner: str
) -> str:
    # RFC 9773 4.2: `replaces` only to an upstream that offers renewalInfo; `alreadyReplaced`
    # (another order replaced that certificate already) drops it, as a plain order.
    replaces = facts.replaces if facts.replaces and client.renewal_info_url else None
    try:
        snapshot = client.new_order(facts.csr_pem, replaces=replaces)
    except UpstreamError as exc:
        if replaces is None or exc.problem != "alreadyReplaced":
            raise
        snapshot = client.new_order(facts.csr_pem)
    authzs = [client.authorization(url) for url in snapshot.authorizations]
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        row = _leased(session, facts.upstream_order_id, owner)
        if row is None:
            return "not ours"  # the upstream order we made is an orphan that expires
        names = {
            n.name: n
            for n in session.scalars(select(OrderName).where(OrderName.order_id == facts.order_id))
        }
        row.order_url = snapshot.url
        row.finalize_url = snapshot.finalize
        row.expires_at = snapshot.expires
        row.status = "pending"
        row.last_problem = None
        for authz in authzs:
            shown = "*." + authz.identifier if authz.wildcard else authz.identifier
            name = names.get(shown)
            dns = name is not None and name.dcv_method == DNS01_METHOD
            challenge = authz.challenge(DNS01 if dns else HTTP01)
            token = challenge.token if challenge else None
            if authz.status == "valid" and not dns:
                # Reused (RFC 8555 7.4 lets a CA return a valid authz): its token is another
                # order's, whose file (perhaps another reseller's) may still be there. This
                # order's gate wants its own file: a token certbroker makes, never answered
                # upstream (the authz is valid already).
                token = secrets.token_urlsafe(32)
            txt_fqdn = None
            if dns and ctx.dcv_zone:
                found = delegation_for(
                    session, ctx.box, facts.account_id, shown, zone=ctx.dcv_zone, now=now
                )
                txt_fqdn = found.target.rstrip(".")
            session.add(
                UpstreamAuthz(
                    upstream_order_id=row.id,
                    order_name_id=name.id if name else None,
                    url=authz.url,
                    identifier=authz.identifier,
                    wildcard=authz.wildcard,
                    # An authz the upstream reused (already valid) counts only after this
                    # order's pre-check: kept pending here until then (the tenant gate).
                    status="pending" if authz.status == "valid" else authz.status,
                    expires_at=authz.expires,
                    challenge_type=challenge.type if challenge else None,
                    challenge_url=challenge.url if challenge else None,
                    token=token,
                    key_authorization=key_authorization(token, thumbprint) if token else None,
                    txt_fqdn=txt_fqdn,
                )
            )
            if name is not None and name.verified_at is None:
                name.last_result = (
                    "checking the CNAME (DCVdnsHost, DCVdnsValue)"
                    if dns
                    else "publish the file (DCVfilePath, DCVfileContent)"
                )
                name.next_check_at = None
        _release(row, now, now)
        if row.attempt > 1:
            order = session.get(Order, facts.order_id)
            if order is not None:
                # A new upstream order means new tokens: the customer must publish again.
                record_event(session, order, "dcv.updated", {"attempt": row.attempt}, now)
    _committed("new_order", facts.upstream_order_id)
    return "ordered"


def _precheck(ctx: OrdersContext, authz: UpstreamAuthz) -> tuple[bool, str]:
    """Fetch the customer's publication with the DCV fetcher (ports, redirects, bytes and
    addresses limited as for every file check), expecting the key authorization exactly."""
    policy = ctx.policy
    assert authz.token is not None and authz.key_authorization is not None
    result = asyncio.run(
        check_http_file(
            authz.identifier,
            authz.token,
            authz.key_authorization,
            scheme="http",  # RFC 8555 8.3: http-01 always starts on port 80
            policy=AddressPolicy(tuple(ip_network(n) for n in policy.dcv_allow_networks)),
            http_port=policy.dcv_http_port,
            https_port=policy.dcv_https_port,
            resolve=make_address_resolver(policy.dcv_resolver, policy.dcv_timeout_seconds),
            timeout=policy.dcv_timeout_seconds,
            content_matches=key_authorization_matches,
            well_known_dir=ACME_CHALLENGE_DIR,
        )
    )
    return result.ok, result.detail


def _pending(ctx: OrdersContext, client: AcmeUpstream, facts: _Facts, owner: str) -> str:
    assert facts.order_url is not None
    snapshot = client.order(facts.order_url)
    if snapshot.status in ("ready", "processing", "valid"):
        with ctx.db.read() as session:
            unchecked = session.scalar(
                select(UpstreamAuthz.id).where(
                    UpstreamAuthz.upstream_order_id == facts.upstream_order_id,
                    UpstreamAuthz.prechecked_at.is_(None),
                )
            )
        if unchecked is None:
            return _advance(ctx, facts, owner, snapshot)
        # Ready on authzs the upstream reused: each still needs this order's pre-check (the
        # tenant gate) before anything is finalized; the authz steps below run it.
    with ctx.db.read() as session:
        authz_ids = list(
            session.scalars(
                select(UpstreamAuthz.id)
                .where(UpstreamAuthz.upstream_order_id == facts.upstream_order_id)
                .order_by(UpstreamAuthz.id)
            )
        )
    results = []
    for authz_id in authz_ids:
        result = _authz_step(ctx, client, facts, owner, authz_id)
        if result in ("not ours", "invalid"):
            return result
        results.append(result)
    # The order is as far as its least advanced authz.
    done = next(
        (r for r in ("precheck failed", "answered", "waiting") if r in results), "all valid"
    )
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        row = _leased(session, facts.upstream_order_id, owner)
        if row is None:
            return "not ours"
        if done == "precheck failed":
            names = session.scalars(
                select(OrderName).where(
                    OrderName.order_id == facts.order_id, OrderName.verified_at.is_(None)
                )
            ).all()
            attempts = max((n.attempts for n in names), default=1)
            _release(row, now, now + next_delay(ctx.policy, attempts))
        elif done == "all valid":
            _release(row, now, now)
        else:
            answered = session.scalar(
                select(func.max(UpstreamAuthz.answered_at)).where(
                    UpstreamAuthz.upstream_order_id == facts.upstream_order_id
                )
            )
            _release(row, now, now + poll_delay(answered, now))
    return done


def _authz_step(
    ctx: OrdersContext, client: AcmeUpstream, facts: _Facts, owner: str, authz_id: int
) -> str:
    """Re-read one authz upstream, then at most one action (pre-check, answer)."""
    with ctx.db.read() as session:
        authz = session.get(UpstreamAuthz, authz_id)
        assert authz is not None
        session.expunge(authz)
    if authz.status == "valid":
        return "all valid"
    upstream = client.authorization(authz.url)
    now = ctx.clock.now()
    if upstream.status == "valid" and authz.prechecked_at is not None:
        _store_authz(ctx, authz_id, upstream, now, verified=True, how=_how(authz))
        _clean_txt(ctx, [authz.txt_fqdn])
        return "all valid"
    if upstream.status == "invalid":
        problem = upstream.error or "the upstream CA marked the authorization invalid"
        _invalid(ctx, facts, owner, authz_id, f"upstream: {problem}", now)
        _clean_txt(ctx, [authz.txt_fqdn])
        return "invalid"
    if authz.answered_at is not None:
        return "waiting"
    if upstream.status not in ("pending", "valid"):
        return "waiting"
    if authz.challenge_type == DNS01:
        return _dns_step(ctx, client, facts, authz, upstream)
    # The tenant gate: a `valid` authz the upstream reused from elsewhere counts only after
    # our own pre-check of this order's publication.
    ok, detail = _precheck(ctx, authz)
    if ok:
        ok, detail = _caa_precheck(ctx, client, authz, detail)
    with ctx.db.transaction() as session:
        row = session.get(UpstreamAuthz, authz_id)
        assert row is not None
        name = session.get(OrderName, row.order_name_id) if row.order_name_id else None
        if name is not None:
            name.last_checked_at = now
            name.attempts += 1
            name.last_result = detail
        if not ok:
            return "precheck failed"
        row.prechecked_at = now
    if upstream.status == "valid":
        _store_authz(ctx, authz_id, upstream, now, verified=True, how=VERIFIED_HOW_REUSE)
        return "all valid"
    client.answer_http01(authz.url)
    with ctx.db.transaction() as session:
        row = session.get(UpstreamAuthz, authz_id)
        assert row is not None
        row.answered_at = now
        name = session.get(OrderName, row.order_name_id) if row.order_name_id else None
        if name is not None:
            name.last_result = "published file found; the upstream CA is validating"
    _committed("answered", facts.upstream_order_id)
    return "answered"


def _caa_precheck(
    ctx: OrdersContext, client: AcmeUpstream, authz: UpstreamAuthz, detail: str
) -> tuple[bool, str]:
    """CAA (RFC 8659, BR 3.2.2.8) for the upstream's issuer domains (its directory's
    `meta.caaIdentities`, RFC 8555 7.1.1, else the configured ones), asked as the upstream
    will: a refusal is the customer's to fix and is found before anything is answered.
    Returns `detail` (the publication's) when CAA allows issuance."""
    name = "*." + authz.identifier if authz.wildcard else authz.identifier
    result = asyncio.run(
        check_caa(
            name,
            issuer_domains=client.caa_identities,
            resolver_address=ctx.policy.dcv_resolver,
            timeout=ctx.policy.dcv_timeout_seconds,
        )
    )
    return (True, detail) if result.ok else (False, f"CAA: {result.detail}")


def _how(authz: UpstreamAuthz) -> str:
    return VERIFIED_HOW_DNS if authz.challenge_type == DNS01 else VERIFIED_HOW


def _precheck_cname(ctx: OrdersContext, authz: UpstreamAuthz) -> tuple[bool, str]:
    """The customer's `_acme-challenge.<base>` must be a CNAME to exactly this account's
    `<label>.<zone>.` (validation/delegation_cname.py: never followed, no wildcard)."""
    if authz.txt_fqdn is None:
        return False, (
            "CNAME_CSR_HASH needs the DNS delegation zone, which this service no longer has "
            "configured; ask the provider, or replace the order with HTTP_CSR_HASH"
        )
    result = asyncio.run(
        check_delegation_cname(
            challenge_name(authz.identifier),
            authz.txt_fqdn + ".",
            resolver_address=ctx.policy.dcv_resolver,
            timeout=ctx.policy.dcv_timeout_seconds,
        )
    )
    return result.ok, result.detail


def _note_names(
    ctx: OrdersContext, authz_ids: Sequence[int], detail: str, now: datetime, *, ok: bool
) -> None:
    """Record a pre-check's result on the authzs' names (and `prechecked_at` when it passed)."""
    with ctx.db.transaction() as session:
        for authz_id in authz_ids:
            row = session.get(UpstreamAuthz, authz_id)
            assert row is not None
            name = session.get(OrderName, row.order_name_id) if row.order_name_id else None
            if name is not None:
                name.last_checked_at = now
                name.attempts += 1
                name.last_result = detail
            if ok:
                row.prechecked_at = now


def _in_flight(ctx: OrdersContext, fqdn: str, *, answered_only: bool) -> list[str]:
    """The dns-01 values needed at `fqdn` now: pre-checked, still pending authzs of pending
    upstream orders (any order of the account: the label is per account and base domain)."""
    query = (
        select(UpstreamAuthz.key_authorization)
        .join(UpstreamOrder, UpstreamOrder.id == UpstreamAuthz.upstream_order_id)
        .where(
            UpstreamAuthz.txt_fqdn == fqdn,
            UpstreamAuthz.status == "pending",
            UpstreamAuthz.prechecked_at.is_not(None),
            UpstreamOrder.status == "pending",
        )
        .order_by(UpstreamAuthz.id)
    )
    if answered_only:
        query = query.where(UpstreamAuthz.answered_at.is_not(None))
    with ctx.db.read() as session:
        return [dns01_txt_value(k) for k in session.scalars(query) if k]


async def _publish_and_confirm(
    publisher: DnsPublisher, fqdn: str, values: Sequence[str], ttl: int
) -> None:
    await publisher.publish_txt(fqdn, values, ttl)
    await publisher.confirm(fqdn, values)


def _dns_step(
    ctx: OrdersContext,
    client: AcmeUpstream,
    facts: _Facts,
    authz: UpstreamAuthz,
    upstream: AuthzSnapshot,
) -> str:
    """dns-01 through the delegation (RFC 8555 8.4) for every unanswered authz of this order
    at the same `<label>.<zone>` (a wildcard and its base): one CNAME pre-check, one publish of
    the whole value set (the publisher replaces the set at a name), one confirmation at the
    authoritative server, then each challenge answered (7.5.1)."""
    now = ctx.clock.now()
    with ctx.db.read() as session:
        group = (
            list(
                session.scalars(
                    select(UpstreamAuthz)
                    .where(
                        UpstreamAuthz.upstream_order_id == facts.upstream_order_id,
                        UpstreamAuthz.challenge_type == DNS01,
                        UpstreamAuthz.txt_fqdn == authz.txt_fqdn,
                        UpstreamAuthz.answered_at.is_(None),
                        UpstreamAuthz.status == "pending",
                    )
                    .order_by(UpstreamAuthz.id)
                )
            )
            if authz.txt_fqdn is not None
            else []
        )
        for row in group:
            session.expunge(row)
    group = group or [authz]
    ids = [row.id for row in group]
    ok, detail = _precheck_cname(ctx, authz)
    for row in group:
        if ok:
            ok, detail = _caa_precheck(ctx, client, row, detail)
    _note_names(ctx, ids, detail, now, ok=ok)
    if not ok:
        return "precheck failed"
    assert authz.txt_fqdn is not None
    # Re-read the siblings: the upstream may hold any of them valid already (authz reuse),
    # which counts now that this order's own pre-check passed (the tenant gate).
    current = {
        row.id: upstream if row.id == authz.id else client.authorization(row.url) for row in group
    }
    for row in group:
        if current[row.id].status == "valid":
            _store_authz(ctx, row.id, current[row.id], now, verified=True, how=VERIFIED_HOW_REUSE)
    to_answer = [row for row in group if current[row.id].status == "pending"]
    if not to_answer:
        _clean_txt(ctx, [authz.txt_fqdn])
        return "all valid"
    publisher = ctx.dns_publisher
    values = _in_flight(ctx, authz.txt_fqdn, answered_only=False)
    try:
        if publisher is None:
            raise PublishError("no DNS publisher is configured")
        asyncio.run(_publish_and_confirm(publisher, authz.txt_fqdn, values, ctx.dns_txt_ttl))
    except PublishError as exc:
        log.warning("dns-01 publication failed", fqdn=authz.txt_fqdn, error=str(exc))
        _note_names(
            ctx,
            ids,
            f"{detail}; the service could not publish the validation value in its DNS zone "
            "yet (its side, not yours); retrying",
            now,
            ok=True,
        )
        return "precheck failed"
    for row in to_answer:
        client.answer_dns01(row.url)
        with ctx.db.transaction() as session:
            stored = session.get(UpstreamAuthz, row.id)
            assert stored is not None
            stored.answered_at = now
            name = session.get(OrderName, stored.order_name_id) if stored.order_name_id else None
            if name is not None:
                name.last_result = f"{detail}; the upstream CA is validating"
    _committed("answered", facts.upstream_order_id)
    return "answered"


def _clean_txt(ctx: OrdersContext, fqdns: Iterable[str | None]) -> None:
    """Remove the values at a delegation name once no answered authz there is pending. While
    one still is, the set stays as published: a publish replaces the set non-atomically, and
    a value the CA no longer needs is harmless until the last one is done."""
    publisher = ctx.dns_publisher
    for fqdn in dict.fromkeys(f for f in fqdns if f):
        if publisher is None or _in_flight(ctx, fqdn, answered_only=True):
            continue
        try:
            asyncio.run(publisher.remove_txt(fqdn))
        except PublishError as exc:
            log.warning("dns-01 values not removed", fqdn=fqdn, error=str(exc))


def _store_authz(
    ctx: OrdersContext,
    authz_id: int,
    upstream: AuthzSnapshot,
    now: datetime,
    *,
    verified: bool,
    how: str = VERIFIED_HOW,
) -> None:
    with ctx.db.transaction() as session:
        row = session.get(UpstreamAuthz, authz_id)
        assert row is not None
        row.status = upstream.status
        name = session.get(OrderName, row.order_name_id) if row.order_name_id else None
        if verified and name is not None and name.verified_at is None:
            name.verified_at = now
            name.verified_how = how
            name.last_result = "validated by the upstream CA"
            name.next_check_at = None


def _invalid(
    ctx: OrdersContext, facts: _Facts, owner: str, authz_id: int, problem: str, now: datetime
) -> None:
    """The upstream found the publication wrong: show its problem, start a new attempt (the
    new upstream order brings a new token, answered only after the pre-check passes again)."""
    with ctx.db.transaction() as session:
        row = _leased(session, facts.upstream_order_id, owner)
        if row is None:
            return
        authz = session.get(UpstreamAuthz, authz_id)
        assert authz is not None
        authz.status = "invalid"
        authz.last_problem = problem
        name = session.get(OrderName, authz.order_name_id) if authz.order_name_id else None
        attempts = 1
        if name is not None:
            name.last_result = problem
            name.last_checked_at = now
            attempts = name.attempts
        row.status = "invalid"
        row.last_problem = problem
        _release(row, now, None)
        session.execute(
            INSERT_UPSTREAM_ORDER,
            dict(
                new_upstream_order(facts.order_id, facts.upstream, now),
                attempt=row.attempt + 1,
                next_attempt_at=now + next_delay(ctx.policy, attempts),
            ),
        )
    _committed("invalid", facts.upstream_order_id)


def _advance(ctx: OrdersContext, facts: _Facts, owner: str, snapshot: OrderSnapshot) -> str:
    """The upstream order moved on: every name is validated; record the new state."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        row = _leased(session, facts.upstream_order_id, owner)
        if row is None:
            return "not ours"
        authzs = list(
            session.scalars(select(UpstreamAuthz).where(UpstreamAuthz.upstream_order_id == row.id))
        )
        fqdns = [a.txt_fqdn for a in authzs]
        for authz in authzs:
            name = session.get(OrderName, authz.order_name_id) if authz.order_name_id else None
            if authz.prechecked_at is None:
                # Not proven by this order's publication (the tenant gate): never finalize.
                row.last_problem = f"{authz.identifier} was not pre-checked for this order"
                _release(row, now, now + BACKOFF_MAX)
                return "gate"
            authz.status = "valid"
            if name is not None and name.verified_at is None:
                name.verified_at = now
                name.verified_how = _how(authz)
                name.last_result = "validated by the upstream CA"
        row.status = snapshot.status
        row.certificate_url = snapshot.certificate
        _release(row, now, now)
    _clean_txt(ctx, fqdns)
    _committed(snapshot.status, facts.upstream_order_id)
    return snapshot.status


def _finalize_or_wait(ctx: OrdersContext, client: AcmeUpstream, facts: _Facts, owner: str) -> str:
    assert facts.order_url is not None
    snapshot = client.order(facts.order_url)  # re-read: ready, processing or valid
    if snapshot.status == "ready":
        if os.environ.get(TEST_HOLD_BEFORE_FINALIZE):
            return _test_hold(ctx, facts, owner)
        now = ctx.clock.now()
        with ctx.db.transaction() as session:
            row = _leased(session, facts.upstream_order_id, owner)
            if row is None:
                return "not ours"
            # Committed before the finalize request, as a `signing` row precedes a signature.
            row.finalize_sent_at = now
        try:
            snapshot = client.finalize(facts.order_url, facts.csr_pem)
        except UpstreamError as exc:
            if exc.problem != "orderNotReady":
                raise
            snapshot = client.order(facts.order_url)  # finalized already: re-read
    if snapshot.status == "invalid":
        raise UpstreamError("badCSR", snapshot.error or "the upstream order became invalid")
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        row = _leased(session, facts.upstream_order_id, owner)
        if row is None:
            return "not ours"
        row.status = snapshot.status
        row.certificate_url = snapshot.certificate
        due = now if snapshot.status == "valid" else now + poll_delay(row.finalize_sent_at, now)
        _release(row, now, due)
    _committed(snapshot.status, facts.upstream_order_id)
    return snapshot.status


def _download(ctx: OrdersContext, client: AcmeUpstream, facts: _Facts, owner: str) -> str:
    """Fetch the chain and, in one transaction, store it and complete the order. A crash
    before the commit downloads the same certificate again: the upstream issued only one."""
    url = facts.certificate_url
    if url is None:
        assert facts.order_url is not None
        url = client.order(facts.order_url).certificate
        if url is None:
            raise UpstreamError("malformedResponse", "the valid order names no certificate")
    chain_pem = client.certificate_chain(url)
    certs = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))
    leaf, intermediates = certs[0], certs[1:]
    window = _renewal_window(client, leaf)
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        row = _leased(session, facts.upstream_order_id, owner)
        if row is None:
            return "not ours"
        order = lock_row(session, Order, facts.order_id)
        assert order is not None
        if order.status == Status.CANCELLED:
            # Cancelled while we downloaded: the deactivation step revokes it upstream.
            row.status = DEACTIVATING
            _release(row, now, now)
            return "cancelled: deactivating"
        if order.status != Status.PENDING:
            row.status = "abandoned"
            _release(row, now, None)
            return "abandoned"
        serial = format(leaf.serial_number, "x")
        generation = 1 + len(
            session.scalars(select(Certificate.id).where(Certificate.order_id == order.id)).all()
        )
        session.add(
            Certificate(
                order_id=order.id,
                generation=generation,
                serial_hex=serial,
                issuer="upstream",
                state="issued",
                not_before=leaf.not_valid_before_utc,
                not_after=leaf.not_valid_after_utc,
                pem=leaf.public_bytes(Encoding.PEM).decode("ascii"),
                chain_pem="".join(
                    c.public_bytes(Encoding.PEM).decode("ascii") for c in intermediates
                ),
                bundles_encrypted=_bundles(ctx, order, leaf, intermediates),
                created_at=now,
                issued_at=now,
            )
        )
        order.status = Status.COMPLETE
        order.completed_at = order.completed_at or now
        order.due_at = order.due_at or subscription_end(order, now)
        order.renew_due_at = _renew_due(ctx, leaf, order.due_at, window, now)
        order.last_error = None
        order.updated_at = now
        row.status = "downloaded"
        row.certificate_url = url
        _release(row, now, None)
        record_event(
            session,
            order,
            "certificate.issued",
            {"serial": serial, "generation": generation, "automatic": False},
            now,
        )
    _committed("downloaded", facts.upstream_order_id)
    return "downloaded"


def _renewal_window(
    client: AcmeUpstream, leaf: x509.Certificate
) -> tuple[datetime, datetime] | None:
    """The upstream's suggested renewal window for `leaf` (RFC 9773 4.2), None without ARI.
    A failed ARI request is not worth failing the download for: the lead time applies."""
    try:
        if client.renewal_info_url is None:
            return None
        found = client.renewal_window(ari_cert_id(leaf))
    except (UpstreamError, ValueError) as exc:
        log.warning("renewalInfo unavailable: the lead time applies", error=str(exc))
        return None
    return None if found is None else (found.start, found.end)


def _renew_due(
    ctx: OrdersContext,
    leaf: x509.Certificate,
    due: datetime | None,
    window: tuple[datetime, datetime] | None,
    now: datetime,
) -> datetime | None:
    """When a subscription reissues this certificate: inside the ARI window when the upstream
    gave one (its start, or now when it has begun: RFC 9773 4.2), else the lead time before its
    end as for built-in certificates; None when the purchase ends with this certificate."""
    lead = next_renewal(ctx, _Validity(leaf.not_valid_before_utc, leaf.not_valid_after_utc), due)
    if lead is None or window is None:
        return lead
    start, end = window
    return max(start, min(now, end)).replace(microsecond=0)


@dataclass(frozen=True)
class _Validity:
    not_before: datetime
    not_after: datetime


def _bundles(
    ctx: OrdersContext, order: Order, leaf: x509.Certificate, chain: list[x509.Certificate]
) -> str | None:
    """PKCS#12 and JKS when certbroker holds the key, encrypted like the built-in path's."""
    if order.key_encrypted is None:
        return None
    pem = ctx.box.decrypt(order.key_encrypted, context=order.cert_id.encode("ascii"))
    key = load_private_key_pem(pem, trusted=True)
    p12_pass, jks_pass = random_password(), random_password()
    bundle = {
        "pkcs12": base64.b64encode(
            make_pkcs12(key, leaf, chain, p12_pass, friendly_name=order.cert_id)
        ).decode("ascii"),
        "pkcsPass": p12_pass,
        "jks": base64.b64encode(make_jks(key, leaf, chain, jks_pass, alias=order.cert_id)).decode(
            "ascii"
        ),
        "jksPass": jks_pass,
    }
    return ctx.box.encrypt(
        json.dumps(bundle).encode("utf-8"), context=f"bundle:{order.cert_id}".encode("ascii")
    )
