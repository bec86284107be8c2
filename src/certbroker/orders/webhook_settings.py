"""An account's webhook: callback URL and signing secret, and the delivery log it can read.

Delivery itself is notify/webhooks.py. Events recorded before a webhook is set up (or while it
is disabled) are not delivered: set-up marks them "skipped", so a new receiver is not flooded
with history and a re-enabled one does not get what happened while it was off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update

from certbroker.notify import webhooks
from certbroker.orders.context import OrdersContext
from certbroker.orders.errors import ApiError, Code
from certbroker.store.db import lock_row
from certbroker.store.models import (
    Account,
    Event,
    Order,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# Printable ASCII without spaces, long enough to resist guessing (HMAC keys, RFC 2104 3).
_SECRET = re.compile(r"[\x21-\x7e]{16,200}")


@dataclass(frozen=True)
class WebhookView:
    url: str
    enabled: bool
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None
    # Only right after it was generated: shown once, never again.
    secret: str | None = None


@dataclass(frozen=True)
class AttemptView:
    at: datetime
    url: str
    http_status: int | None
    error: str | None
    duration_ms: int


@dataclass(frozen=True)
class DeliveryView:
    event_id: str
    event_type: str
    cert_id: str | None
    event_created_at: datetime
    state: str  # pending | delivered | failed | cancelled
    attempts: int
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None
    log: tuple[AttemptView, ...]


def _view(row: WebhookEndpoint, secret: str | None = None) -> WebhookView:
    return WebhookView(
        url=row.url,
        enabled=row.enabled,
        created_at=row.created_at,
        updated_at=row.updated_at,
        disabled_at=row.disabled_at,
        secret=secret,
    )


def checked_url(ctx: OrdersContext, url: str | None) -> str:
    """The callback URL if it is well formed and its host only has allowed addresses now (it
    is checked again at every delivery: DNS answers change)."""
    if url is None:
        raise ApiError(Code.INVALID, {"url": ["url is required"]})
    try:
        parsed = webhooks.parse_callback_url(url)
    except ValueError as exc:
        raise ApiError.invalid("url", str(exc)) from exc
    try:
        webhooks.check_destination(parsed, ctx.policy)
    except webhooks.DestinationError as exc:
        raise ApiError.invalid("url", str(exc)) from exc
    return str(parsed)


def set_webhook(
    ctx: OrdersContext,
    account_id: int,
    url: str | None,
    secret: str | None = None,
    *,
    rotate_secret: bool = False,
) -> WebhookView:
    """Create or change the account's webhook and enable it.

    The secret: `secret` when given; else a new one when there is none yet or `rotate_secret`;
    else the current one stays. A generated secret is in the answer, the only time it is shown.
    """
    target = checked_url(ctx, url)
    if secret is not None and not _SECRET.fullmatch(secret):
        raise ApiError.invalid("secret", "secret must be 16 to 200 printable ASCII characters")
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        lock_row(session, Account, account_id)  # one set-up at a time per account
        row = session.scalar(
            select(WebhookEndpoint).where(WebhookEndpoint.account_id == account_id)
        )
        generated = None
        if secret is None and (row is None or rotate_secret):
            secret = generated = webhooks.new_secret()
        sealed = (
            ctx.box.encrypt(secret.encode("utf-8"), context=webhooks.secret_context(account_id))
            if secret is not None
            else None
        )
        if row is None:
            assert sealed is not None
            row = WebhookEndpoint(
                account_id=account_id,
                url=target,
                secret_encrypted=sealed,
                enabled=False,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
        row.url, row.updated_at = target, now
        if sealed is not None:
            row.secret_encrypted = sealed
        if not row.enabled:
            # Only what happens from now on is delivered.
            session.execute(
                update(Event)
                .where(Event.account_id == account_id, Event.webhook_state.is_(None))
                .values(webhook_state="skipped")
            )
            row.enabled, row.disabled_at = True, None
        session.flush()
        return _view(row, generated)


def disable_webhook(ctx: OrdersContext, account_id: int) -> WebhookView | None:
    """Stop delivering: pending deliveries are cancelled; None when no webhook is set."""
    now = ctx.clock.now()
    with ctx.db.transaction() as session:
        lock_row(session, Account, account_id)
        row = session.scalar(
            select(WebhookEndpoint).where(WebhookEndpoint.account_id == account_id)
        )
        if row is None:
            return None
        if row.enabled:
            row.enabled, row.disabled_at, row.updated_at = False, now, now
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.account_id == account_id, WebhookDelivery.state == "pending")
                .values(
                    state="cancelled",
                    next_attempt_at=None,
                    lease_owner=None,
                    lease_until=None,
                    last_error="cancelled: the webhook was disabled",
                )
            )
        return _view(row)


def show_webhook(ctx: OrdersContext, account_id: int) -> WebhookView | None:
    with ctx.db.transaction() as session:
        row = session.scalar(
            select(WebhookEndpoint).where(WebhookEndpoint.account_id == account_id)
        )
        return None if row is None else _view(row)


def list_deliveries(
    ctx: OrdersContext, account_id: int, cert_id: str | None = None, limit: str | int | None = None
) -> list[DeliveryView]:
    """The account's deliveries, newest event first, each with its attempts (oldest first)."""
    count = _limit(limit)
    with ctx.db.transaction() as session:
        query = (
            select(WebhookDelivery, Event)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.account_id == account_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(count)
        )
        if cert_id is not None:
            order_id = session.scalar(
                select(Order.id).where(Order.cert_id == cert_id, Order.account_id == account_id)
            )
            if order_id is None:
                # Another account's certId reads exactly like an unknown one (docs/API.md).
                raise ApiError(Code.INVALID, {"certId": [f"certificate {cert_id[:40]} not found"]})
            query = query.where(Event.order_id == order_id)
        rows = session.execute(query).all()
        attempts: dict[int, list[AttemptView]] = {}
        if rows:
            for attempt in session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id.in_([d.id for d, _e in rows]))
                .order_by(WebhookAttempt.id)
            ):
                attempts.setdefault(attempt.delivery_id, []).append(
                    AttemptView(
                        at=attempt.attempted_at,
                        url=attempt.url,
                        http_status=attempt.http_status,
                        error=attempt.error,
                        duration_ms=attempt.duration_ms,
                    )
                )
        return [
            DeliveryView(
                event_id=event.event_id,
                event_type=event.type,
                cert_id=event.payload.get("certId"),
                event_created_at=event.created_at,
                state=delivery.state,
                attempts=delivery.attempts,
                last_attempt_at=delivery.last_attempt_at,
                next_attempt_at=delivery.next_attempt_at,
                delivered_at=delivery.delivered_at,
                last_error=delivery.last_error,
                log=tuple(attempts.get(delivery.id, ())),
            )
            for delivery, event in rows
        ]


def _limit(value: str | int | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError.invalid("limit", f"limit must be a number from 1 to {MAX_LIMIT}")
    return int(text)
