"""Approver addresses for e-mail DCV (BR 3.2.2.4.4: constructed addresses)."""

from __future__ import annotations

from certbroker.orders.errors import ApiError, Code
from certbroker.pki.names import NameSyntaxError, classify_name, normalize_name

LOCAL_PARTS = ("admin", "administrator", "webmaster", "hostmaster", "postmaster")


def approver_domains(name: str) -> list[str]:
    """The name (the base of a wildcard) and each parent down to two labels."""
    base = name[2:] if name.startswith("*.") else name
    labels = base.split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]


def approver_emails(raw_domain: object) -> list[str]:
    if not isinstance(raw_domain, str) or not raw_domain.strip():
        raise ApiError(Code.INVALID, {"domainName": ["domainName is required"]})
    try:
        name = normalize_name(raw_domain)
        kind = classify_name(name)
    except NameSyntaxError as exc:
        raise ApiError.invalid("domainName", str(exc)) from exc
    if kind == "ip":
        raise ApiError.invalid("domainName", "IP addresses cannot be validated by e-mail")
    return [f"{local}@{domain}" for domain in approver_domains(name) for local in LOCAL_PARTS]
