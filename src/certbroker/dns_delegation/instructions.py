"""What a customer publishes once to delegate dns-01 for a name (docs/DNS-DELEGATION.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from certbroker.dns_delegation.labels import (
    LABEL_KEY_PURPOSE,
    base_domain,
    challenge_name,
    make_label,
    target_name,
)
from certbroker.pki.secretbox import SecretBox
from certbroker.store import dns_delegation as store


@dataclass(frozen=True)
class Delegation:
    """`_acme-challenge.<base>` CNAME `<label>.<zone>.`; the TXT values live at the target."""

    base_domain: str
    label: str
    record: str  # _acme-challenge.<base>
    target: str  # <label>.<zone>.  (absolute)

    @property
    def dns_host(self) -> str:
        """The record relative to the name, as Racent's `DCVdnsHost` shows it."""
        return self.record.split(".", 1)[0]


def delegation_for(
    session: Session, box: SecretBox, account_id: int, name: str, *, zone: str, now: datetime
) -> Delegation:
    """The delegation of `name` (`*.` ignored) for the account: the stored label, or a new one
    stored now (computed with a key derived from the current master key)."""
    base = base_domain(name)
    row = store.delegation(session, account_id, base)
    if row is None:
        label = make_label(box.derive_key(LABEL_KEY_PURPOSE), account_id, base)
        row = store.ensure_delegation(session, account_id, base, label, now=now)
    return Delegation(base, row.label, challenge_name(base), target_name(row.label, zone))
