"""`rfc2136`: TXT values written by DNS UPDATE (RFC 2136) into the operator's own primary
server, each message signed with a TSIG key (RFC 8945, formerly RFC 2845) the server grants
updates of the delegation zone to. Updates go over TCP (RFC 2136 does not require it; it keeps
a large record set whole). confirm() asks that primary directly (or `confirm_server`), the
server that answers first after an update; secondaries follow by NOTIFY (RFC 1996).
"""

from __future__ import annotations

from collections.abc import Sequence

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.tsigkeyring
import dns.update

from certbroker.dns_delegation.confirmation import wait_for_txt
from certbroker.dns_delegation.publisher import PublishError

UPDATE_TIMEOUT_SECONDS = 10.0


class Rfc2136Publisher:
    def __init__(
        self,
        *,
        zone: str,
        server: str,
        port: int,
        key_name: str,
        key_algorithm: str,
        key_secret: str,
        confirm_server: str,
        confirm_timeout: float,
    ) -> None:
        if not (zone and server and key_name and key_secret):
            raise ValueError(
                "rfc2136 needs [dcv_delegation] zone, rfc2136_server, rfc2136_tsig_key_name and "
                "the TSIG secret (environment or rfc2136_tsig_secret_file)"
            )
        self._zone = dns.name.from_text(zone)
        self._server = server
        self._port = port
        self._keyring = dns.tsigkeyring.from_text({key_name: key_secret})
        self._key_name = dns.name.from_text(key_name)
        self._algorithm = dns.name.from_text(key_algorithm)
        self._confirm_server = confirm_server or f"{server}:{port}"
        self._confirm_timeout = confirm_timeout

    def update_message(self) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(
            self._zone,
            keyring=self._keyring,
            keyname=self._key_name,
            keyalgorithm=self._algorithm,
        )

    def _owner(self, fqdn: str) -> dns.name.Name:
        name = dns.name.from_text(fqdn)
        if not name.is_subdomain(self._zone) or name == self._zone:
            raise PublishError(f"{fqdn} is not a name inside the zone {self._zone}")
        return name

    def replace_message(
        self, fqdn: str, values: Sequence[str], ttl: int
    ) -> dns.update.UpdateMessage:
        """Delete the TXT RRset at `fqdn` and add `values` in one update (RFC 2136 2.5.2, 2.5.1),
        applied atomically by the server (RFC 2136 3.4)."""
        rdatas = [
            dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [v.encode()])
            for v in dict.fromkeys(values)
        ]
        update = self.update_message()
        update.replace(self._owner(fqdn), dns.rdataset.from_rdata_list(ttl, rdatas))
        return update

    def delete_message(self, fqdn: str) -> dns.update.UpdateMessage:
        update = self.update_message()
        update.delete(self._owner(fqdn), dns.rdatatype.TXT)  # RFC 2136 2.5.2
        return update

    async def publish_txt(self, fqdn: str, values: Sequence[str], ttl: int) -> None:
        await self._send(self.replace_message(fqdn, values, ttl), fqdn)

    async def remove_txt(self, fqdn: str) -> None:
        await self._send(self.delete_message(fqdn), fqdn)

    async def confirm(self, fqdn: str, values: Sequence[str]) -> None:
        await wait_for_txt(self._confirm_server, fqdn, values, timeout=self._confirm_timeout)

    async def _send(self, update: dns.update.UpdateMessage, fqdn: str) -> None:
        where = f"{self._server}:{self._port}"
        try:
            # The response's TSIG is verified against the same key (RFC 8945 5.3).
            response = await dns.asyncquery.tcp(
                update, self._server, timeout=UPDATE_TIMEOUT_SECONDS, port=self._port
            )
        except dns.tsig.PeerError as exc:  # BADSIG, BADKEY, BADTIME (RFC 8945 5.2)
            raise PublishError(
                f"{where} did not accept the TSIG key of the DNS UPDATE of {fqdn} ({exc}): "
                "check rfc2136_tsig_key_name, rfc2136_tsig_algorithm and the secret"
            ) from exc
        except (dns.exception.DNSException, OSError) as exc:
            raise PublishError(f"DNS UPDATE of {fqdn} at {where} failed: {exc!r}") from exc
        if response.rcode() != dns.rcode.NOERROR:
            raise PublishError(
                f"{where} refused the DNS UPDATE of {fqdn}: {dns.rcode.to_text(response.rcode())}"
            )
