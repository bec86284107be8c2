"""A purchase's term and when its certificates are reissued inside it (no database access: shared
by issuance, refunds and subscriptions without importing one another)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from certbroker.orders.context import OrdersContext


def add_years(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year + years, day=28)


class _Term(Protocol):
    @property
    def trial_days(self) -> int | None: ...
    @property
    def years(self) -> int: ...
    @property
    def bonus_days(self) -> int: ...


class _Validity(Protocol):
    @property
    def not_before(self) -> datetime: ...
    @property
    def not_after(self) -> datetime: ...


def subscription_end(order: _Term, start: datetime) -> datetime:
    """dueDate: start + purchased years (+ carried-over or bonus days); trials run trialDays."""
    start = start.replace(microsecond=0)
    if order.trial_days:
        return start + timedelta(days=order.trial_days)
    return add_years(start, order.years) + timedelta(days=order.bonus_days or 0)


def next_renewal(ctx: OrdersContext, cert: _Validity, due: datetime | None) -> datetime | None:
    """When to reissue inside the subscription: a lead time before the certificate ends (at most
    a third of its life, so short certificates are not replaced at once); None at the end."""
    if due is None or due - cert.not_after < timedelta(minutes=1):
        return None
    lead = min(ctx.policy.renew_lead, (cert.not_after - cert.not_before) / 3)
    return (cert.not_after - lead).replace(microsecond=0)
