"""Section 5: what the cryptography of one certificate costs with `cryptography`, measured in the
same run: the floor under any CA's CPU per certificate.

* CSR parse + signature check, for each key type of the orders;
* leaf signing with the built-in CA's issuer key (read from a certbroker data directory of
  this run, else a P-384 key like the one it makes) and, for reference, with P-256 and
  RSA-2048 issuers; the leaf carries the extensions of certbroker's profile;
* key generation, RSA-2048 and P-256 (what `place` without a CSR pays);
* the issuance policy: one name, and one key with its weak-key checks (policy/);
* certbroker's own signing path (`BuiltinCa.sign`: profile checks, then the signature) for
  P-256 and RSA-2048 leaves, with and without pre-issuance linting (issuance/prelint.py: a
  throwaway signature and pkilint in-process, BR 4.3.1.2); the difference is what the lint
  costs per certificate.

The floor per certificate is CSR parse+verify of the order's key type plus one leaf signature
with the built-in CA's key.
"""

from __future__ import annotations

import datetime
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from bench.common import BenchKey, generate_key, make_csr
from certbroker.issuance.builtin import BuiltinCa, LeafRequest
from certbroker.issuance.prelint import LintMode
from certbroker.issuance.profile import new_serial
from certbroker.issuance.validity import leaf_not_after
from certbroker.policy.keys import key_refusal
from certbroker.policy.names import check_name


def cpu_ms(action: Callable[[], object], *, min_seconds: float, min_runs: int = 5) -> float:
    """Mean CPU milliseconds of `action`, run until both minimums are met."""
    action()  # warm-up
    runs, started = 0, time.process_time()
    while True:
        action()
        runs += 1
        spent = time.process_time() - started
        if runs >= min_runs and spent >= min_seconds:
            return round(1000 * spent / runs, 4)


def _issuer_key(ca_dir: Path | None) -> tuple[BenchKey, str]:
    if ca_dir is not None and (ca_dir / "intermediate.key").exists():
        key = serialization.load_pem_private_key(
            (ca_dir / "intermediate.key").read_bytes(), password=None
        )
        if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            return key, "certbroker intermediate"
    return ec.generate_private_key(ec.SECP384R1()), "P-384 like certbroker's"


def _describe(key: BenchKey) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"ECDSA {key.curve.name}"
    return f"RSA {key.key_size}"


def _hash_for(key: BenchKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def sign_leaf(issuer: BenchKey, subject_key: BenchKey, name: str) -> x509.Certificate:
    """A leaf shaped like certbroker's DV profile (BR 7.1.2.7), signed by `issuer`."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench Issuing CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_name)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=199))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.CertificatePolicies(
                [x509.PolicyInformation(x509.ObjectIdentifier("2.23.140.1.2.1"), None)]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier("http://certbroker.example.com/ca.der"),
                    )
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        [x509.UniformResourceIdentifier("http://certbroker.example.com/ca.crl")],
                        None,
                        None,
                        None,
                    )
                ]
            ),
            critical=False,
        )
        .sign(issuer, _hash_for(issuer))
    )


def run(key_types: list[str], ca_dir: Path | None, min_seconds: float) -> dict[str, Any]:
    name = "www.floor.example.com"
    out: dict[str, Any] = {"operations_ms": {}}
    ops: dict[str, float] = out["operations_ms"]
    subject_keys = {kt: generate_key(kt) for kt in key_types}
    for kt, key in subject_keys.items():
        pem = make_csr(key, [name]).encode("ascii")

        def parse_verify(pem: bytes = pem) -> bool:
            csr = x509.load_pem_x509_csr(pem)
            return csr.is_signature_valid

        ops[f"csr_parse_verify_{kt}"] = cpu_ms(parse_verify, min_seconds=min_seconds)
    issuer, origin = _issuer_key(ca_dir)
    out["issuer"] = f"{_describe(issuer)} ({origin})"
    leaf_key = subject_keys[key_types[0]]
    ops["leaf_sign_builtin_issuer"] = cpu_ms(
        lambda: sign_leaf(issuer, leaf_key, name), min_seconds=min_seconds
    )
    for label, reference in (
        ("ec256", ec.generate_private_key(ec.SECP256R1())),
        ("rsa2048", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ):
        ops[f"leaf_sign_{label}_issuer"] = cpu_ms(
            lambda reference=reference: sign_leaf(reference, leaf_key, name),  # type: ignore[misc]
            min_seconds=min_seconds,
        )
    ops["keygen_ec256"] = cpu_ms(lambda: generate_key("ec256"), min_seconds=min_seconds)
    ops["keygen_rsa2048"] = cpu_ms(
        lambda: generate_key("rsa2048"), min_seconds=max(min_seconds, 0.5), min_runs=10
    )
    # The issuance policy asked at place and again at signing (policy/): a name, and a key with
    # the weak-key checks (badkeys) that need no downloaded data.
    ops["policy_check_name"] = cpu_ms(
        lambda: check_name("xn--bcher-kva.shop.example.co.uk"), min_seconds=min_seconds
    )
    for kt in ("ec256", "rsa2048"):
        public_key = generate_key(kt).public_key()
        ops[f"policy_key_refusal_{kt}"] = cpu_ms(
            lambda public_key=public_key: key_refusal(public_key),  # type: ignore[misc]
            min_seconds=min_seconds,
        )
    out["pre_issuance_lint_ms"] = _lint_cost(ops, ca_dir, name, min_seconds)
    out["floor_ms_per_certificate"] = {
        kt: round(ops[f"csr_parse_verify_{kt}"] + ops["leaf_sign_builtin_issuer"], 4)
        for kt in key_types
    }
    out["floor_ms_per_certificate_p256_issuer"] = {
        kt: round(ops[f"csr_parse_verify_{kt}"] + ops["leaf_sign_ec256_issuer"], 4)
        for kt in key_types
    }
    return out


LINT_LEAF_TYPES = ("ec256", "rsa2048")
LINT_MODES: tuple[LintMode, ...] = ("off", "on")


def _leaf_request(public_key: Any, name: str, now: datetime.datetime) -> LeafRequest:
    return LeafRequest(
        serial=new_serial(),
        public_key=public_key,
        names=[name],
        not_before=now,
        not_after=leaf_not_after(now),  # the product's validity, as issuance uses
        validation_level="dv",
        organization=None,
        sandbox=False,
    )


def _lint_cost(
    ops: dict[str, float], ca_dir: Path | None, name: str, min_seconds: float
) -> dict[str, float]:
    """BuiltinCa.sign with pre-issuance linting off and on, per leaf key type; returns the
    difference (the lint's CPU per certificate). Uses this run's certbroker CA when there is
    one, else a CA made in a temporary directory."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    cost: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = ca_dir if ca_dir is not None else Path(tmp) / "ca"
        for kt in LINT_LEAF_TYPES:
            public_key = generate_key(kt).public_key()
            spent: dict[str, float] = {}
            for mode in LINT_MODES:
                signer = BuiltinCa.load_or_create(
                    directory,
                    public_url="http://certbroker.example.com",
                    organization="bench",
                    now=now - datetime.timedelta(minutes=1),
                    lint_mode=mode,
                )
                spent[mode] = cpu_ms(
                    lambda signer=signer, key=public_key: signer.sign(  # type: ignore[misc]
                        _leaf_request(key, name, now)
                    ),
                    min_seconds=min_seconds,
                )
                ops[f"builtin_ca_sign_{kt}_leaf_lint_{mode}"] = spent[mode]
            cost[kt] = round(spent["on"] - spent["off"], 4)
    return cost
