"""Pre-issuance linting, the Boulder way (BR 4.3.1.2: linting of the to-be-signed certificate).

Before the issuer key signs a leaf, the same to-be-signed certificate (same serial, names,
validity, issuer name and authority key identifier) is signed with a throwaway key of the issuer
key's type and linted with pkilint's CA/B Forum TLS BR linter, in-process. An ERROR or FATAL
finding refuses issuance (SigningRefused, so the order is settled, never retried); warnings not
in ACCEPTED_WARNINGS are logged. The throwaway signature is never stored nor shown: it differs
from the issuer's only in the signature value, which the linter does not judge against a key.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from pkilint import finding_filter, loader
from pkilint.cabf import serverauth
from pkilint.cabf.serverauth import serverauth_constants
from pkilint.pkix import certificate as pkix_certificate

from certbroker.issuance.profile import ValidationLevel, signature_hash
from certbroker.issuance.refusal import SigningRefused

log = structlog.get_logger("certbroker.issuance")

LintMode = Literal["on", "off", "non-sandbox"]

# Findings that refuse issuance; WARNING and below are logged (or accepted) only.
REFUSING_SEVERITIES = frozenset({"FATAL", "ERROR"})

# Warnings accepted on purpose, each with its justification (not logged).
ACCEPTED_WARNINGS: dict[str, str] = {
    # BR 7.1.2.7.2-4 make subject:commonName NOT RECOMMENDED, not forbidden. certbroker keeps
    # it (always one of the SAN entries, BR 7.1.4.3) because reseller panels, the Racent API
    # clients and older server software still display or match on the CN.
    "cabf.serverauth.dv.common_name_attribute_present": "CN kept for compatibility",
    "cabf.serverauth.ov.common_name_attribute_present": "CN kept for compatibility",
    "cabf.ev_guidelines.common_name_attribute_present": "CN kept for compatibility",
}

_TYPES = {
    "dv": serverauth_constants.CertificateType.DV_FINAL_CERTIFICATE,
    "ov": serverauth_constants.CertificateType.OV_FINAL_CERTIFICATE,
    "ev": serverauth_constants.CertificateType.EV_FINAL_CERTIFICATE,
}

IssuerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    message: str | None
    path: str

    def __str__(self) -> str:
        message = f": {self.message}" if self.message else ""
        return f"{self.severity} {self.code}{message} @ {self.path}"


def applies(mode: LintMode, sandbox: bool) -> bool:
    """Whether `mode` lints a certificate of the sandbox (untrusted) or the production issuer."""
    return mode == "on" or (mode == "non-sandbox" and not sandbox)


@functools.cache
def _linter(level: ValidationLevel) -> tuple[Any, list[Any]]:
    """pkilint's validator and finding filters for a Subscriber certificate of `level`, built
    once per process (building them costs far more than a lint)."""
    kind = _TYPES[level]
    validator = pkix_certificate.create_pkix_certificate_validator_container(
        serverauth.create_decoding_validators(), serverauth.create_validators(kind)
    )
    return validator, serverauth.create_serverauth_finding_filters(kind)


# pkilint documents no thread-safety for its validators; the worker signs in a thread.
_LINT_LOCK = threading.Lock()


def lint(certificate: x509.Certificate, level: ValidationLevel) -> list[Finding]:
    """The WARNING, ERROR and FATAL findings of the CA/B Forum TLS BR linter on `certificate`
    as a `level` Subscriber certificate, accepted warnings left out."""
    document = loader.load_der_certificate(certificate.public_bytes(Encoding.DER), "leaf")
    validator, filters = _linter(level)
    with _LINT_LOCK:
        results = validator.validate(document.root)
    results, _ = finding_filter.filter_results(filters, results)
    findings: list[Finding] = []
    for result in results:
        for description in result.finding_descriptions:
            severity = str(description.finding.severity)
            code = str(description.finding.code)
            if severity not in (*REFUSING_SEVERITIES, "WARNING") or code in ACCEPTED_WARNINGS:
                continue
            findings.append(Finding(severity, code, description.message, str(result.node.path)))
    return findings


@functools.cache
def _throwaway_key(kind: tuple[str, int | str]) -> IssuerKey:
    """One key per issuer key type per process: generated at the first lint, then reused."""
    family, size = kind
    if family == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=int(size))
    curve = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1(), "secp521r1": ec.SECP521R1()}
    return ec.generate_private_key(curve[str(size)])


def throwaway_key_like(key: IssuerKey) -> IssuerKey:
    if isinstance(key, rsa.RSAPrivateKey):
        return _throwaway_key(("rsa", key.key_size))
    return _throwaway_key(("ec", key.curve.name))


def check(builder: x509.CertificateBuilder, issuer_key: IssuerKey, level: ValidationLevel) -> None:
    """Lint what `builder` would make before the issuer key signs it; raise SigningRefused on an
    ERROR or FATAL finding."""
    trial = builder.sign(throwaway_key_like(issuer_key), signature_hash(issuer_key))
    findings = lint(trial, level)
    refusing = [f for f in findings if f.severity in REFUSING_SEVERITIES]
    warnings = [f for f in findings if f.severity not in REFUSING_SEVERITIES]
    if warnings:
        log.warning("pre-issuance lint warnings", findings=[str(f) for f in warnings])
    if refusing:
        raise SigningRefused(refusal_reason(refusing))


def refusal_reason(findings: Sequence[Finding]) -> str:
    return "pre-issuance lint (BR 4.3.1.2): " + "; ".join(str(f) for f in findings)
