"""A deliberately bad certificate profile for BuiltinCa.tamper_for_tests, and a record of every
key that signs a certificate, to show that pre-issuance linting refuses before the real
signature (BR 4.3.1.2)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cryptography import x509


def name_constraints(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    """Name constraints belong in CA certificates only (BR 7.1.2.7; RFC 5280 4.2.1.10)."""
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None
    )
    return builder.add_extension(constraints, critical=True)


@contextmanager
def signing_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every key that signs a certificate inside the block (CertificateBuilder.sign wrapped)."""
    keys: list[Any] = []
    real = x509.CertificateBuilder.sign

    def sign(self: x509.CertificateBuilder, key: Any, *args: Any, **kwargs: Any) -> Any:
        keys.append(key)
        return real(self, key, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(x509.CertificateBuilder, "sign", sign)
        yield keys
