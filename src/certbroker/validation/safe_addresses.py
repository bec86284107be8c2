"""Which IP addresses a domain control check may connect to (SSRF protection).

A DCV check makes certbroker fetch a URL chosen by whoever controls the DNS of the name being
validated, including every redirect target. Without limits a reseller could point a name (or a
redirect) at 127.0.0.1, 10.0.0.0/8 or the cloud metadata service at 169.254.169.254 and use the
checker to probe the operator's internal network. Public CAs therefore only connect to globally
routable addresses (Let's Encrypt's Boulder keeps the same list in `bdns`).

Two rules make this check meaningful:

* Every address the name resolves to is checked, and one bad address fails the whole check.
  A DNS answer mixing a public and a private address is either a misconfiguration or an attempt
  to get the private one picked, and the resolver decides the order, not us.
* The checker connects to the exact address it checked; it never hands the name back to a
  library that would resolve it again. A second lookup can return a different answer (DNS
  rebinding: a TTL of 0 and a hostile name server), which would let a private address through
  after a public one passed the check.

Addresses that embed an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, RFC 4291 2.5.5.2; NAT64
`64:ff9b::/96`, RFC 6052) are judged by the embedded IPv4 address, since that is where the
packets end up. Operators may allow networks explicitly (tests allow 127.0.0.0/8), like
Pebble's test settings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import httpx

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_PRIVATE = "a private address"
_LOOPBACK = "a loopback address"
_LINK_LOCAL = "a link-local address"
_MULTICAST = "a multicast address"
_RESERVED = "a reserved address"
_DOCUMENTATION = "a documentation address"

# First match wins, so more specific ranges come first. Sources: the IANA special-purpose
# address registries (RFC 6890) and the RFC named next to each entry.
_IPV4_REFUSED: tuple[tuple[IPv4Network, str], ...] = (
    (IPv4Network("0.0.0.0/32"), "an unspecified address"),  # RFC 1122 3.2.1.3
    (IPv4Network("0.0.0.0/8"), _RESERVED),  # "this network", RFC 1122
    (IPv4Network("10.0.0.0/8"), _PRIVATE),  # RFC 1918
    (IPv4Network("100.64.0.0/10"), "a shared address (RFC 6598)"),  # carrier-grade NAT
    (IPv4Network("127.0.0.0/8"), _LOOPBACK),  # RFC 1122
    (IPv4Network("169.254.0.0/16"), _LINK_LOCAL),  # RFC 3927; cloud metadata lives here
    (IPv4Network("172.16.0.0/12"), _PRIVATE),  # RFC 1918
    (IPv4Network("192.0.0.0/24"), _RESERVED),  # IETF protocol assignments, RFC 6890
    (IPv4Network("192.0.2.0/24"), _DOCUMENTATION),  # TEST-NET-1, RFC 5737
    (IPv4Network("192.88.99.0/24"), _RESERVED),  # 6to4 relay anycast, RFC 7526
    (IPv4Network("192.168.0.0/16"), _PRIVATE),  # RFC 1918
    (IPv4Network("198.18.0.0/15"), _RESERVED),  # benchmarking, RFC 2544
    (IPv4Network("198.51.100.0/24"), _DOCUMENTATION),  # TEST-NET-2, RFC 5737
    (IPv4Network("203.0.113.0/24"), _DOCUMENTATION),  # TEST-NET-3, RFC 5737
    (IPv4Network("224.0.0.0/4"), _MULTICAST),  # RFC 5771
    (IPv4Network("255.255.255.255/32"), "a broadcast address"),  # RFC 919
    (IPv4Network("240.0.0.0/4"), _RESERVED),  # RFC 1112
)

_IPV4_MAPPED = IPv6Network("::ffff:0:0/96")  # RFC 4291 2.5.5.2
_NAT64 = IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
_GLOBAL_UNICAST = IPv6Network("2000::/3")  # RFC 4291 2.4; everything else is not routable

_IPV6_REFUSED: tuple[tuple[IPv6Network, str], ...] = (
    (IPv6Network("::/128"), "an unspecified address"),  # RFC 4291 2.5.2
    (IPv6Network("::1/128"), _LOOPBACK),  # RFC 4291 2.5.3
    (IPv6Network("64:ff9b:1::/48"), _RESERVED),  # local-use NAT64, RFC 8215
    (IPv6Network("100::/64"), _RESERVED),  # discard-only, RFC 6666
    (IPv6Network("2001:db8::/32"), _DOCUMENTATION),  # RFC 3849
    (IPv6Network("2001::/23"), _RESERVED),  # IETF protocol assignments incl. Teredo, RFC 2928
    (IPv6Network("2002::/16"), "a 6to4 address"),  # RFC 3056: may embed any IPv4 address
    (IPv6Network("3fff::/20"), _DOCUMENTATION),  # RFC 9637
    (IPv6Network("5f00::/16"), _RESERVED),  # SRv6 SIDs, RFC 9602
    (IPv6Network("fc00::/7"), _PRIVATE),  # unique-local, RFC 4193
    (IPv6Network("fe80::/10"), _LINK_LOCAL),  # RFC 4291 2.5.6
    (IPv6Network("fec0::/10"), _RESERVED),  # site-local, deprecated by RFC 3879
    (IPv6Network("ff00::/8"), _MULTICAST),  # RFC 4291 2.7
)


@dataclass(frozen=True)
class AddressPolicy:
    """Refuses non-public addresses unless they fall inside `allow_networks`."""

    allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_strings(cls, networks: Iterable[str]) -> AddressPolicy:
        """Build a policy from CIDR strings such as "127.0.0.0/8" (host bits must be zero)."""
        parsed: list[IPNetwork] = []
        for text in networks:
            try:
                parsed.append(ip_network(text.strip(), strict=True))
            except ValueError as exc:
                raise ValueError(f"invalid allowed network '{text}': {exc}") from exc
        return cls(tuple(parsed))

    def check(self, ip: IPAddress) -> str | None:
        """Return why `ip` may not be contacted ("a private address"), or None if it may."""
        if self._allowed(ip):
            return None
        if isinstance(ip, IPv4Address):
            return _ipv4_reason(ip)
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            if self._allowed(embedded):
                return None
            reason = _ipv4_reason(embedded)
            if reason is None:
                return None
            kind = "an IPv4-mapped" if ip in _IPV4_MAPPED else "a NAT64"
            return f"{kind} address of {embedded}, {reason}"
        for network, reason in _IPV6_REFUSED:
            if ip in network:
                return reason
        if ip not in _GLOBAL_UNICAST:
            return _RESERVED
        return None

    def _allowed(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allow_networks)


def _ipv4_reason(ip: IPv4Address) -> str | None:
    for network, reason in _IPV4_REFUSED:
        if ip in network:
            return reason
    return None


def _embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    if ip in _IPV4_MAPPED or ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


# A DNS label as it may appear in a URL we fetch (underscores occur in real host names).
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def parse_ip(host: str) -> IPAddress | None:
    """The address when `host` is an IP literal, else None."""
    try:
        return ip_address(host)
    except ValueError:
        return None


def ascii_host(url: httpx.URL) -> str:
    """The host as it goes on the wire: A-labels (httpx's `.host` gives U-labels, and raises on
    an A-label that is not valid IDNA), or the bare IP literal."""
    return url.raw_host.decode("ascii")


def valid_host(host: str) -> bool:
    """An IP literal or a DNS name of LDH labels (A-labels; httpx has applied IDNA)."""
    if parse_ip(host) is not None:
        return True
    labels = host.lower().removesuffix(".").split(".")
    return len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)
