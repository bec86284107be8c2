"""Asking the zone's authoritative server directly whether it answers the published values."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from certbroker.dns_delegation.publisher import PublishError
from certbroker.validation.resolver import parse_server

POLL_SECONDS = 0.2


def txt_strings(response: dns.message.Message, fqdn: str) -> set[str]:
    """The TXT values answered at `fqdn`, each the concatenation of its character-strings."""
    name = dns.name.from_text(fqdn)
    found: set[str] = set()
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == dns.rdatatype.TXT:
            for rdata in rrset:
                found.add(b"".join(rdata.strings).decode("utf-8", "replace"))
    return found


async def ask_txt(server: str, fqdn: str, *, timeout: float) -> dns.message.Message:
    """One TXT query for `fqdn` to `server` (host:port), over TCP when UDP was truncated."""
    host, port = parse_server(server)
    query = dns.message.make_query(fqdn, dns.rdatatype.TXT, dns.rdataclass.IN)
    query.flags = 0  # RD clear: an authoritative answer, not a recursive one (RFC 1035 4.1.1)
    response, _tcp = await dns.asyncquery.udp_with_fallback(query, host, timeout, port)
    return response


async def wait_for_txt(server: str, fqdn: str, values: Sequence[str], *, timeout: float) -> None:
    """Return when `server` answers every value of `values` at `fqdn`; PublishError after
    `timeout` seconds, naming what it answered last."""
    wanted = set(values)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        try:
            response = await ask_txt(server, fqdn, timeout=max(0.1, min(2.0, remaining)))
        except (dns.exception.DNSException, OSError) as exc:
            last = f"no answer ({type(exc).__name__})"
        else:
            answered = txt_strings(response, fqdn)
            if response.rcode() == dns.rcode.NOERROR and wanted <= answered:
                return
            last = f"{dns.rcode.to_text(response.rcode())} with {len(answered)} TXT values"
        if time.monotonic() + POLL_SECONDS > deadline:
            raise PublishError(
                f"{server} did not answer the TXT values at {fqdn} within {timeout:g} s "
                f"(last: {last})"
            )
        await asyncio.sleep(POLL_SECONDS)
