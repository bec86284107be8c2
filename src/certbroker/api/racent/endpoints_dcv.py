"""DCV management endpoints (SPEC 4.9-4.12): change methods, re-check, drop failing names."""

from __future__ import annotations

from certbroker.api.racent.endpoints import Endpoint

DCV_ENDPOINTS: tuple[Endpoint, ...] = ()
