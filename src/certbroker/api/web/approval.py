"""Approver e-mail pages: open the one-time link, confirm, or enter the code (placeholder)."""

from __future__ import annotations

from fastapi import APIRouter

from certbroker.orders.context import OrdersContext


def approval_router(ctx: OrdersContext) -> APIRouter:
    return APIRouter()
