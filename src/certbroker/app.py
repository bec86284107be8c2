"""The ASGI application: front ends mounted on one OrdersContext, worker in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from certbroker import __version__
from certbroker.api.ops import ops_router
from certbroker.api.pki_http import pki_router
from certbroker.api.racent import envelope
from certbroker.api.racent import routes as racent
from certbroker.api.web.approval import approval_router
from certbroker.api.web.downloads import downloads_router
from certbroker.metrics import install_metrics
from certbroker.orders.context import OrdersContext
from certbroker.orders.errors import Code
from certbroker.worker.runner import Worker

log = structlog.get_logger("certbroker.app")


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title="certbroker",
        version=__version__,
        description="Racent/NicSRS-compatible reseller API. Every endpoint is POST and accepts "
        "multipart/form-data, application/x-www-form-urlencoded or JSON; answers are HTTP 200 "
        "with the {code, data, errors} envelope.",
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in racent.request_models():
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in body.pop("$defs", {}).items():
            components[name] = sub
        components[model.__name__] = body
    app.openapi_schema = schema
    return schema


class AnswerUnexpected:
    """Answer an unexpected exception with the -2 envelope instead of letting it out.

    Starlette's handler for `Exception` answers but then re-raises, and the server closes the
    connection: a client keeping the connection alive sees its next request fail."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise  # half an answer is out: only closing the connection is honest
            log.exception("unhandled error", error_type=type(exc).__name__)
            await envelope.unexpected()(scope, receive, send)


def create_app(ctx: OrdersContext, *, worker: bool = True, poll_seconds: float = 1.0) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = None
        if ctx.key_pool is not None:
            ctx.key_pool.start((ctx.policy.default_key_spec,))
        if worker:
            runner = Worker(ctx, poll_seconds=poll_seconds)
            task = asyncio.create_task(runner.run_forever(stop))
            loop = asyncio.get_running_loop()

            def wake() -> None:
                loop.call_soon_threadsafe(runner.wake)

            ctx.wake = wake
        yield
        ctx.wake = lambda: None  # the loop is about to close
        stop.set()
        try:
            if task is not None:
                await task
        finally:
            if ctx.key_pool is not None:
                ctx.key_pool.close()  # no pool process outlives the app
        ctx.db.dispose()

    app = FastAPI(title="certbroker", version=__version__, lifespan=lifespan)
    racent.install(app, ctx)
    app.include_router(approval_router(ctx))
    app.include_router(ops_router(ctx))
    install_metrics(app)
    app.include_router(pki_router(ctx))
    app.include_router(downloads_router(ctx))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        racent_api = request.url.path.startswith("/ssl/")
        if exc.status_code == 405 and racent_api:
            message = "every endpoint takes POST only"
            headers = {"Allow": "POST"}
        elif exc.status_code == 405:
            # CRL, OCSP, approval pages...: say which methods this path has.
            message = "method not allowed"
            headers = dict(exc.headers or {})
        elif exc.status_code == 404:
            message = "unknown endpoint"
            headers = {}
        else:
            message = str(exc.detail)
            headers = {}
        return JSONResponse(
            envelope.error_body(int(Code.INVALID), message),
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(envelope.error_body(int(Code.INVALID), "the request could not be read"))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # The details go to the log only: clients get the envelope, never a stack trace.
        log.exception("unhandled error", error_type=type(exc).__name__)
        return envelope.unexpected()

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(AnswerUnexpected)  # last: outside every other middleware
    return app
