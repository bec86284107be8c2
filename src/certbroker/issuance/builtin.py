"""The built-in CA as the rest of certbroker sees it: issuers loaded once, leaves linted
(BR 4.3.1.2) and signed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from certbroker.issuance import prelint
from certbroker.issuance.hierarchy import (
    FILE_STEMS,
    ROOT_OF,
    CaName,
    CaPrivateKey,
    Issuer,
    IssuerName,
    _load_cert,
    _load_key,
    _spki,
    create_hierarchy,
    is_initialized,
    load_issuer,
)
from certbroker.issuance.prelint import LintMode
from certbroker.issuance.profile import (
    SubjectOrganization,
    leaf_builder,
    new_serial,
    parse_validation_level,
    signature_hash,
)
from certbroker.issuance.refusal import SigningRefused
from certbroker.policy.keys import WeakKeyList
from certbroker.policy.names import DEFAULT_POLICY, NamePolicy


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


@dataclass(frozen=True)
class RootCa:
    """A root with its key, for the CRL covering its intermediate (BR 4.9.7, 7.2)."""

    name: CaName
    certificate: x509.Certificate
    key: CaPrivateKey


def load_root(ca_dir: Path, which: IssuerName, passphrase: bytes | None = None) -> RootCa:
    """Load the root above issuer `which`, checking that its key matches its certificate."""
    name = ROOT_OF[which]
    stem = FILE_STEMS[name]
    cert = _load_cert(ca_dir, f"{stem}.pem")
    key = _load_key(ca_dir, f"{stem}.key", passphrase)
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise ValueError(f"CA key {stem}.key does not match certificate {stem}.pem in {ca_dir}")
    return RootCa(name=name, certificate=cert, key=key)


class BuiltinCa:
    # Tests only (no setting or API reaches it): changes every to-be-signed leaf before it is
    # linted and signed, to prove that a bad profile is refused before the real signature.
    tamper_for_tests: Callable[[x509.CertificateBuilder], x509.CertificateBuilder] | None = None

    def __init__(
        self,
        production: Issuer,
        sandbox: Issuer,
        root_loader: Callable[[IssuerName], RootCa] | None = None,
        *,
        names_policy: NamePolicy = DEFAULT_POLICY,
        weak_keys: WeakKeyList | None = None,
        lint_mode: LintMode = "non-sandbox",
    ) -> None:
        self._issuers = {"production": production, "sandbox": sandbox}
        self._root_loader = root_loader
        # The issuance policy, asked once more right before each signature.
        self.names_policy = names_policy
        self.weak_keys = weak_keys
        self.lint_mode: LintMode = lint_mode

    @classmethod
    def load_or_create(
        cls,
        ca_dir: Path,
        *,
        public_url: str,
        organization: str,
        now: datetime,
        passphrase: bytes | None = None,
        lint_mode: LintMode = "non-sandbox",
    ) -> BuiltinCa:
        if not is_initialized(ca_dir):
            create_hierarchy(
                ca_dir,
                organization=organization,
                now=now,
                public_url=public_url,
                passphrase=passphrase,
            )
        return cls(
            load_issuer(ca_dir, "production", public_url, passphrase),
            load_issuer(ca_dir, "sandbox", public_url, passphrase),
            lambda which: load_root(ca_dir, which, passphrase),
            lint_mode=lint_mode,
        )

    def issuer(self, sandbox: bool) -> Issuer:
        return self._issuers["sandbox" if sandbox else "production"]

    def root(self, which: IssuerName) -> RootCa:
        """The root above issuer `which`, key included. Read from disk on each call: a root key
        only signs the root's CRL, twice a year, so it is not kept in memory."""
        if self._root_loader is None:
            raise RuntimeError("this BuiltinCa was built without access to its root keys")
        return self._root_loader(which)

    @staticmethod
    def new_serial() -> int:
        return new_serial()

    def sign(self, request: LeafRequest) -> x509.Certificate:
        """Sign the leaf; raises SigningRefused when the profile (BR 7.1.2.7) or pre-issuance
        linting (BR 4.3.1.2) refuses it. Anything else, say a key that cannot be used, is a
        failure of the moment."""
        issuer = self.issuer(request.sandbox)
        try:
            level = parse_validation_level(request.validation_level)
            builder = leaf_builder(
                issuer,
                serial=request.serial,
                public_key=request.public_key,
                names=list(request.names),
                not_before=request.not_before,
                not_after=request.not_after,
                validation_level=level,
                organization=request.organization,
                names_policy=self.names_policy,
                weak_keys=self.weak_keys,
            )
        except ValueError as error:  # BR 7.1.2.7: the profile's refusal of an input
            raise SigningRefused(str(error)) from error
        if self.tamper_for_tests is not None:
            builder = self.tamper_for_tests(builder)
        if prelint.applies(self.lint_mode, request.sandbox):
            prelint.check(builder, issuer.key, level)
        return builder.sign(issuer.key, signature_hash(issuer.key))
