"""Relying-party endpoints of the built-in CA: CA certificates, CRLs, OCSP (placeholder)."""

from __future__ import annotations

from fastapi import APIRouter

from certbroker.orders.context import OrdersContext


def pki_router(ctx: OrdersContext) -> APIRouter:
    return APIRouter()
