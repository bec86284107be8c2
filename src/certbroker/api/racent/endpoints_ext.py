"""certbroker extensions to the Racent API (documented as such in docs/API.md)."""

from __future__ import annotations

from certbroker.api.racent.endpoints import Endpoint

EXTENSION_ENDPOINTS: tuple[Endpoint, ...] = ()
