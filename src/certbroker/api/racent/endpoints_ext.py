"""certbroker extensions to the Racent API (documented as such in docs/API.md)."""

from __future__ import annotations

from typing import Any

from certbroker.api.racent import schemas
from certbroker.api.racent.decoding import text_field
from certbroker.api.racent.encode import wire_date
from certbroker.api.racent.endpoints import Answer, Endpoint, Fields
from certbroker.orders import webhook_settings
from certbroker.orders.accounts import AccountRef
from certbroker.orders.context import OrdersContext
from certbroker.orders.errors import ApiError

_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


def _flag(fields: Fields, name: str) -> bool:
    text = text_field(fields, name)
    if text is None or text.lower() in _FALSE:
        return False
    if text.lower() in _TRUE:
        return True
    raise ApiError.invalid(name, f"{name} must be 1 or 0")


def _webhook(view: webhook_settings.WebhookView | None, offset: int) -> dict[str, Any] | None:
    if view is None:
        return None
    out: dict[str, Any] = {
        "url": view.url,
        "enabled": view.enabled,
        "createdAt": wire_date(view.created_at, offset),
        "updatedAt": wire_date(view.updated_at, offset),
    }
    if view.secret is not None:
        out["secret"] = view.secret
    return out


def webhook_set(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    view = webhook_settings.set_webhook(
        ctx,
        account.id,
        text_field(fields, "url"),
        text_field(fields, "secret"),
        rotate_secret=_flag(fields, "rotateSecret"),
    )
    return _webhook(view, ctx.policy.utc_offset_hours), {}


def webhook_disable(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    view = webhook_settings.disable_webhook(ctx, account.id)
    return _webhook(view, ctx.policy.utc_offset_hours), {}


def _delivery(item: webhook_settings.DeliveryView, offset: int) -> dict[str, Any]:
    return {
        "eventId": item.event_id,
        "type": item.event_type,
        "certId": item.cert_id,
        "eventTime": wire_date(item.event_created_at, offset),
        "status": item.state,
        "attempts": item.attempts,
        "lastAttemptTime": wire_date(item.last_attempt_at, offset),
        "nextAttemptTime": wire_date(item.next_attempt_at, offset),
        "deliveredTime": wire_date(item.delivered_at, offset),
        "lastError": item.last_error or "",
        "log": [
            {
                "time": wire_date(attempt.at, offset),
                "url": attempt.url,
                "httpStatus": attempt.http_status,
                "error": attempt.error or "",
                "ms": attempt.duration_ms,
            }
            for attempt in item.log
        ],
    }


def webhook_deliveries(ctx: OrdersContext, account: AccountRef, fields: Fields) -> Answer:
    offset = ctx.policy.utc_offset_hours
    items = webhook_settings.list_deliveries(
        ctx, account.id, text_field(fields, "certId"), text_field(fields, "limit")
    )
    return {
        "webhook": _webhook(webhook_settings.show_webhook(ctx, account.id), offset),
        "deliveries": [_delivery(item, offset) for item in items],
    }, {}


EXTENSION_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "webhookSet",
        "certbroker extension: set the account's webhook URL (and secret); enables it",
        schemas.WebhookSetFields,
        webhook_set,
        changes_state=True,
    ),
    Endpoint(
        "webhookDisable",
        "certbroker extension: stop webhook deliveries; pending ones are cancelled",
        schemas.TokenOnlyFields,
        webhook_disable,
        changes_state=True,
    ),
    Endpoint(
        "webhookDeliveries",
        "certbroker extension: the webhook delivery log, newest first, with every attempt",
        schemas.WebhookDeliveriesFields,
        webhook_deliveries,
    ),
)
