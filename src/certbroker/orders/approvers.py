"""Approver addresses for e-mail DCV (BR 3.2.2.4.4: constructed addresses)."""

from __future__ import annotations

from certbroker.orders.errors import ApiError, Code
from certbroker.pki.names import classify_name
from certbroker.policy.names import DEFAULT_POLICY, NamePolicy, NameRefused
from certbroker.policy.public_suffixes import parents_to_registrable

LOCAL_PARTS = ("admin", "administrator", "webmaster", "hostmaster", "postmaster")


def approver_domains(name: str) -> list[str]:
    """The name (the base of a wildcard) and each parent down to its registrable domain (Public
    Suffix List, BR 3.2.2.4: labels are pruned only down to the Base Domain Name), so
    admin@example.co.uk qualifies and admin@co.uk never does. Empty for a public suffix."""
    return parents_to_registrable(name)


def approver_addresses(name: str) -> list[str]:
    """The five constructed addresses (BR 3.2.2.4.4) at each approver domain of a normalized
    name, nearest domain first."""
    return [f"{local}@{domain}" for domain in approver_domains(name) for local in LOCAL_PARTS]


def approver_emails(raw_domain: object, names: NamePolicy = DEFAULT_POLICY) -> list[str]:
    """DCVemail (SPEC 4.15): the addresses for a name this CA would certify."""
    if not isinstance(raw_domain, str) or not raw_domain.strip():
        raise ApiError(Code.INVALID, {"domainName": ["domainName is required"]})
    try:
        name = names.check(raw_domain)
    except NameRefused as exc:
        raise ApiError.invalid("domainName", exc.reason) from exc
    if classify_name(name) == "ip":
        raise ApiError.invalid("domainName", "IP addresses cannot be validated by e-mail")
    emails = approver_addresses(name)
    if not emails:
        raise ApiError.invalid("domainName", f"{name} is a public suffix and has no approver")
    return emails
