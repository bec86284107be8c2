"""DNS answers for validation come from the configured resolver only (DESIGN.md; like Pebble's
`dnsserver`): tests point it at a DNS server on loopback, production at a validating resolver."""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from certbroker.validation.http_file import Resolver, system_resolve


class LookupFailed(Exception):
    """A lookup that did not produce an answer; the text says why, for the customer."""


def parse_server(address: str) -> tuple[str, int]:
    """`host:port`, `host`, or `[v6]:port` → (host, port)."""
    text = address.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":") or 53)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, 53


def dns_resolver(address: str, timeout: float = 5.0) -> dns.asyncresolver.Resolver:
    host, port = parse_server(address)
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port
    resolver.lifetime = timeout
    return resolver


def make_address_resolver(address: str | None, timeout: float = 5.0) -> Resolver:
    """A and AAAA lookups through `address`, or the system's resolver when it is None."""
    if address is None:
        return system_resolve
    resolver = dns_resolver(address, timeout)

    async def resolve(host: str) -> list[str]:
        found: list[str] = []
        missing = 0
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = await resolver.resolve(host, rdtype, search=False)
            except dns.resolver.NXDOMAIN as exc:
                raise LookupFailed(f"{host} does not exist (NXDOMAIN)") from exc
            except dns.resolver.NoAnswer:
                missing += 1
                continue
            except dns.resolver.NoNameservers as exc:
                raise LookupFailed(f"DNS lookup of {host} failed (SERVFAIL)") from exc
            except dns.exception.Timeout as exc:
                raise LookupFailed(f"DNS lookup of {host} timed out") from exc
            found.extend(str(record) for record in answer)
        if not found and missing:
            raise LookupFailed(f"{host} has no A or AAAA record")
        return found

    return resolve
