"""Run pkilint (and openssl verify) on certificates; shared by unit and end-to-end tests.

Each `lint_*` function returns the findings that should fail a test, as readable strings
("ERROR cabf.some_code: message @ node.path"); an empty list means the certificate is clean.
FATAL, ERROR and WARNING findings fail, except the warnings in ACCEPTED_WARNINGS.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The product's list (pre-issuance linting accepts the same warnings), each with its reason.
from certbroker.issuance.prelint import ACCEPTED_WARNINGS

FAILING_SEVERITIES = frozenset({"FATAL", "ERROR", "WARNING"})

SUBSCRIBER_TYPES = frozenset(
    {"DV-FINAL-CERTIFICATE", "OV-FINAL-CERTIFICATE", "EV-FINAL-CERTIFICATE"}
)
TLS_CA_TYPES = frozenset({"ROOT-CA", "INTERNAL-UNCONSTRAINED-TLS-CA"})


def _tool(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (pip install pkilint)")
    return found


def _findings(stdout: str) -> list[str]:
    failing: list[str] = []
    for result in json.loads(stdout)["results"]:
        for finding in result["finding_descriptions"]:
            severity, code = finding["severity"], finding["code"]
            if severity not in FAILING_SEVERITIES:
                continue
            if severity == "WARNING" and code in ACCEPTED_WARNINGS:
                continue
            message = f": {finding['message']}" if finding.get("message") else ""
            failing.append(f"{severity} {code}{message} @ {result['node_path']}")
    return failing


def _run_pkilint(args: list[str], pems: list[str]) -> tuple[list[str], str]:
    """Run one pkilint CLI on PEM texts; return (failing findings, stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for index, pem in enumerate(pems):
            path = Path(tmp) / f"cert{index}.pem"
            path.write_text(pem)
            files.append(str(path))
        proc = subprocess.run(
            [*args, "-f", "JSON", "-s", "WARNING", *files],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    # pkilint exits non-zero whenever it reports findings; only missing JSON is a tool failure.
    try:
        return _findings(proc.stdout), proc.stderr
    except (json.JSONDecodeError, KeyError) as exc:
        raise RuntimeError(
            f"pkilint failed (exit {proc.returncode}): {proc.stderr or proc.stdout}"
        ) from exc


def _lint_serverauth(pem: str, allowed_types: frozenset[str]) -> list[str]:
    cmd = [_tool("lint_cabf_serverauth_cert"), "lint", "--detect", "--output"]
    findings, stderr = _run_pkilint(cmd, [pem])
    detected = stderr.strip().splitlines()[0] if stderr.strip() else "<none>"
    if detected not in allowed_types:
        findings.insert(0, f"TYPE detected as {detected}, expected one of {sorted(allowed_types)}")
    return findings


def lint_leaf(pem: str) -> list[str]:
    """CA/B Forum TLS BR lint of a Subscriber certificate (type detected from its policy OID)."""
    return _lint_serverauth(pem, SUBSCRIBER_TYPES)


def lint_ca(pem: str) -> list[str]:
    """CA/B Forum TLS BR lint of a root or a TLS issuing CA certificate."""
    return _lint_serverauth(pem, TLS_CA_TYPES)


def lint_chain(issuer_pem: str, subject_pem: str) -> list[str]:
    """RFC 5280 issuer/subject lint: names, key identifiers and the signature match."""
    cmd = [_tool("lint_pkix_signer_signee_cert_chain"), "lint"]
    findings, _ = _run_pkilint(cmd, [issuer_pem, subject_pem])
    return findings


def openssl_verify(leaf_pem: str, intermediate_pem: str, root_pem: str) -> str:
    """`openssl verify` of a TLS server certificate; returns openssl's output ("...: OK")."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, pem in (
            ("root", root_pem),
            ("intermediate", intermediate_pem),
            ("leaf", leaf_pem),
        ):
            paths[name] = Path(tmp) / f"{name}.pem"
            paths[name].write_text(pem)
        proc = subprocess.run(
            [
                "openssl",
                "verify",
                "-x509_strict",
                "-purpose",
                "sslserver",
                "-CAfile",
                str(paths["root"]),
                "-untrusted",
                str(paths["intermediate"]),
                str(paths["leaf"]),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    return (proc.stdout + proc.stderr).replace(str(paths["leaf"]), "leaf.pem").strip()
