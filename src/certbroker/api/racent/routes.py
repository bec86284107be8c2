"""The Racent-compatible front end: `POST /ssl/<endpoint>`, answered in the envelope."""

from __future__ import annotations

import time
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from certbroker.api.racent import envelope, schemas
from certbroker.api.racent.decoding import read_fields, text_field
from certbroker.api.racent.endpoints import ENDPOINTS, Endpoint
from certbroker.orders.accounts import authenticate
from certbroker.orders.context import OrdersContext
from certbroker.orders.errors import ApiError, Code

PREFIX = "/ssl/"
log = structlog.get_logger("certbroker.api")


class CaseInsensitiveEndpoints:
    """Route `/ssl/batchupdatedcv` like `/ssl/batchUpdateDCV` (SPEC 1.1)."""

    def __init__(self, app: ASGIApp, names: list[str]) -> None:
        self.app = app
        self.canonical = {name.lower(): name for name in names}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(PREFIX):
                tail = path[len(PREFIX) :].rstrip("/")
                name = self.canonical.get(tail.lower())
                if name is not None and name != tail:
                    scope = dict(scope, path=PREFIX + name, raw_path=(PREFIX + name).encode())
        await self.app(scope, receive, send)


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


def _run(
    ctx: OrdersContext, endpoint: Endpoint, fields: dict[str, Any]
) -> tuple[Any, dict[str, Any], int]:
    with ctx.db.transaction() as session:
        account = authenticate(session, text_field(fields, "api_token"), ctx.clock.now())
    data, extra = endpoint.handler(ctx, account, fields)
    return data, extra, account.id


def _route(ctx: OrdersContext, endpoint: Endpoint) -> Any:
    async def handle(request: Request) -> JSONResponse:
        started = time.perf_counter()
        account_id: int | None = None
        try:
            fields = await read_fields(request)
            data, extra, account_id = await run_in_threadpool(_run, ctx, endpoint, fields)
            response = envelope.success(data, **extra)
            code = int(Code.SUCCESS)
        except ApiError as error:
            response = envelope.failure(error)
            code = int(error.code)
        log.info(
            "request",
            endpoint=endpoint.name,
            account=account_id,
            code=code,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return response

    handle.__name__ = endpoint.name
    return handle


def racent_router(ctx: OrdersContext) -> APIRouter:
    router = APIRouter(tags=["Racent-compatible API"])
    for endpoint in ENDPOINTS:
        router.add_api_route(
            PREFIX + endpoint.name,
            _route(ctx, endpoint),
            methods=["POST"],
            summary=endpoint.summary,
            response_model=schemas.Envelope,
            response_model_exclude_none=True,
            openapi_extra={"requestBody": _request_body_doc(endpoint.fields)},
            name=endpoint.name,
        )
    return router


def install(app: FastAPI, ctx: OrdersContext) -> None:
    app.include_router(racent_router(ctx))
    app.add_middleware(CaseInsensitiveEndpoints, names=[e.name for e in ENDPOINTS])


def request_models() -> list[type[Any]]:
    return [e.fields for e in ENDPOINTS]
