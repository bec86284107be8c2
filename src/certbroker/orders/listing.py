"""The account's certificates (SPEC 4.19 `list`), paged and filtered."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, or_, select

from certbroker.orders.accounts import AccountRef
from certbroker.orders.context import OrdersContext
from certbroker.orders.errors import ApiError, Code
from certbroker.orders.states import Status
from certbroker.store.models import Certificate, LedgerEntry, Order, OrderName

MAX_PAGE_SIZE = 200
# The highest page number: far more than any account has, small enough that the offset fits
# every database's integers.
MAX_PAGE = 1_000_000
# `list` without paging parameters answers every order, up to this many (clients that do not
# page would otherwise miss orders; `total` still counts them all).
MAX_UNPAGED = 10_000


@dataclass(frozen=True)
class ListFilter:
    page: int = 1
    page_size: int = 50
    # False when the client sent no paging parameters: every order, up to MAX_UNPAGED.
    paged: bool = True
    status: str | None = None
    product_code: str | None = None
    domain: str | None = None
    created_from: datetime | None = None
    created_until: datetime | None = None  # exclusive


@dataclass(frozen=True)
class ListRow:
    cert_id: str
    order_num: str
    ref_id: str | None
    status: str
    names: tuple[str, ...]
    years: int
    product_code: str
    price_cents: int
    # Reissues and replacements are free: only orders with a charge in the ledger cost money.
    charged: bool
    created_at: datetime
    begin: datetime | None
    end: datetime | None
    due_at: datetime | None


def _filtered(account: AccountRef, flt: ListFilter) -> Select[int]:
    query = select(Order.id).where(Order.account_id == account.id)
    if flt.status:
        if flt.status not in Status.__members__:
            allowed = ", ".join(Status.__members__)
            raise ApiError.invalid("status", f"status must be one of {allowed}")
        query = query.where(Order.status == flt.status)
    if flt.product_code:
        query = query.where(Order.product_code == flt.product_code)
    if flt.domain:
        domain = flt.domain.lower().rstrip(".")
        # The name itself, or any name under it; % and _ in the filter are literal characters.
        literal = domain.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        names = select(OrderName.order_id).where(
            or_(OrderName.name == domain, OrderName.name.like(f"%.{literal}", escape="\\"))
        )
        query = query.where(Order.id.in_(names))
    if flt.created_from:
        query = query.where(Order.created_at >= flt.created_from)
    if flt.created_until:
        query = query.where(Order.created_at < flt.created_until)
    return query


def list_orders(
    ctx: OrdersContext, account: AccountRef, flt: ListFilter
) -> tuple[list[ListRow], int]:
    if not 1 <= flt.page <= MAX_PAGE:
        raise ApiError(Code.INVALID, {"page": [f"page must be 1 to {MAX_PAGE}"]})
    if not 1 <= flt.page_size <= MAX_PAGE_SIZE:
        raise ApiError(Code.INVALID, {"pageSize": [f"pageSize must be 1 to {MAX_PAGE_SIZE}"]})
    page, page_size = (flt.page, flt.page_size) if flt.paged else (1, MAX_UNPAGED)
    with ctx.db.read() as session:
        ids = _filtered(account, flt)
        total = session.scalar(select(func.count()).select_from(ids.subquery())) or 0
        orders = session.scalars(
            select(Order)
            .where(Order.id.in_(ids))
            .order_by(Order.created_at.desc(), Order.id.desc())
            .offset((page - 1) * page_size)
            .limit(page_size)
        ).all()
        newest: dict[int, tuple[datetime, datetime]] = {}
        charged: set[int | None] = set()
        if orders:
            rows = session.execute(
                select(Certificate.order_id, Certificate.not_before, Certificate.not_after)
                .where(
                    Certificate.order_id.in_([o.id for o in orders]), Certificate.state == "issued"
                )
                .order_by(Certificate.generation)
            ).all()
            newest = {order_id: (nb, na) for order_id, nb, na in rows}
            charged = set(
                session.scalars(
                    select(LedgerEntry.order_id).where(
                        LedgerEntry.order_id.in_([o.id for o in orders]),
                        LedgerEntry.kind == "charge",
                    )
                )
            )
        out = [
            ListRow(
                cert_id=o.cert_id,
                order_num=o.order_num,
                ref_id=o.ref_id,
                status=o.status,
                names=tuple(n.name for n in o.names),
                years=o.years,
                product_code=o.product_code,
                price_cents=o.price_cents,
                charged=o.id in charged,
                created_at=o.created_at,
                begin=newest[o.id][0] if o.id in newest else None,
                end=newest[o.id][1] if o.id in newest else None,
                due_at=o.due_at,
            )
            for o in orders
        ]
    return out, total
