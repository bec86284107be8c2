"""GET /download/<token>.zip: the certPath bundle (not the Racent API, so no envelope)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from certbroker.orders import downloads
from certbroker.orders.context import OrdersContext
from certbroker.orders.states import Status
from certbroker.orders.views import view_order
from certbroker.store.models import Order


def downloads_router(ctx: OrdersContext) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def bundle(token: str) -> Response:
        grant = downloads.open_token(ctx, token, ctx.clock.now())
        if grant is None:
            return PlainTextResponse("this download link is invalid or has expired\n", 404)
        with ctx.db.transaction() as session:
            order = session.scalar(
                select(Order).where(
                    Order.cert_id == grant.cert_id, Order.account_id == grant.account_id
                )
            )
            if order is None or order.status not in (Status.COMPLETE, Status.REISSUED):
                return PlainTextResponse("no certificate to download\n", 404)
            issued = view_order(ctx, session, order).issued
        if issued is None or issued.private_key is None:
            return PlainTextResponse("no certificate to download\n", 404)
        return Response(
            downloads.build_zip(grant.cert_id, issued),
            media_type="application/zip",
            headers={
                "Content-Disposition": f'attachment; filename="{grant.cert_id}.zip"',
                "Cache-Control": "no-store",
            },
        )

    @router.get("/download/{token}.zip")
    async def download(token: str) -> Response:
        return await run_in_threadpool(bundle, token)

    return router
