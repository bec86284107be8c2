"""caaCheck: may this CA issue for these names now? The name policy first, then CAA (RFC 8659,
BR 3.2.2.8) exactly as issuance asks it, so a reseller can tell a customer what to fix before
placing an order."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from certbroker.orders.context import OrdersContext
from certbroker.orders.errors import ApiError, Code
from certbroker.policy.names import NameRefused
from certbroker.validation.caa import check_caa
from certbroker.validation.results import CheckResult as CaaResult

MAX_NAMES = 100  # one call, one customer's order: bounded like the lookups it starts


@dataclass(frozen=True)
class CaaVerdict:
    name: str  # canonical (A-labels)
    allowed: bool
    reason: str


def caa_check(ctx: OrdersContext, raw_names: list[str]) -> list[CaaVerdict]:
    """One verdict per distinct name, in the order given; -1 when no name is given."""
    if not raw_names:
        raise ApiError(Code.INVALID, {"domainName": ["domainName is required"]})
    if len(raw_names) > MAX_NAMES:
        raise ApiError.invalid("domainName", f"at most {MAX_NAMES} names per call")
    verdicts: dict[str, CaaVerdict | None] = {}
    for raw in raw_names:
        try:
            name = ctx.policy.names.check(raw)
        except NameRefused as exc:
            verdicts.setdefault(raw.strip().lower(), CaaVerdict(raw.strip(), False, exc.reason))
            continue
        verdicts.setdefault(name, None)
    pending = [name for name, verdict in verdicts.items() if verdict is None]
    results = asyncio.run(_lookups(ctx, pending)) if pending else []
    for name, result in zip(pending, results, strict=True):
        verdicts[name] = CaaVerdict(name, result.ok, result.detail)
    return [v for v in verdicts.values() if v is not None]


async def _lookups(ctx: OrdersContext, names: list[str]) -> list[CaaResult]:
    return await asyncio.gather(
        *(
            check_caa(
                name,
                issuer_domains=ctx.policy.caa_domains,
                resolver_address=ctx.policy.dcv_resolver,
                timeout=ctx.policy.dcv_timeout_seconds,
            )
            for name in names
        )
    )
