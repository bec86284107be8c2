"""Webhooks: events of the outbox POSTed to each account's callback URL (docs/API.md "Webhooks").

The worker step `run_step` does three things, each in short transactions:

1. Queue: every event of an account with an enabled webhook gets one `webhook_deliveries` row
   (events of accounts without one stay untouched; set-up marks older events "skipped").
2. Claim due deliveries with a lease (`FOR UPDATE SKIP LOCKED`, like DCV checks).
3. POST each one, signed, and record the attempt. Only a 2xx answer marks it delivered, and only
   after the answer arrived, so delivery is at-least-once: receivers de-duplicate on
   `X-Certbroker-Delivery` (the event id). Anything else is retried with back-off
   (`RETRY_SCHEDULE`) until `GIVE_UP_AFTER`, then the delivery is marked failed.

Order: an account's claimed deliveries are sent one after another in event order, so first
attempts arrive in event order. A delivery that fails does not hold back later ones (no
head-of-line blocking), except when the endpoint cannot be reached at all (DNS, refused address,
connection failure): then the account's other claimed deliveries wait with it, unattempted.

Callback URLs are chosen by customers, so the SSRF rules of DCV apply (validation/
safe_addresses.py): the host is resolved through the configured resolver at every attempt, every
address must pass the `AddressPolicy` (private and loopback refused unless allowed by
CERTBROKER_DCV_ALLOW_NETWORKS), and the connection goes to the checked address with the original
Host header and TLS server name, so DNS rebinding cannot redirect it. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import secrets
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import select, update

from certbroker.orders.context import OrdersContext, Policy
from certbroker.store.db import lock_row
from certbroker.store.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from certbroker.validation.http_file import Resolver
from certbroker.validation.resolver import make_address_resolver
from certbroker.validation.safe_addresses import (
    AddressPolicy,
    IPAddress,
    ascii_host,
    parse_ip,
    valid_host,
)

log = structlog.get_logger("certbroker.webhooks")

RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=10),
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=6),  # and every 6 hours after that
)
GIVE_UP_AFTER = timedelta(days=3)
TIMEOUT_SECONDS = 10.0
MAX_URL_LENGTH = 2048
CLAIM_LIMIT = 50
QUEUE_LIMIT = 500
PARALLEL_ACCOUNTS = 20
MAX_RESPONSE_BYTES = 1024
EXCERPT_CHARS = 200

EVENT_HEADER = "X-Certbroker-Event"
DELIVERY_HEADER = "X-Certbroker-Delivery"
SIGNATURE_HEADER = "X-Certbroker-Signature"
USER_AGENT = "certbroker-webhooks/1"


# --- signing -------------------------------------------------------------------------------


def new_secret() -> str:
    """A signing secret: 256 random bits."""
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`X-Certbroker-Signature`: `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` (RFC
    2104). The timestamp is signed with the body so a captured request cannot be replayed
    later than the receiver's tolerance."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


# --- destinations (SSRF) -------------------------------------------------------------------


class DestinationError(Exception):
    """The callback URL cannot be used now; `refused` when its address is not allowed."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


def parse_callback_url(text: str) -> httpx.URL:
    """An absolute http(s) URL without user info or fragment; raises ValueError saying why."""
    text = text.strip()
    if len(text) > MAX_URL_LENGTH:
        raise ValueError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise ValueError(f"not a valid URL: {exc}") from exc
    if url.scheme not in ("http", "https"):
        raise ValueError("the URL must start with https:// or http://")
    if not url.raw_host or not valid_host(ascii_host(url)):
        raise ValueError("the URL needs a valid host name or IP address")
    if url.userinfo:
        raise ValueError("the URL must not hold a user name or password")
    if url.fragment:
        raise ValueError("the URL must not have a #fragment")
    return url


@functools.cache
def _address_policy(allow_networks: tuple[str, ...]) -> AddressPolicy:
    return AddressPolicy.from_strings(allow_networks)


@functools.cache
def _resolver(address: str | None, timeout: float) -> Resolver:
    return make_address_resolver(address, timeout)


