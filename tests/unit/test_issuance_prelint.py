"""Pre-issuance linting (issuance/prelint.py, BR 4.3.1.2): the real pkilint, in-process, on the
to-be-signed leaf signed with a throwaway key; a bad profile never reaches the issuer key."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certbroker.issuance import prelint
from certbroker.issuance.builtin import BuiltinCa, LeafRequest
from certbroker.issuance.prelint import LintMode
from certbroker.issuance.profile import new_serial
from certbroker.issuance.refusal import SigningRefused
from tests.helpers.bad_profile import name_constraints, signing_keys

PUBLIC_URL = "https://certbroker.example.com"
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("prelint") / "ca"
    make_ca(directory, "on")  # the hierarchy, made before any test counts signatures
    return directory


def make_ca(ca_dir: Path, mode: LintMode) -> BuiltinCa:
    return BuiltinCa.load_or_create(
        ca_dir,
        public_url=PUBLIC_URL,
        organization="certbroker",
        now=NOW - timedelta(minutes=1),
        lint_mode=mode,
    )


def request(*, sandbox: bool = False, level: str = "dv") -> LeafRequest:
    return LeafRequest(
        serial=new_serial(),
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        names=["shop.example.com", "www.shop.example.com"],
        not_before=NOW,
        not_after=NOW + timedelta(days=90),
        validation_level=level,
        organization=None,
        sandbox=sandbox,
    )


@pytest.fixture
def signatures(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    with signing_keys(monkeypatch) as keys:
        yield keys


def test_a_profile_leaf_is_clean_and_is_linted_before_the_issuer_signs(
    ca_dir: Path, signatures: list[Any]
) -> None:
    ca = make_ca(ca_dir, "on")
    issuer = ca.issuer(False)
    leaf = ca.sign(request())
    throwaway = prelint.throwaway_key_like(issuer.key)
    assert signatures == [throwaway, issuer.key]
    # The same type as the issuer key, made once per process.
    assert isinstance(throwaway, ec.EllipticCurvePrivateKey)
    assert isinstance(issuer.key, ec.EllipticCurvePrivateKey)
    assert throwaway.curve.name == issuer.key.curve.name
    assert prelint.lint(leaf, "dv") == []  # the accepted CN warning is left out
    leaf.verify_directly_issued_by(issuer.certificate)  # raises unless the issuer signed it


def test_a_bad_profile_is_refused_before_the_issuer_key_signs(
    ca_dir: Path, signatures: list[Any]
) -> None:
    ca = make_ca(ca_dir, "on")
    ca.tamper_for_tests = name_constraints
    issuer = ca.issuer(False)
    with pytest.raises(SigningRefused) as refused:
        ca.sign(request())
    assert refused.value.reason.startswith("pre-issuance lint (BR 4.3.1.2): ERROR ")
    assert "cabf.serverauth.subscriber.name_constraints_extension_present" in refused.value.reason
    assert signatures == [prelint.throwaway_key_like(issuer.key)]


def test_the_mode_chooses_which_issuer_is_linted(ca_dir: Path, signatures: list[Any]) -> None:
    """`non-sandbox` (the default) lints the trusted issuer only; `off` lints nothing."""
    default = make_ca(ca_dir, "non-sandbox")
    default.tamper_for_tests = name_constraints
    with pytest.raises(SigningRefused):
        default.sign(request())
    signatures.clear()
    default.sign(request(sandbox=True))  # not linted: signed at once, by the sandbox key
    assert signatures == [default.issuer(True).key]
    off = make_ca(ca_dir, "off")
    off.tamper_for_tests = name_constraints
    signatures.clear()
    off.sign(request())
    assert signatures == [off.issuer(False).key]
    assert [prelint.applies(m, s) for m in ("on", "off", "non-sandbox") for s in (False, True)] == [
        True,
        True,
        False,
        False,
        True,
        False,
    ]


def test_a_profile_refusal_is_a_signing_refusal(ca_dir: Path) -> None:
    ca = make_ca(ca_dir, "on")
    reserved = replace(request(), names=["127.0.0.1"])
    with pytest.raises(SigningRefused, match=r"reserved IP address .*BR 7\.1\.2\.7\.12"):
        ca.sign(reserved)


def test_the_throwaway_key_follows_an_rsa_issuer() -> None:
    issuer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    throwaway = prelint.throwaway_key_like(issuer_key)
    assert isinstance(throwaway, rsa.RSAPrivateKey) and throwaway.key_size == 2048
    assert prelint.throwaway_key_like(issuer_key) is throwaway
