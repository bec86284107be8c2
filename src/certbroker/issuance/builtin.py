"""The built-in CA as the rest of certbroker sees it: issuers loaded once, leaves signed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from certbroker.issuance.hierarchy import Issuer, create_hierarchy, is_initialized, load_issuer
from certbroker.issuance.profile import (
    SubjectOrganization,
    build_leaf,
    new_serial,
    parse_validation_level,
)


@dataclass(frozen=True)
class LeafRequest:
    serial: int
    public_key: CertificatePublicKeyTypes
    names: Sequence[str]
    not_before: datetime
    not_after: datetime
    validation_level: str
    organization: SubjectOrganization | None
    sandbox: bool


class BuiltinCa:
    def __init__(self, production: Issuer, sandbox: Issuer) -> None:
        self._issuers = {"production": production, "sandbox": sandbox}

    @classmethod
    def load_or_create(
        cls, ca_dir: Path, *, public_url: str, organization: str, now: datetime
    ) -> BuiltinCa:
        if not is_initialized(ca_dir):
            create_hierarchy(ca_dir, organization=organization, now=now, public_url=public_url)
        return cls(
            load_issuer(ca_dir, "production", public_url),
            load_issuer(ca_dir, "sandbox", public_url),
        )

    def issuer(self, sandbox: bool) -> Issuer:
        return self._issuers["sandbox" if sandbox else "production"]

    @staticmethod
    def new_serial() -> int:
        return new_serial()

    def sign(self, request: LeafRequest) -> x509.Certificate:
        return build_leaf(
            self.issuer(request.sandbox),
            serial=request.serial,
            public_key=request.public_key,
            names=list(request.names),
            not_before=request.not_before,
            not_after=request.not_after,
            validation_level=parse_validation_level(request.validation_level),
            organization=request.organization,
        )
