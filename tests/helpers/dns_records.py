"""A tiny authoritative DNS server on 127.0.0.1 (UDP) for what pebble-challtestsrv cannot
answer: NXDOMAIN (challtestsrv never says a name does not exist), CAA records with flags (it
always sends flag 0), CNAME chains and wildcards. Plus a UDP socket that never answers, for
timeouts.

Messages are parsed and built with dnspython's wire-format code; resolution is done here in a
few lines: exact names, CNAMEs followed for other types, a wildcard `*.<parent>` answering for
a child of `<parent>` that has no records and none below it (RFC 4592, simplified to the
immediate parent), NXDOMAIN for a name that has no records and no records below it (otherwise
NOERROR with an empty answer).
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

_TTL = 60
_MAX_CHAIN = 8


class TinyDnsServer:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port = int(self._sock.getsockname()[1])
        self._records: dict[dns.name.Name, list[dns.rdata.Rdata]] = {}
        self._servfail: set[dns.name.Name] = set()
        self.questions: list[str] = []  # "name TYPE" of every query answered, in order
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def resolver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, name: str, rdtype: str, text: str) -> None:
        """Add one record in zone-file syntax: add("a.test", "CAA", '128 tbs "x"')."""
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
        with self._lock:
            self._records.setdefault(_absolute(name), []).append(rdata)

    def set_servfail(self, name: str) -> None:
        with self._lock:
            self._servfail.add(_absolute(name))

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._servfail.clear()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self._sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            try:
                query = dns.message.from_wire(wire)
            except Exception:  # noqa: S112 - a garbled packet gets no answer, like real servers
                continue
            self._sock.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name, rdtype = question.name, question.rdtype
        with self._lock:
            self.questions.append(
                f"{name.to_text(omit_final_dot=True)} {dns.rdatatype.to_text(rdtype)}"
            )
            for _ in range(_MAX_CHAIN):
                if name in self._servfail:
                    response.set_rcode(dns.rcode.SERVFAIL)
                    return response
                here = self._records.get(name, [])
                if not here and not any(n.is_subdomain(name) for n in self._records):
                    here = self._records.get(dns.name.from_text("*", name.parent()), [])
                cnames = [r for r in here if r.rdtype == dns.rdatatype.CNAME]
                if cnames and rdtype != dns.rdatatype.CNAME:
                    response.answer.append(_rrset(name, cnames))
                    name = cnames[0].target  # type: ignore[attr-defined]
                    continue
                matching = [r for r in here if r.rdtype == rdtype]
                if matching:
                    response.answer.append(_rrset(name, matching))
                elif not here and not any(n.is_subdomain(name) for n in self._records):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                return response
        response.set_rcode(dns.rcode.SERVFAIL)  # a CNAME loop
        return response

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> TinyDnsServer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SilentDnsServer:
    """A bound UDP socket nobody reads: every query times out."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])

    @property
    def resolver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SilentDnsServer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _absolute(name: str) -> dns.name.Name:
    return dns.name.from_text(name)


def _rrset(name: dns.name.Name, rdatas: list[dns.rdata.Rdata]) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(name, _TTL, rdatas)
