"""Revocation status for relying parties: the CRLs kept current, the status behind OCSP.

Each CA's current CRL is one row of `crls`, so every process serves the same CRL. A CRL is
rebuilt (new thisUpdate, higher cRLNumber) when the CA has none yet, when the revoked
certificates it lists changed, or once half its lifetime has passed: Subscriber CRLs live 7
days (BR 4.9.7: reissued at least every 7 days, nextUpdate at most 10 days out), root CRLs 365
days (at least every twelve months). The revocation code calls `refresh_crls(ctx)` after it
commits; the worker calls it every minute (worker/runner.py CRL_INTERVAL), which also
catches a refresh lost to a crash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from certbroker.issuance.crl import SUBSCRIBER_REASONS, CaSigner, RevokedEntry, build_crl
from certbroker.issuance.hierarchy import FILE_STEMS, ROOT_OF, CaName, IssuerName
from certbroker.issuance.ocsp import CertStatus
from certbroker.orders.context import OrdersContext
from certbroker.store.models import Certificate, RevocationList

log = structlog.get_logger("certbroker.revocation")

SUBSCRIBER_CRL_LIFETIME = timedelta(days=7)
CA_CRL_LIFETIME = timedelta(days=365)
CA_NAMES: tuple[CaName, ...] = ("production", "sandbox", "root", "sandbox-root")
ISSUER_BELOW: dict[CaName, IssuerName] = {root: issuer for issuer, root in ROOT_OF.items()}
CA_OF_STEM: dict[str, CaName] = {stem: ca for ca, stem in FILE_STEMS.items()}


@dataclass(frozen=True)
class PublishedCrl:
    ca: CaName
    number: int
    this_update: datetime
    next_update: datetime
    der: bytes


def _is_root(ca: CaName) -> bool:
    return ca in ISSUER_BELOW


def _signer(ctx: OrdersContext, ca: CaName) -> CaSigner:
    if _is_root(ca):
        return ctx.ca.root(ISSUER_BELOW[ca])
    return ctx.ca.issuer(ca == "sandbox")


def _crl_reason(serial_hex: str, reason: int | None) -> int | None:
    """The reason as listed (CRL and OCSP alike): None for unspecified. A code BR 7.2.2.1 does
    not allow for Subscriber certificates is logged and listed as unspecified: publishing the
    revocation matters more than its reason."""
    if reason is None or reason == 0:
        return None
    if reason not in SUBSCRIBER_REASONS:
        log.error("revocation reason not allowed in a CRL", serial=serial_hex, reason=reason)
        return None
    return reason


def _revoked_entries(session: Session, ca: CaName, cutoff: datetime) -> list[RevokedEntry]:
    """The revoked certificates of `ca` that are unexpired at `cutoff` (BR 7.2.2: all of them;
    4.10.1: an entry stays until the certificate expires). Roots: revoked intermediates are
    not recorded here (none has ever been revoked), so their CRLs list nothing."""
    if _is_root(ca):
        return []
    rows = session.execute(
        select(Certificate.serial_hex, Certificate.revoked_at, Certificate.revocation_reason).where(
            Certificate.revoked_at.is_not(None),
            Certificate.issuer == ca,
            Certificate.not_after >= cutoff,
        )
    ).all()
    entries: list[RevokedEntry] = []
    for serial_hex, revoked_at, reason in rows:
        assert revoked_at is not None  # the query selects revoked rows only
        entries.append((int(serial_hex, 16), revoked_at, _crl_reason(serial_hex, reason)))
    entries.sort(key=lambda entry: entry[0])
    return entries


def _digest(entries: Sequence[RevokedEntry]) -> str:
    hasher = hashlib.sha256()
    for serial, revoked_at, reason in entries:
        hasher.update(
            f"{serial:x} {revoked_at.replace(microsecond=0).isoformat()} {reason}\n".encode()
        )
    return hasher.hexdigest()


def refresh_crl(ctx: OrdersContext, ca: CaName, *, force: bool = False) -> bool:
    """Rebuild `ca`'s CRL if it is due (or `force`); True when a new CRL was stored."""
    now = ctx.clock.now().replace(microsecond=0)
    try:
        with ctx.db.transaction() as session:
            # Locked (PostgreSQL): a concurrent refresh waits, then finds this one done.
            row = session.scalar(
                select(RevocationList).where(RevocationList.ca == ca).with_for_update()
            )
            if row is not None and not force:
                half_life = row.this_update + (row.next_update - row.this_update) / 2
                listed = _revoked_entries(session, ca, row.this_update)
                if now < half_life and _digest(listed) == row.entries_digest:
                    return False
            entries = _revoked_entries(session, ca, now)
            # Strictly increasing (BR 7.2.2), and never below the Unix time: numbers keep
            # increasing even after the database is restored from an older backup.
            number = max(int(now.timestamp()), row.number + 1 if row is not None else 0)
            lifetime = CA_CRL_LIFETIME if _is_root(ca) else SUBSCRIBER_CRL_LIFETIME
            crl = build_crl(_signer(ctx, ca), entries, number, now, now + lifetime)
            if row is None:
                row = RevocationList(ca=ca)
                session.add(row)
            row.number = number
            row.this_update = now
            row.next_update = now + lifetime
            row.entries_digest = _digest(entries)
            row.entries = len(entries)
            row.der = crl.public_bytes(Encoding.DER)
    except IntegrityError:
        # Another process stored this CA's first CRL at the same moment: that one serves.
        return False
    log.info("crl published", ca=ca, number=number, entries=len(entries))
    return True


