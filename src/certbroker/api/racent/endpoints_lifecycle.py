"""Lifecycle endpoints (SPEC 4.6-4.8, 4.16, 4.19): reissue, replace, renew, revoke, list."""

from __future__ import annotations

from certbroker.api.racent.endpoints import Endpoint

LIFECYCLE_ENDPOINTS: tuple[Endpoint, ...] = ()
