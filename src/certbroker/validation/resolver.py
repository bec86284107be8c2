"""DNS answers for validation come from the configured resolver only (DESIGN.md; like Pebble's
`dnsserver`): tests point it at a DNS server on loopback, production at a validating resolver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
import dns.rrset

from certbroker.pki.text import safe_text
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


def dns_resolver(address: str | None, timeout: float = 5.0) -> dns.asyncresolver.Resolver:
    """A resolver asking only `address` (`host:port`), or the system's (/etc/resolv.conf) when
    it is None; `timeout` bounds each whole lookup, retries included. Raises
    `dns.resolver.NoResolverConfiguration` when None and the system has no resolver."""
    if address is None:
        resolver = dns.asyncresolver.Resolver(configure=True)
    else:
        host, port = parse_server(address)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = timeout
    resolver.cache = None  # every check asks again: a fixed record must pass on the next try
    return resolver


@dataclass(frozen=True)
class Lookup:
    """The outcome of one query, sorted the way DCV and CAA need it.

    `found`: `rrset` holds the records (after any CNAME chain the server followed);
    `nxdomain`: the name does not exist; `nodata`: it exists without records of that type
    (NOERROR, empty answer); `failed`: no usable answer, `reason` says why ("SERVFAIL",
    "timeout after 5 s").
    """

    status: Literal["found", "nxdomain", "nodata", "failed"]
    rrset: dns.rrset.RRset | None = None
    reason: str = ""


async def lookup(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: dns.rdatatype.RdataType
) -> Lookup:
    """Ask `resolver` for `rdtype` records at the absolute name `name`; never raises DNS errors."""
    try:
        answer = await resolver.resolve(name, rdtype, search=False)
    except dns.resolver.NXDOMAIN:
        return Lookup("nxdomain")
    except dns.resolver.NoAnswer:
        return Lookup("nodata")
    except dns.exception.DNSException as exc:
        return Lookup("failed", reason=failure_reason(exc, resolver.lifetime))
    if answer.rrset is None:
        return Lookup("nodata")
    return Lookup("found", answer.rrset)


def failure_reason(exc: dns.exception.DNSException, lifetime: float) -> str:
    """A short reason for a failed lookup: the response code the servers gave ("SERVFAIL",
    "REFUSED"), "timeout after N s", or the error text."""
    if isinstance(exc, dns.exception.Timeout):
        return f"timeout after {lifetime:g} s"
    if isinstance(exc, dns.resolver.NoNameservers):
        errors = exc.kwargs.get("errors") or []
        codes = sorted({e[3] for e in errors if isinstance(e[3], str)})
        if codes:
            return ", ".join(codes)
        texts = [f"{e[0]}: {safe_text(str(e[3]), 200)}" for e in errors]
        return f"no server answered ({'; '.join(texts)})" if texts else "no server answered"
    if isinstance(exc, dns.resolver.NoResolverConfiguration):
        return "no DNS resolver configured"
    return str(exc) or type(exc).__name__


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