def refresh_crls(ctx: OrdersContext, force: bool = False) -> int:
    """Rebuild every CRL that is due; returns how many were rebuilt. Call it after committing
    a revocation: the CRL whose list changed is rebuilt at once, the others are left alone.

    `force` rebuilds the issuing CAs' CRLs even when nothing changed; root CRLs are still only
    rebuilt when due, since no revocation here reaches them and their key is best left unused."""
    return sum(refresh_crl(ctx, ca, force=force and not _is_root(ca)) for ca in CA_NAMES)


def _published(ctx: OrdersContext, ca: CaName) -> PublishedCrl | None:
    with ctx.db.transaction() as session:
        row = session.scalar(select(RevocationList).where(RevocationList.ca == ca))
        if row is None:
            return None
        return PublishedCrl(ca, row.number, row.this_update, row.next_update, row.der)


def current_crl(ctx: OrdersContext, ca: CaName) -> PublishedCrl:
    """The CRL to serve for `ca`; built here when the worker has not made one yet or let it
    expire, so that relying parties never get an expired CRL or none."""
    published = _published(ctx, ca)
    if published is None or published.next_update <= ctx.clock.now():
        refresh_crl(ctx, ca)
        published = _published(ctx, ca)
    if published is None:
        raise RuntimeError(f"no CRL could be built for {ca}")
    return published


def certificate_status(ctx: OrdersContext, issuer: IssuerName, serial: int) -> CertStatus:
    """What OCSP says about `serial` of `issuer`: revoked (with the CRL's time and reason),
    good once issued, unknown for a serial never issued or never delivered (BR 4.9.10)."""
    if serial <= 0:
        return CertStatus.unknown()
    with ctx.db.transaction() as session:
        row = session.execute(
            select(
                Certificate.revoked_at, Certificate.revocation_reason, Certificate.issued_at
            ).where(Certificate.serial_hex == format(serial, "x"), Certificate.issuer == issuer)
        ).first()
    if row is None:
        return CertStatus.unknown()
    revoked_at, reason, issued_at = row
    if revoked_at is not None:
        return CertStatus("revoked", revoked_at, _crl_reason(format(serial, "x"), reason))
    if issued_at is None:  # signing, or abandoned: no certificate left the CA
        return CertStatus.unknown()
    return CertStatus.good()
