"""The publisher the `[dcv_delegation]` settings name (docs/DNS-DELEGATION.md)."""

from __future__ import annotations

from datetime import timedelta

from certbroker.clock import Clock
from certbroker.dns_delegation.builtin_publisher import BuiltinPublisher
from certbroker.dns_delegation.challtestsrv_publisher import ChallTestSrvPublisher
from certbroker.dns_delegation.publisher import DnsPublisher
from certbroker.dns_delegation.rfc2136_publisher import Rfc2136Publisher
from certbroker.settings import DcvDelegationSettings
from certbroker.store.db import Database


def builtin_server_address(settings: DcvDelegationSettings) -> str:
    """Where the built-in server is asked: its listen address, a wildcard one as loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(  # noqa: S104 - asked, not bound
        settings.listen_host, settings.listen_host
    )
    return f"[{host}]:{settings.listen_port}" if ":" in host else f"{host}:{settings.listen_port}"


def make_publisher(settings: DcvDelegationSettings, db: Database, clock: Clock) -> DnsPublisher:
    if not settings.zone:
        raise ValueError("DNS delegation is off: set [dcv_delegation] zone")
    timeout = settings.confirm_timeout_seconds
    if settings.publisher == "rfc2136":
        return Rfc2136Publisher(
            zone=settings.zone,
            server=settings.rfc2136_server,
            port=settings.rfc2136_port,
            key_name=settings.rfc2136_tsig_key_name,
            key_algorithm=settings.rfc2136_tsig_algorithm,
            key_secret=settings.tsig_secret() or "",
            confirm_server=settings.confirm_server,
            confirm_timeout=timeout,
        )
    if settings.publisher == "challtestsrv":
        return ChallTestSrvPublisher(
            url=settings.challtestsrv_url,
            confirm_server=settings.confirm_server,
            confirm_timeout=timeout,
        )
    return BuiltinPublisher(
        db,
        clock,
        server=settings.confirm_server or builtin_server_address(settings),
        lifetime=timedelta(seconds=settings.txt_lifetime_seconds),
        confirm_timeout=timeout,
    )