async def checked_addresses(url: httpx.URL, policy: Policy) -> list[IPAddress]:
    """Every address of the URL's host, if all are allowed; else DestinationError."""
    rules = _address_policy(policy.dcv_allow_networks)
    host = ascii_host(url)
    literal = parse_ip(host)
    if literal is not None:
        answers: Sequence[str] = [host]
    else:
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                answers = await _resolver(policy.dcv_resolver, TIMEOUT_SECONDS)(host)
        except TimeoutError as exc:
            raise DestinationError(f"DNS lookup of {host} timed out") from exc
        except Exception as exc:  # the resolver reports NXDOMAIN, SERVFAIL, ... as its text
            raise DestinationError(f"DNS lookup of {host} failed: {exc}") from exc
    addresses: list[IPAddress] = []
    for answer in answers:
        ip = parse_ip(answer)
        if ip is None:
            raise DestinationError(f"DNS lookup of {host} returned an invalid address")
        reason = rules.check(ip)
        if reason:
            subject = host if literal is not None else f"{host} resolves to {ip}, which"
            raise DestinationError(
                f"{subject} is {reason}: webhooks are only sent to public addresses",
                refused=True,
            )
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise DestinationError(f"{host} has no A or AAAA records")
    return addresses


def check_destination(url: httpx.URL, policy: Policy) -> None:
    """`checked_addresses` for synchronous callers (set-up from the API thread pool or CLI)."""
    asyncio.run(checked_addresses(url, policy))


# --- one HTTP attempt ----------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one attempt got. `unreachable`: no connection at all (the whole endpoint is down,
    so the account's other deliveries wait too)."""

    ok: bool
    http_status: int | None = None
    error: str | None = None
    unreachable: bool = False
    duration_ms: int = 0


async def post_signed(
    url_text: str, body: bytes, headers: dict[str, str], policy: Policy
) -> Outcome:
    """POST `body` to the callback URL, connecting only to checked addresses."""
    started = time.perf_counter()
    outcome = await _post(url_text, body, headers, policy)
    elapsed = int((time.perf_counter() - started) * 1000)
    return Outcome(outcome.ok, outcome.http_status, outcome.error, outcome.unreachable, elapsed)


async def _post(url_text: str, body: bytes, headers: dict[str, str], policy: Policy) -> Outcome:
    try:
        url = parse_callback_url(url_text)
        addresses = await checked_addresses(url, policy)
    except ValueError as exc:
        return Outcome(False, error=f"invalid callback URL: {exc}", unreachable=True)
    except DestinationError as exc:
        return Outcome(False, error=str(exc), unreachable=True)
    failures: list[str] = []
    for ip in addresses:
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                return await _exchange(url, ip, body, headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            failures.append(_connect_failure(exc, url, ip))  # try the next address
        except TimeoutError:
            return Outcome(False, error=f"no answer within {TIMEOUT_SECONDS:g} s")
        except httpx.RemoteProtocolError as exc:
            return Outcome(False, error=f"invalid HTTP answer: {_excerpt(str(exc))}")
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            return Outcome(False, error=f"request failed: {_excerpt(str(exc) or repr(exc))}")
    return Outcome(False, error="; ".join(failures), unreachable=True)


async def _exchange(url: httpx.URL, ip: IPAddress, body: bytes, headers: dict[str, str]) -> Outcome:
    # Connect to the checked address; the name only travels in Host and the TLS server name
    # (which is also what the certificate is verified against).
    by_address = httpx.URL(scheme=url.scheme, host=str(ip), port=url.port, raw_path=url.raw_path)
    tls_name = {} if parse_ip(ascii_host(url)) else {"sni_hostname": ascii_host(url)}
    async with httpx.AsyncClient(
        verify=ssl.create_default_context(),
        trust_env=False,  # a proxy variable must not route customer URLs elsewhere
        follow_redirects=False,
        timeout=httpx.Timeout(TIMEOUT_SECONDS, connect=TIMEOUT_SECONDS / 2),
    ) as client:
        request = client.build_request(
            "POST",
            by_address,
            content=body,
            headers={"Host": url.netloc.decode("ascii"), **headers},
            extensions=tls_name,
        )
        response = await client.send(request, stream=True)
        try:
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) >= MAX_RESPONSE_BYTES:
                    break
        finally:
            await response.aclose()
    status = response.status_code
    if 200 <= status < 300:
        return Outcome(True, http_status=status)
    if 300 <= status < 400:
        return Outcome(
            False, http_status=status, error=f"HTTP {status} (redirects are not followed)"
        )
    text = _excerpt(bytes(data).decode("utf-8", errors="replace").strip())
    return Outcome(
        False, http_status=status, error=f"HTTP {status}" + (f": {text}" if text else "")
    )


