"""Operations endpoints: health, readiness, metrics (placeholder)."""

from __future__ import annotations

from fastapi import APIRouter

from certbroker.orders.context import OrdersContext


def ops_router(ctx: OrdersContext) -> APIRouter:
    return APIRouter()
