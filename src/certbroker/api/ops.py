"""Operations endpoints for load balancers and Prometheus.

`GET /healthz`: the process is alive (liveness; it checks nothing else, so a database outage does
not make an orchestrator restart every server). `GET /readyz`: the database answers (readiness;
take the server out of the load balancer while it does not). `GET /metrics`: Prometheus text.
"""

from __future__ import annotations

import structlog
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from certbroker import metrics
from certbroker.orders.context import OrdersContext

log = structlog.get_logger("certbroker.ops")


def ops_router(ctx: OrdersContext) -> APIRouter:
    router = APIRouter(tags=["Operations"])

    @router.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @router.get("/readyz", summary="Readiness: the database answers")
    async def readyz() -> JSONResponse:
        try:
            await run_in_threadpool(ctx.db.ping)
        except Exception as exc:  # any failure means "not ready"; the kind goes to the log
            log.warning("readiness check failed", error_type=type(exc).__name__)
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
        return JSONResponse({"status": "ready", "database": "ok"})

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "Prometheus text exposition format",
            }
        },
    )
    async def prometheus() -> Response:
        body, content_type = await run_in_threadpool(metrics.exposition, ctx.db, ctx.clock)
        return Response(body, media_type=content_type)

    return router
