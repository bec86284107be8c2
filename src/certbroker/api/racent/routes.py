"""The Racent-compatible front end: `POST /ssl/<endpoint>`, answered in the envelope.

Each request passes, in order: the per-address rate limit, the body limits (size, time), the
field lengths, authentication, the per-token rate limit, then the handler. State-changing calls
are written to the audit log whatever their result, except rate-limited ones (a flood must not
become a flood of rows).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from certbroker import metrics
from certbroker.api.limits import (
    RATE_LIMITED_CODE,
    ApiGuard,
    ApiLimits,
    RateLimited,
    check_field_lengths,
)
from certbroker.api.racent import envelope, schemas
from certbroker.api.racent.decoding import close_uploads, read_fields, text_field
from certbroker.api.racent.endpoints import ENDPOINTS, Endpoint
from certbroker.orders import audit
from certbroker.orders.accounts import AccountRef
from certbroker.orders.context import OrdersContext
from certbroker.orders.errors import ApiError, Code

PREFIX = "/ssl/"
log = structlog.get_logger("certbroker.api")

# Fields that name the order a call is about, for the audit log.
CERT_ID_FIELDS = ("certId", "orderId", "renewId")
# The SPEC's state-changing calls are audited even if their Endpoint forgot `changes_state`.
SPEC_STATE_CHANGING = frozenset(
    {
        "place",
        "cancel",
        "reissue",
        "replace",
        "renew",
        "revoke",
        "updateDCV",
        "batchUpdateDCV",
        "removeMdcDomain",
        "batchRemoveMdcDomain",
    }
)


def audited(endpoint: Endpoint) -> bool:
    return endpoint.changes_state or endpoint.name in SPEC_STATE_CHANGING


Handler = Callable[[Request], Awaitable[Response]]


class RacentDispatch:
    """`POST /ssl/<endpoint>` straight to its handler, the name matched case-insensitively
    (`/ssl/batchupdatedcv` is `/ssl/batchUpdateDCV`, SPEC 1.1).

    The handlers need nothing of FastAPI's per-request machinery (routing over every path,
    dependency solving, exception middlewares): skipping it saves a large share of a cheap
    call such as collect (docs/PERFORMANCE.md). Errors still reach the app's handlers (an
    unexpected exception is answered -2 in the envelope by the outermost middleware). Other
    methods and paths go on to FastAPI, which answers 405/404 and serves the OpenAPI document
    of the same routes."""

    def __init__(self, app: ASGIApp, handlers: dict[str, Handler]) -> None:
        self.app = app
        self.handlers = handlers
        self.canonical = {name.lower(): name for name in handlers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(PREFIX):
                tail = path[len(PREFIX) :].rstrip("/")
                name = self.canonical.get(tail.lower())
                if name is not None:
                    if scope["method"] == "POST":
                        response = await self.handlers[name](Request(scope, receive))
                        await response(scope, receive, send)
                        return
                    if name != tail:
                        scope = dict(scope, path=PREFIX + name, raw_path=(PREFIX + name).encode())
        await self.app(scope, receive, send)


def configure_limits(app: Any, guard: ApiGuard) -> None:
    """Replace the limits of a running app (serve applies the settings; tests set low ones)."""
    app.state.api_guard = guard


def guard_of(app: Any) -> ApiGuard:
    guard = getattr(app.state, "api_guard", None)
    if not isinstance(guard, ApiGuard):
        guard = ApiGuard(ApiLimits())
        app.state.api_guard = guard
    return guard


def _request_body_doc(model: type[Any]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": ref},
            "application/x-www-form-urlencoded": {"schema": ref},
            "application/json": {"schema": ref},
        },
    }


@dataclass
class _Caller:
    """What is known about who calls, filled in as the request goes through the checks."""

    address: str
    account: AccountRef | None = None


def _run(
    ctx: OrdersContext, guard: ApiGuard, endpoint: Endpoint, fields: dict[str, Any], caller: _Caller
) -> tuple[Any, dict[str, Any]]:
    caller.account = guard.auth_cache.authenticate(
        ctx.db, text_field(fields, "api_token"), ctx.clock.now()
    )
    guard.check_token(caller.account.token_id)
    return endpoint.handler(ctx, caller.account, fields)


def _serve(
    ctx: OrdersContext, guard: ApiGuard, endpoint: Endpoint, fields: dict[str, Any], caller: _Caller
) -> tuple[Any, dict[str, Any]]:
    """The call and its audit row in one trip to the thread pool (each trip costs a thread
    hand-over; docs/PERFORMANCE.md)."""
    try:
        data, extra = _run(ctx, guard, endpoint, fields, caller)
    except ApiError as error:
        if audited(endpoint):
            _audit(ctx, endpoint, caller, fields, None, int(error.code))
        raise
    except RateLimited:
        raise  # not audited: a flood must not become a flood of rows
    except Exception:
        if audited(endpoint):
            _audit(ctx, endpoint, caller, fields, None, int(Code.UNEXPECTED))
        raise
    if audited(endpoint):
        _audit(ctx, endpoint, caller, fields, data, int(Code.SUCCESS))
    return data, extra


def _cert_id(fields: dict[str, Any], data: Any) -> str | None:
    for name in CERT_ID_FIELDS:
        value = fields.get(name)
        if isinstance(value, str | int) and str(value).strip():
            return str(value).strip()
    if isinstance(data, dict) and isinstance(data.get("certId"), str):
        return str(data["certId"])
    return None


def _audit(
    ctx: OrdersContext,
    endpoint: Endpoint,
    caller: _Caller,
    fields: dict[str, Any],
    data: Any,
    code: int,
) -> None:
    try:
        with ctx.db.transaction() as session:
            audit.record(
                session,
                now=ctx.clock.now(),
                account_id=caller.account.id if caller.account else None,
                token_id=caller.account.token_id if caller.account else None,
                source_address=caller.address,
                action=endpoint.name,
                cert_id=_cert_id(fields, data),
                code=code,
            )
    except Exception:
        # The call itself has been answered and committed; losing its audit row must be loud.
        log.exception("audit write failed", endpoint=endpoint.name, code=code)


def rate_limited_response(limited: RateLimited) -> JSONResponse:
    return JSONResponse(
        limited.body(), status_code=429, headers={"Retry-After": limited.retry_after_header}
    )


def _route(ctx: OrdersContext, endpoint: Endpoint) -> Handler:
    async def handle(request: Request) -> Response:
        started = time.perf_counter()
        guard = guard_of(request.app)
        caller = _Caller(address=request.client.host if request.client else "")
        fields: dict[str, Any] = {}
        served = False  # past this point _serve has written the audit row
        try:
            guard.check_address(caller.address)
            fields = await read_fields(
                request,
                max_bytes=guard.limits.max_body_bytes,
                timeout_seconds=guard.limits.body_timeout_seconds,
            )
            check_field_lengths(fields)
            served = True
            data, extra = await run_in_threadpool(_serve, ctx, guard, endpoint, fields, caller)
            response = envelope.success(data, **extra)
            code = int(Code.SUCCESS)
        except ApiError as error:
            response = envelope.failure(error)
            code = int(error.code)
            if not served and audited(endpoint):
                await run_in_threadpool(_audit, ctx, endpoint, caller, fields, None, code)
        except RateLimited as limited:
            log.info("rate limited", endpoint=endpoint.name, scope=limited.scope)
            metrics.observe_api_result(endpoint.name, RATE_LIMITED_CODE)
            return rate_limited_response(limited)
        except Exception as exc:
            # Answered here rather than re-raised: an exception that leaves the app makes the
            # server close the connection, which clients that keep it alive see as a reset.
            log.exception("unhandled error", endpoint=endpoint.name, error_type=type(exc).__name__)
            response = envelope.unexpected()
            code = int(Code.UNEXPECTED)
            if not served and audited(endpoint):
                await run_in_threadpool(
                    _audit, ctx, endpoint, caller, fields, None, int(Code.UNEXPECTED)
                )
        finally:
            await close_uploads(fields)
        metrics.observe_api_result(endpoint.name, code)
        log.info(
            "request",
            endpoint=endpoint.name,
            account=caller.account.id if caller.account else None,
            code=code,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return response

    handle.__name__ = endpoint.name
    return handle


RESPONSES: dict[int | str, dict[str, Any]] = {
    429: {
        "model": schemas.Envelope,
        "description": "Rate limit exceeded: code 429; the Retry-After header says when to "
        "try again (seconds).",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before the next request.",
                "schema": {"type": "string"},
            }
        },
    }
}


def racent_router(handlers: dict[str, Handler]) -> APIRouter:
    """The routes as FastAPI knows them: for the OpenAPI document and for what RacentDispatch
    passes on (wrong methods)."""
    router = APIRouter(tags=["Racent-compatible API"])
    for endpoint in ENDPOINTS:
        router.add_api_route(
            PREFIX + endpoint.name,
            handlers[endpoint.name],
            methods=["POST"],
            summary=endpoint.summary,
            response_model=schemas.Envelope,
            response_model_exclude_none=True,
            responses=RESPONSES,
            openapi_extra={"requestBody": _request_body_doc(endpoint.fields)},
            name=endpoint.name,
        )
    return router


def install(app: FastAPI, ctx: OrdersContext) -> None:
    handlers = {endpoint.name: _route(ctx, endpoint) for endpoint in ENDPOINTS}
    app.include_router(racent_router(handlers))
    app.add_middleware(RacentDispatch, handlers=handlers)
    guard_of(app)


def request_models() -> list[type[Any]]:
    return [e.fields for e in ENDPOINTS]