def _connect_failure(exc: Exception, url: httpx.URL, ip: IPAddress) -> str:
    port = url.port or _default_port(url)
    where = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    if isinstance(exc, httpx.ConnectTimeout):
        return f"connecting to {where} timed out"
    return f"could not connect to {where}: {_excerpt(str(exc) or type(exc).__name__)}"


def _default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


# --- payload -------------------------------------------------------------------------------


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_body(event_id: str, kind: str, created_at: datetime, payload: dict[str, Any]) -> bytes:
    """`{id, type, createdAt, certId, data}` as compact UTF-8 JSON: the bytes that are signed."""
    document = {
        "id": event_id,
        "type": kind,
        "createdAt": iso_utc(created_at),
        "certId": payload.get("certId"),
        "data": {key: value for key, value in payload.items() if key != "certId"},
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --- the worker step -----------------------------------------------------------------------


def queue_events(ctx: OrdersContext, limit: int = QUEUE_LIMIT) -> int:
    """Give each new event of an account with an enabled webhook its delivery row."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        rows = session.execute(
            select(Event.id, Event.account_id)
            .join(WebhookEndpoint, WebhookEndpoint.account_id == Event.account_id)
            .where(WebhookEndpoint.enabled.is_(True), Event.webhook_state.is_(None))
            .order_by(Event.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=Event)
        ).all()
        if not rows:
            return 0
        for event_row_id, account_id in rows:
            session.add(
                WebhookDelivery(
                    event_id=event_row_id,
                    account_id=account_id,
                    state="pending",
                    attempts=0,
                    created_at=now,
                    give_up_at=now + GIVE_UP_AFTER,
                    next_attempt_at=now,
                )
            )
        session.execute(
            update(Event).where(Event.id.in_([r[0] for r in rows])).values(webhook_state="queued")
        )
    return len(rows)


@dataclass(frozen=True)
class Due:
    """One claimed delivery, ready to send (secret decrypted, body built)."""

    delivery_id: int
    account_id: int
    event_id: str
    event_type: str
    url: str
    secret: str
    body: bytes


def secret_context(account_id: int) -> bytes:
    return f"webhook:{account_id}".encode("ascii")


def claim_due(ctx: OrdersContext, owner: str, limit: int = CLAIM_LIMIT) -> list[Due]:
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        rows = session.execute(
            select(
                WebhookDelivery.id,
                WebhookDelivery.account_id,
                Event.event_id,
                Event.type,
                Event.created_at,
                Event.payload,
                WebhookEndpoint.url,
                WebhookEndpoint.secret_encrypted,
            )
            .join(Event, Event.id == WebhookDelivery.event_id)
            .join(WebhookEndpoint, WebhookEndpoint.account_id == WebhookDelivery.account_id)
            .where(
                WebhookDelivery.state == "pending",
                WebhookDelivery.next_attempt_at <= now,
                (WebhookDelivery.lease_until.is_(None)) | (WebhookDelivery.lease_until < now),
                WebhookEndpoint.enabled.is_(True),
            )
            .order_by(WebhookDelivery.id)  # event order
            .limit(limit)
            .with_for_update(skip_locked=True, of=WebhookDelivery)
        ).all()
        if rows:
            # Long enough for one account's deliveries sent one after another.
            lease = ctx.policy.lease + timedelta(seconds=TIMEOUT_SECONDS * len(rows))
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_([r[0] for r in rows]))
                .values(lease_owner=owner, lease_until=now + lease)
            )
    return [
        Due(
            delivery_id=delivery_id,
            account_id=account_id,
            event_id=event_id,
            event_type=kind,
            url=url,
            secret=ctx.box.decrypt(sealed, context=secret_context(account_id)).decode("utf-8"),
            body=event_body(event_id, kind, created_at, payload),
        )
        for delivery_id, account_id, event_id, kind, created_at, payload, url, sealed in rows
    ]


def next_delay(attempts: int) -> timedelta:
    """Back-off after the n-th failed attempt: the schedule, then its last step forever."""
    return RETRY_SCHEDULE[min(attempts - 1, len(RETRY_SCHEDULE) - 1)]


def record_attempt(
    ctx: OrdersContext, due: Due, owner: str, outcome: Outcome, at: datetime
) -> timedelta | None:
    """Log the attempt and move the delivery on; returns the back-off used when it failed."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        row = lock_row(session, WebhookDelivery, due.delivery_id)
        if row is None:
            return None
        session.add(
            WebhookAttempt(
                delivery_id=row.id,
                attempted_at=at,
                url=due.url,
                http_status=outcome.http_status,
                error=outcome.error,
                duration_ms=outcome.duration_ms,
            )
        )
        row.attempts += 1
        row.last_attempt_at = at
        if row.state != "pending":  # cancelled meanwhile, or delivered by another worker
            return None
        if outcome.ok:
            # A 2xx counts whoever holds the lease: the receiver has the event.
            row.state, row.delivered_at, row.last_error = "delivered", now, None
            row.next_attempt_at = row.lease_until = row.lease_owner = None
            return None
        if row.lease_owner != owner:  # the lease ran out; its new holder reschedules
            return None
        delay = next_delay(row.attempts)
        _fail_or_reschedule(row, now, delay, outcome.error or "failed")
        return delay


def defer(ctx: OrdersContext, dues: Sequence[Due], owner: str, delay: timedelta, why: str) -> None:
    """The endpoint is unreachable: the account's other claimed deliveries wait, unattempted."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        for due in dues:
            row = lock_row(session, WebhookDelivery, due.delivery_id)
            if row is None or row.state != "pending" or row.lease_owner != owner:
                continue
            _fail_or_reschedule(row, now, delay, f"not attempted: {why}")


def _fail_or_reschedule(row: WebhookDelivery, now: datetime, delay: timedelta, error: str) -> None:
    row.last_error = error
    row.lease_owner = row.lease_until = None
    if now + delay > row.give_up_at:
        row.state, row.next_attempt_at = "failed", None
        row.last_error = f"gave up after {GIVE_UP_AFTER.days} days; last: {error}"
    else:
        row.next_attempt_at = now + delay


async def _send_account(ctx: OrdersContext, owner: str, dues: list[Due]) -> int:
    """One account's deliveries, in event order, one at a time."""
    for index, due in enumerate(dues):
        at = ctx.clock.now()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_HEADER: due.event_type,
            DELIVERY_HEADER: due.event_id,
            SIGNATURE_HEADER: signature(due.secret, int(at.timestamp()), due.body),
        }
        outcome = await post_signed(due.url, due.body, headers, ctx.policy)
        delay = await asyncio.to_thread(record_attempt, ctx, due, owner, outcome, at)
        log.info(
            "webhook delivery",
            delivery_id=due.delivery_id,
            event_id=due.event_id,
            account=due.account_id,
            ok=outcome.ok,
            http_status=outcome.http_status,
        )
        if outcome.unreachable and delay is not None:
            rest = dues[index + 1 :]
            if rest:
                await asyncio.to_thread(defer, ctx, rest, owner, delay, outcome.error or "")
            return index + 1
    return len(dues)


async def run_step(ctx: OrdersContext, owner: str) -> int:
    """The worker's webhook step: queue new events, send due deliveries; returns the count."""
    queued = await asyncio.to_thread(queue_events, ctx)
    dues = await asyncio.to_thread(claim_due, ctx, owner)
    by_account: dict[int, list[Due]] = {}
    for due in dues:
        by_account.setdefault(due.account_id, []).append(due)
    limit = asyncio.Semaphore(PARALLEL_ACCOUNTS)

    async def one(batch: list[Due]) -> int:
        async with limit:
            return await _send_account(ctx, owner, batch)

    sent = await asyncio.gather(*(one(batch) for batch in by_account.values()))
    return queued + sum(sent)


# --- small helpers -------------------------------------------------------------------------


def _excerpt(text: str) -> str:
    """A short, printable piece of what a receiver said, for the delivery log."""
    clean = "".join(c if c.isprintable() else " " for c in text)
    return clean if len(clean) <= EXCERPT_CHARS else clean[:EXCERPT_CHARS] + "…"
