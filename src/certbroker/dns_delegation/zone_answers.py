"""The answers of certbroker's authoritative server for the delegation zone.

Authoritative only (RFC 1034 4.3.2, no recursion: RA stays clear): SOA and NS at the apex, TXT
at `<label>.<zone>` from the `dns_txt` rows. A name with no records and none below it is
NXDOMAIN, an existing name without the type asked is NODATA (NOERROR, empty answer); both carry
the SOA in the authority section for negative caching (RFC 2308 3, 5), whose TTL and MINIMUM are
the zone TTL, so a "missing" cached before a publish is forgotten as fast as a value. Names
outside the zone are REFUSED; opcodes other than QUERY are NOTIMP (RFC 1035 4.1.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

_SOA_SERIAL = 1  # nothing transfers this zone (no AXFR); every query reads the rows
_SOA_REFRESH, _SOA_RETRY, _SOA_EXPIRE = 3600, 600, 86400


@dataclass(frozen=True)
class NameRecords:
    """What the zone holds at one name below the apex."""

    txt: list[str]
    has_names_below: bool  # an empty non-terminal exists even without records (RFC 8020)


class TxtSource(Protocol):
    async def records(self, fqdn: str) -> NameRecords:
        """The TXT values at `fqdn` (lower case, no final dot)."""
        ...


@dataclass(frozen=True)
class ZoneConfig:
    zone: dns.name.Name
    nameservers: tuple[dns.name.Name, ...]
    hostmaster: dns.name.Name  # SOA RNAME (RFC 1035 3.3.13: the mailbox as a name)
    ttl: int = 60

    @classmethod
    def of(cls, zone: str, nameservers: list[str], hostmaster: str, ttl: int) -> ZoneConfig:
        if not zone or not nameservers:
            raise ValueError("the built-in DNS server needs [dcv_delegation] zone and nameservers")
        apex = dns.name.from_text(zone)
        mailbox = hostmaster or f"hostmaster@{zone}"
        local, _, domain = mailbox.rpartition("@")
        rname = dns.name.from_text(local.replace(".", "\\."), dns.name.from_text(domain))
        return cls(apex, tuple(dns.name.from_text(n) for n in nameservers), rname, ttl)


class ZoneAnswers:
    def __init__(self, config: ZoneConfig, source: TxtSource) -> None:
        self.config = config
        self._source = source
        zone = config.zone
        soa_text = (
            f"{config.nameservers[0]} {config.hostmaster} {_SOA_SERIAL} {_SOA_REFRESH} "
            f"{_SOA_RETRY} {_SOA_EXPIRE} {config.ttl}"
        )
        soa = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SOA, soa_text)
        self._soa = dns.rrset.from_rdata(zone, config.ttl, soa)
        ns = [
            dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.NS, name.to_text())
            for name in config.nameservers
        ]
        self._ns = dns.rrset.from_rdata_list(zone, config.ttl, ns)

    async def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)  # copies the question, ID and RD
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        if question.rdclass != dns.rdataclass.IN or not qname.is_subdomain(self.config.zone):
            response.set_rcode(dns.rcode.REFUSED)  # not ours; no referral, no recursion
            return response
        response.flags |= dns.flags.AA
        if qname == self.config.zone:
            found = [r for r in (self._soa, self._ns) if qtype in (r.rdtype, dns.rdatatype.ANY)]
            self._fill(response, qname, found, exists=True)
            return response
        records = await self._source.records(qname.to_text(omit_final_dot=True).lower())
        found = []
        if records.txt and qtype in (dns.rdatatype.TXT, dns.rdatatype.ANY):
            rdatas = [
                dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [v.encode()])
                for v in records.txt
            ]
            found.append(dns.rrset.from_rdata_list(qname, self.config.ttl, rdatas))
        self._fill(response, qname, found, exists=bool(records.txt) or records.has_names_below)
        return response

    def _fill(
        self,
        response: dns.message.Message,
        qname: dns.name.Name,
        found: list[dns.rrset.RRset],
        *,
        exists: bool,
    ) -> None:
        if found:
            for rrset in found:
                # The owner as asked: keeps the case of the question (0x20 randomisation).
                response.answer.append(dns.rrset.from_rdata_list(qname, rrset.ttl, list(rrset)))
            return
        if not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(self._soa)  # RFC 2308 3: negative answers carry the SOA
