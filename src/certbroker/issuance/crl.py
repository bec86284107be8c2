"""CRLs of the built-in CA (RFC 5280 section 5, CA/B Forum BR 4.9.7 and 7.2).

Pure construction: what to list and when comes from orders/revocation_lists.py. Every CRL is
full and complete (no Issuing Distribution Point, BR 7.2.2.1 only requires one for partitioned
CRLs); an intermediate's CRL covers its Subscriber certificates, a root's its intermediate.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509

from certbroker.issuance.hierarchy import CaPrivateKey
from certbroker.issuance.profile import signature_hash

# BR 4.9.7: a Subscriber CRL's nextUpdate is at most 10 days after thisUpdate, a CA CRL's at
# most twelve months (365 days: pkilint's reading, and never longer than twelve months).
MAX_SUBSCRIBER_CRL_LIFETIME = timedelta(days=10)
MAX_CA_CRL_LIFETIME = timedelta(days=365)
# RFC 5280 5.2.3 / BR 7.2.2: 0 <= CRLNumber < 2^159.
MAX_CRL_NUMBER = 2**159 - 1

# BR 7.2.2.1 (CRLReason) and 4.9.1: the reasons a CRL entry may carry. unspecified (0) is
# expressed by omitting the reasonCode extension; certificateHold (6) is forbidden (4.9.13).
SUBSCRIBER_REASONS: frozenset[int] = frozenset({1, 3, 4, 5, 9})
CA_REASONS: frozenset[int] = SUBSCRIBER_REASONS | {2}  # cACompromise, for CA certificates only
UNSPECIFIED = 0

RevokedEntry = tuple[int, datetime, int | None]  # (serial, revocation time, RFC 5280 reason)

_REASON_FLAGS: dict[int, x509.ReasonFlags] = {
    1: x509.ReasonFlags.key_compromise,
    2: x509.ReasonFlags.ca_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    9: x509.ReasonFlags.privilege_withdrawn,
}


class CaSigner(Protocol):
    """A CA certificate and its key: an issuing intermediate or a root."""

    @property
    def certificate(self) -> x509.Certificate: ...

    @property
    def key(self) -> CaPrivateKey: ...


def is_root(certificate: x509.Certificate) -> bool:
    return certificate.subject == certificate.issuer


def reason_flag(reason: int | None, *, ca: bool = False) -> x509.ReasonFlags | None:
    """The reasonCode to put in a CRL entry or OCSP answer; None means "omit it" (unspecified).

    Raises ValueError for a code BR 7.2.2.1 does not allow (for CA CRLs cACompromise too)."""
    if reason is None or reason == UNSPECIFIED:
        return None
    allowed = CA_REASONS if ca else SUBSCRIBER_REASONS
    if reason not in allowed:
        raise ValueError(f"revocation reason {reason} is not allowed (allowed: {sorted(allowed)})")
    return _REASON_FLAGS[reason]


def _utc_seconds(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return value.replace(microsecond=0)


def build_crl(
    issuer: CaSigner,
    revoked: Iterable[RevokedEntry],
    number: int,
    this_update: datetime,
    next_update: datetime,
) -> x509.CertificateRevocationList:
    """A v2 CRL signed by `issuer` listing `revoked` (BR 7.2.2 profile).

    Extensions: authorityKeyIdentifier (the issuer's SKI) and cRLNumber, both non-critical.
    Entries carry a non-critical reasonCode unless the reason is unspecified or None.
    """
    cert = issuer.certificate
    ca_crl = is_root(cert)
    this_update = _utc_seconds(this_update, "this_update")
    next_update = _utc_seconds(next_update, "next_update")
    limit = MAX_CA_CRL_LIFETIME if ca_crl else MAX_SUBSCRIBER_CRL_LIFETIME
    if not this_update < next_update <= this_update + limit:
        raise ValueError(f"nextUpdate must be after thisUpdate and at most {limit} after it")
    if not 0 <= number <= MAX_CRL_NUMBER:
        raise ValueError(f"CRL number {number} is outside 0 .. 2^159-1")
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        # BR 7.2.2: byte-for-byte the subject of the issuing CA.
        .issuer_name(cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    seen: set[int] = set()
    for serial, revoked_at, reason in sorted(revoked, key=lambda entry: entry[0]):
        if serial in seen:
            raise ValueError(f"serial {serial:x} is listed twice")
        seen.add(serial)
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(_utc_seconds(revoked_at, "revocation time"))
        )
        flag = reason_flag(reason, ca=ca_crl)
        if flag is not None:
            entry = entry.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(issuer.key, signature_hash(issuer.key))
