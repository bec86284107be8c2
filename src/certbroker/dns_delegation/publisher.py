"""The one interface through which TXT values reach the delegation zone (RFC 8555 8.4: the
dns-01 value is a TXT record at the validated name, here `<label>.<zone>` via the customer's
CNAME). Implementations: builtin_publisher.py, rfc2136_publisher.py, challtestsrv_publisher.py;
publishers.py picks one from the settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class PublishError(Exception):
    """A value could not be published, removed or confirmed; the text says why."""


class DnsPublisher(Protocol):
    async def publish_txt(self, fqdn: str, values: Sequence[str], ttl: int) -> None:
        """Make `values` the whole TXT record set at `fqdn` (a wildcard and its base name
        validate at one name, so an order may need two values there at once)."""
        ...

    async def remove_txt(self, fqdn: str) -> None:
        """Remove every TXT value at `fqdn`; removing what is not there is not an error."""
        ...

    async def confirm(self, fqdn: str, values: Sequence[str]) -> None:
        """Return once the zone's authoritative server answers all of `values` at `fqdn`
        (asked directly, so no propagation sleep); raise PublishError at the time limit."""
        ...
