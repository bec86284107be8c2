"""Revoking certificates an upstream ACME CA issued: at the upstream first, then here.

The upstream's CRL and OCSP are what relying parties see, so a revocation that only changed our
rows would be a lie. `revoke` and `cancel` ask the upstream (RFC 8555 7.6) before their
transaction, outside it (a hanging upstream must not hold a database lock); the transaction then
records only what the upstream revoked, and refuses, changing nothing, when a certificate of
the order was issued meanwhile and is not revoked upstream yet.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from certbroker.issuance.acme_upstream import UpstreamError
from certbroker.orders.context import OrdersContext
from certbroker.orders.errors import ApiError, Code
from certbroker.orders.upstream_accounts import account_key
from certbroker.store.models import Certificate, Order, UpstreamOrder

UPSTREAM_ISSUER = "upstream"  # Certificate.issuer of upstream certificates


def upstream_certificates(session: Session, order_ids: Iterable[int]) -> list[tuple[int, str, str]]:
    """(certificate row id, PEM, upstream name) of the unrevoked upstream certificates of
    these orders."""
    rows = session.execute(
        select(Certificate.id, Certificate.pem, UpstreamOrder.upstream)
        .join(UpstreamOrder, UpstreamOrder.order_id == Certificate.order_id)
        .where(
            Certificate.order_id.in_(list(order_ids)),
            Certificate.issuer == UPSTREAM_ISSUER,
            Certificate.state == "issued",
            Certificate.revoked_at.is_(None),
            UpstreamOrder.status == "downloaded",
        )
    ).all()
    return [(row_id, pem, upstream) for row_id, pem, upstream in rows if pem]


def revoke_upstream(
    ctx: OrdersContext, certificates: list[tuple[int, str, str]], reason: int
) -> set[int]:
    """Revoke each certificate at its upstream; returns the row ids revoked there. An upstream
    that refuses (other than "already revoked") stops the call with -6 and nothing recorded."""
    done: set[int] = set()
    for row_id, pem, upstream in certificates:
        config = ctx.upstreams.get(upstream)
        with ctx.db.read() as session:
            key = account_key(ctx, session, upstream)
        if config is None or key is None or key.account_url is None:
            raise ApiError(
                Code.CA_FAILED,
                f"the certificate was issued by upstream {upstream}, which has no usable "
                "account now; it was not revoked (the operator runs certbroker upstream check)",
            )
        client = ctx.upstream_clients.get(config, key.key_pem, key.account_url)
        try:
            client.revoke(pem, reason)
        except UpstreamError as exc:
            if exc.problem != "alreadyRevoked":
                raise ApiError(
                    Code.CA_FAILED,
                    f"upstream {upstream} did not revoke the certificate ({exc.problem}: "
                    f"{exc.detail}); nothing was changed, try again",
                ) from None
        done.add(row_id)
    return done


def require_revoked_upstream(certificates: Iterable[Certificate], done: set[int]) -> None:
    """Inside the recording transaction: every upstream certificate about to be marked revoked
    was revoked upstream by this call."""
    missed = [c for c in certificates if c.issuer == UPSTREAM_ISSUER and c.id not in done]
    if missed:
        raise ApiError(
            Code.CA_FAILED,
            "a certificate of this order was issued while it was being revoked; nothing was "
            "changed, try again",
        )


def subscription_order_ids(session: Session, order: Order) -> list[int]:
    root = order.subscription_cert_id or order.cert_id
    return list(session.scalars(select(Order.id).where(Order.subscription_cert_id == root)))
