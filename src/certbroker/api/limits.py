"""Input and rate limits of the API, checked before any expensive work.

Rate limits are token buckets held in memory by each process: with several server processes
each has its own buckets, so the effective limit is the per-process limit times the number of
processes behind the load balancer.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from certbroker.orders.accounts import TokenCache
from certbroker.orders.errors import ApiError, Code

if TYPE_CHECKING:
    from certbroker.settings import Settings

# The envelope code of a rate-limited request. The SPEC has none; 429 mirrors HTTP like the
# SPEC's own 400 does for authentication, and the HTTP status is 429 too (RFC 6585 section 4).
RATE_LIMITED_CODE = 429

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # room for two 2 MB pictures (SPEC 4.1 verificationPic)

# Top-level scalar fields and their longest accepted value (characters). Longer values are
# refused with -1 before authentication or any database work. JSON fields (params, domainInfo)
# are bounded by orders/params.py and the body size.
FIELD_MAX_CHARS: Mapping[str, int] = {
    "api_token": 128,  # ours are 46 characters
    "certId": 64,  # SPEC 1.5: opaque, at most 32 characters
    "orderId": 64,
    "renewId": 64,
    "refId": 128,  # orders.ref_id column
    "reason": 1024,
    "productCode": 100,
    "years": 16,
    "vendor": 64,
    "server": 32,
    "uniqueValue": 64,
    "dcvMethod": 32,
    "domainName": 255,  # RFC 1035 2.3.4: names are at most 255 octets
    "domain": 255,
    "dcvEmail": 256,  # RFC 5321 4.5.3.1.3: a path is at most 256 octets
}


def check_field_lengths(fields: Mapping[str, Any]) -> None:
    """Refuse over-long scalar fields with -1 (`{field: [message]}`); never echo the value."""
    errors: dict[str, list[str]] = {}
    for name, limit in FIELD_MAX_CHARS.items():
        value = fields.get(name)
        if isinstance(value, str) and len(value) > limit:
            errors[name] = [f"{name} is {len(value)} characters long; at most {limit} allowed"]
    if errors:
        raise ApiError(Code.INVALID, errors)


@dataclass(frozen=True)
class Rate:
    """A token bucket: `per_second` requests on average, `burst` at once."""

    per_second: float
    burst: int

    @classmethod
    def parse(cls, text: str) -> Rate | None:
        """`"20,200"` = 20 requests per second with bursts of 200; `"off"` = no limit."""
        cleaned = text.strip().lower()
        if cleaned in ("", "off", "none", "0"):
            return None
        parts = [p.strip() for p in cleaned.split(",")]
        try:
            per_second = float(parts[0])
            burst = int(parts[1]) if len(parts) == 2 else max(1, math.ceil(per_second))
        except (ValueError, IndexError):
            per_second, burst = math.nan, 0
        if len(parts) > 2 or not per_second > 0 or not math.isfinite(per_second) or burst < 1:
            raise ValueError(
                f"rate limit {text!r} must be 'off' or '<requests per second>,<burst>', "
                "e.g. '20,200'"
            )
        return cls(per_second, burst)


class RateLimited(Exception):
    def __init__(self, retry_after: float, scope: str) -> None:
        super().__init__(f"rate limit of this {scope} exceeded")
        self.retry_after = retry_after
        self.scope = scope

    @property
    def retry_after_header(self) -> str:
        # RFC 9110 10.2.3: delay-seconds, a non-negative integer; never 0 so clients wait.
        return str(max(1, math.ceil(self.retry_after)))

    def body(self) -> dict[str, Any]:
        text = (
            f"too many requests from this {self.scope}; "
            f"retry after {self.retry_after_header} seconds"
        )
        return {"code": RATE_LIMITED_CODE, "errors": text, "msg": text}


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """One token bucket per key (an account token id or a source address), in memory.

    At most `max_keys` buckets are kept: full ones are forgotten first (they hold no
    information), then the least recently used, so a flood of new keys cannot exhaust memory.
    """

    def __init__(
        self,
        rate: Rate,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.rate = rate
        self._monotonic = monotonic
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float | None:
        """Spend one token: None if allowed, else the seconds until one is available."""
        now = self._monotonic()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(float(self.rate.burst), now)
                self._buckets[key] = bucket
                self._evict(now)
            else:
                self._buckets.move_to_end(key)
                bucket.tokens = self._refilled(bucket, now)
                bucket.updated = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return None
            return (1 - bucket.tokens) / self.rate.per_second

    def _refilled(self, bucket: _Bucket, now: float) -> float:
        elapsed = max(0.0, now - bucket.updated)
        return min(float(self.rate.burst), bucket.tokens + elapsed * self.rate.per_second)

    def _evict(self, now: float) -> None:
        if len(self._buckets) <= self._max_keys:
            return
        full = [k for k, b in self._buckets.items() if self._refilled(b, now) >= self.rate.burst]
        for key in full:
            del self._buckets[key]
        # Shrink well below the cap so that a flood does not sweep on every new key.
        while len(self._buckets) > self._max_keys * 9 // 10:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True)
class ApiLimits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Time allowed for the whole body to arrive once the headers are in (slow clients).
    body_timeout_seconds: float = 30.0
    per_token: Rate | None = Rate(20, 200)
    per_address: Rate | None = Rate(50, 500)
    # How long a token that authenticated is trusted without a database read (orders/accounts.py
    # TokenCache): also the longest a token revoked from another process keeps working.
    auth_cache_seconds: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiLimits:
        return cls(
            max_body_bytes=settings.max_body_bytes,
            body_timeout_seconds=settings.http_body_timeout_seconds,
            per_token=Rate.parse(settings.rate_limit_per_token),
            per_address=Rate.parse(settings.rate_limit_per_address),
            auth_cache_seconds=settings.auth_cache_seconds,
        )


@dataclass
class ApiGuard:
    """The limits of one running app and its rate-limit buckets."""

    limits: ApiLimits = field(default_factory=ApiLimits)
    monotonic: Callable[[], float] = time.monotonic
    _tokens: TokenBuckets | None = field(init=False, default=None)
    _addresses: TokenBuckets | None = field(init=False, default=None)
    auth_cache: TokenCache = field(init=False)

    def __post_init__(self) -> None:
        self.auth_cache = TokenCache(self.limits.auth_cache_seconds, monotonic=self.monotonic)
        if self.limits.per_token is not None:
            self._tokens = TokenBuckets(self.limits.per_token, monotonic=self.monotonic)
        if self.limits.per_address is not None:
            self._addresses = TokenBuckets(self.limits.per_address, monotonic=self.monotonic)

    def check_address(self, address: str) -> None:
        if self._addresses is not None:
            wait = self._addresses.take(address)
            if wait is not None:
                raise RateLimited(wait, "address")

    def check_token(self, token_id: int | None) -> None:
        if self._tokens is not None and token_id is not None:
            wait = self._tokens.take(str(token_id))
            if wait is not None:
                raise RateLimited(wait, "token")
