"""Revocation visible to relying parties (issue 4, item 2): CA certificates, CRLs and OCSP served
at the URLs the certificates carry, checked with cryptography, pkilint and `openssl ocsp`.

Revocations are written to the certificate row directly (the `revoke` endpoint is not part of
this item), then published with `refresh_crls`, as the revoke code does after its commit.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib
import io
import json
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from certbroker import bootstrap
from certbroker.app import create_app
from certbroker.clock import ManualClock
from certbroker.issuance.builtin import BuiltinCa
from certbroker.issuance.crl import build_crl
from certbroker.orders import accounts
from certbroker.orders.revocation_lists import refresh_crls
from certbroker.pki.csr import build_csr
from certbroker.pki.keys import generate_private_key
from certbroker.settings import Settings
from certbroker.store.models import Certificate
from tests.conftest import Service
from tests.helpers.challtestsrv import ChallTestSrv
from tests.helpers.dcv_http_server import DcvHttpServer

KEY_COMPROMISE = 1
SUPERSEDED = 4


# --- helpers ----------------------------------------------------------------------------------


def sandbox_token(service: Service) -> str:
    """The API token of a new, funded sandbox account (issues at once from the sandbox CA)."""
    account_id, token = service.new_account("sandbox-reseller", sandbox=True)
    service.topup(100, account_id)
    return token


def issue(service: Service, name: str, *, token: str | None = None) -> x509.Certificate:
    """Place a DV order for `name` and let the worker issue it (HTTP file DCV unless sandbox).
    The account must hold the funds."""
    csr = build_csr(generate_private_key("ec256"), [name]).pem
    params = {
        "server": "nginx",
        "csr": csr,
        "domainInfo": [{"domainName": name, "dcvMethod": "HTTP_CSR_HASH"}],
    }
    placed = service.call("place", token=token, productCode="comodo-ssl", years=1, params=params)
    assert placed["code"] == 1, placed
    if token is None:
        service.publish(placed["data"])
    service.work()
    done = service.call("collect", token=token, certId=placed["data"]["certId"])
    assert done["status"] == "COMPLETE", done
    return x509.load_pem_x509_certificate(done["data"]["certificate"].encode())


def revoke(service: Service, leaf: x509.Certificate, reason: int | None, when: datetime) -> None:
    with service.ctx.db.transaction() as session:
        row = session.scalar(
            select(Certificate).where(Certificate.serial_hex == format(leaf.serial_number, "x"))
        )
        assert row is not None and row.state == "issued"
        row.revoked_at = when
        row.revocation_reason = reason


def url_path(url: str) -> str:
    return urlsplit(url).path


def crl_url(cert: x509.Certificate) -> str:
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    [point] = points
    assert point.full_name is not None
    [name] = point.full_name
    return str(name.value)


def aia_url(cert: x509.Certificate, method: x509.ObjectIdentifier) -> str:
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    [url] = [d.access_location.value for d in aia if d.access_method == method]
    return str(url)


OCSP_METHOD = x509.oid.AuthorityInformationAccessOID.OCSP
STEMS = ("intermediate", "sandbox-intermediate", "root", "sandbox-root")
CA_ISSUERS = x509.oid.AuthorityInformationAccessOID.CA_ISSUERS


def fetch_crl(client: TestClient | httpx.Client, path: str) -> x509.CertificateRevocationList:
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pkix-crl"
    return x509.load_der_x509_crl(response.content)


def ca_cert(client: TestClient, stem: str) -> x509.Certificate:
    response = client.get(f"/ca/{stem}.der")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pkix-cert"
    return x509.load_der_x509_certificate(response.content)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    hasher = hashes.Hash(algorithm)
    hasher.update(data)
    return hasher.finalize()


def ec_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def ocsp_request(
    serial: int, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm | None = None
) -> bytes:
    """A request for any serial, one this CA never issued included (RFC 6960 4.1.1 CertID)."""
    # SHA-1 by default, as openssl and most clients send it (RFC 5019 2.1.1).
    algorithm = algorithm or hashes.SHA1()  # noqa: S303
    key_bits = ec_key(issuer).public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    request = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        _digest(algorithm, issuer.subject.public_bytes()),
        _digest(algorithm, key_bits),
        serial,
        algorithm,
    )
    return request.build().public_bytes(serialization.Encoding.DER)


def check_signed_by(response: ocsp.OCSPResponse, issuer: x509.Certificate) -> None:
    """The response is signed by the issuing CA and names it by key hash (RFC 6960 4.2.1)."""
    assert response.signature_hash_algorithm is not None
    ec_key(issuer).verify(
        response.signature,
        response.tbs_response_bytes,
        ec.ECDSA(response.signature_hash_algorithm),
    )
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert response.responder_key_hash == ski.digest  # SHA-1 of the key: the BR 7.1.2 SKI method
    assert response.responder_name is None


def pkilint(tool: str, der: bytes, tmp_path: Path, *args: str) -> list[str]:
    """Findings of severity WARNING or worse from a pkilint CLI (lint_crl, lint_ocsp_response)
    on `der`. Its main() runs in-process: the same code as the command, without a second of
    interpreter start-up per call."""
    path = tmp_path / f"{tool}-{hashlib.sha256(der).hexdigest()[:12]}.der"
    path.write_bytes(der)
    cli = importlib.import_module(f"pkilint.bin.{tool}")
    stdout = io.StringIO()
    cli_args = ["lint", *args, "-f", "JSON", "-s", "WARNING", "--document-format", "DER"]
    with (
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(io.StringIO()) as err,
        warnings.catch_warnings(),
    ):
        # main() leaves its argparse-opened input file to the garbage collector.
        warnings.simplefilter("ignore", ResourceWarning)
        code = cli.main([*cli_args, str(path)])
    try:
        results: list[dict[str, Any]] = json.loads(stdout.getvalue())["results"]
    except (json.JSONDecodeError, KeyError):
        raise AssertionError(
            f"{tool} failed ({code}): {err.getvalue() or stdout.getvalue()}"
        ) from None
    return [
        f"{f['severity']} {f['code']} {f.get('message') or ''} @ {r['node_path']}"
        for r in results
        for f in r["finding_descriptions"]
    ]


# --- CA certificates and CRLs -----------------------------------------------------------------


def test_ca_certificates_are_served_where_the_certificates_point(service: Service) -> None:
    service.topup(500)
    leaf = issue(service, "shop.example.com")
    intermediate = ca_cert(service.client, "intermediate")
    root = ca_cert(service.client, "root")
    assert url_path(aia_url(leaf, CA_ISSUERS)) == "/ca/intermediate.der"
    assert url_path(aia_url(intermediate, CA_ISSUERS)) == "/ca/root.der"
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    sandbox = ca_cert(service.client, "sandbox-intermediate")
    sandbox.verify_directly_issued_by(ca_cert(service.client, "sandbox-root"))
    assert sandbox.subject != intermediate.subject
    head = service.client.head("/ca/root.der")
    assert head.status_code == 200 and head.headers["content-type"] == "application/pkix-cert"
    for path in ("/ca/nope.der", "/crl/nope.crl", "/ca/root.pem", "/ocsp/nope", "/ocsp/root"):
        assert service.client.get(path).status_code == 404, path


def test_revoked_certificate_is_listed_in_the_issuers_crl(service: Service, tmp_path: Path) -> None:
    service.topup(500)
    kept = issue(service, "shop.example.com")
    revoked = issue(service, "www.example.com")
    intermediate = ca_cert(service.client, "intermediate")
    path = url_path(crl_url(revoked))
    assert path == "/crl/intermediate.crl"

    before = fetch_crl(service.client, path)
    assert before.is_signature_valid(ec_key(intermediate))
    assert len(before) == 0

    revoked_at = service.clock.now()
    service.advance(timedelta(minutes=5))
    revoke(service, revoked, KEY_COMPROMISE, revoked_at)
    assert refresh_crls(service.ctx) == 1, "only the production intermediate's CRL changed"
    response = service.client.get(path)
    crl = x509.load_der_x509_crl(response.content)

    # RFC 5280 5 / BR 7.2.2: v2, issuer = the CA's subject, signed by it, AKI and a higher number.
    assert crl.is_signature_valid(ec_key(intermediate))
    assert crl.issuer.public_bytes() == intermediate.subject.public_bytes()
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = intermediate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert crl_number(crl) > crl_number(before)
    assert crl.next_update_utc is not None
    lifetime = crl.next_update_utc - crl.last_update_utc
    assert timedelta(days=1) <= lifetime <= timedelta(days=10)  # BR 4.9.7
    assert crl.last_update_utc == service.clock.now().replace(microsecond=0)

    entry = crl.get_revoked_certificate_by_serial_number(revoked.serial_number)
    assert entry is not None
    assert entry.revocation_date_utc == revoked_at.replace(microsecond=0)
    reason = entry.extensions.get_extension_for_class(x509.CRLReason)
    assert reason.value.reason == x509.ReasonFlags.key_compromise and not reason.critical
    assert crl.get_revoked_certificate_by_serial_number(kept.serial_number) is None
    assert len(crl) == 1

    # Served with caching bounded by the CRL's life, and revalidated by its number.
    assert "max-age=" in response.headers["cache-control"]
    again = service.client.get(path, headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and not again.content

    assert pkilint("lint_crl", response.content, tmp_path, "-t", "CRL", "-p", "BR") == []


def test_unspecified_reason_is_omitted_and_sandbox_crl_is_its_own(service: Service) -> None:
    leaf = issue(service, "sandbox.example.com", token=sandbox_token(service))
    assert url_path(crl_url(leaf)) == "/crl/sandbox-intermediate.crl"
    revoke(service, leaf, None, service.clock.now())
    service.work()  # no refresh call: the worker's pass sees the list changed (a lost refresh)
    sandbox = ca_cert(service.client, "sandbox-intermediate")
    crl = fetch_crl(service.client, "/crl/sandbox-intermediate.crl")
    assert crl.is_signature_valid(ec_key(sandbox))
    entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
    assert entry is not None
    assert len(entry.extensions) == 0, "BR 7.2.2: no reasonCode for unspecified"
    production = fetch_crl(service.client, "/crl/intermediate.crl")
    assert len(production) == 0, "a sandbox revocation stays off the production CRL"


def test_root_crls_cover_the_intermediates(service: Service, tmp_path: Path) -> None:
    intermediate = ca_cert(service.client, "intermediate")
    assert url_path(crl_url(intermediate)) == "/crl/root.crl"
    for root_stem in ("root", "sandbox-root"):
        root = ca_cert(service.client, root_stem)
        response = service.client.get(f"/crl/{root_stem}.crl")
        crl = x509.load_der_x509_crl(response.content)
        assert crl.is_signature_valid(ec_key(root))
        assert crl.issuer.public_bytes() == root.subject.public_bytes()
        assert crl.next_update_utc is not None
        assert crl.next_update_utc - crl.last_update_utc <= timedelta(days=365)  # BR 4.9.7
        assert len(crl) == 0
        assert pkilint("lint_crl", response.content, tmp_path, "-t", "ARL", "-p", "BR") == []

    # The revoke code forces a refresh: it re-signs the issuing CAs' CRLs, never the roots'.
    numbers = {stem: crl_number(fetch_crl(service.client, f"/crl/{stem}.crl")) for stem in STEMS}
    assert refresh_crls(service.ctx, force=True) == 2
    for stem in STEMS:
        number = crl_number(fetch_crl(service.client, f"/crl/{stem}.crl"))
        assert (number > numbers[stem]) == stem.endswith("intermediate"), stem


def test_crls_are_reissued_on_schedule_and_drop_expired_entries(service: Service) -> None:
    service.topup(500)
    leaf = issue(service, "shop.example.com")
    revoke(service, leaf, SUPERSEDED, service.clock.now())
    refresh_crls(service.ctx)
    first = fetch_crl(service.client, "/crl/intermediate.crl")
    root_first = fetch_crl(service.client, "/crl/root.crl")
    assert first.next_update_utc is not None
    assert refresh_crls(service.ctx) == 0, "nothing changed, nothing due"

    # BR 4.9.7: reissued at least every 7 days. The worker rebuilds at half the lifetime.
    service.advance((first.next_update_utc - first.last_update_utc) / 2 + timedelta(minutes=1))
    assert service.work() == 0, "a CRL rebuild is not a work item"
    second = fetch_crl(service.client, "/crl/intermediate.crl")
    assert crl_number(second) > crl_number(first)
    assert second.last_update_utc == service.clock.now().replace(microsecond=0)
    assert second.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None
    root_second = fetch_crl(service.client, "/crl/root.crl")
    assert crl_number(root_second) == crl_number(root_first), "the root CRL lasts longer"

    # BR 4.10.1: the entry stays until the certificate expires, and may go after that.
    # BR 4.9.7: the root CRL is reissued within twelve months (here at half its life).
    assert root_first.next_update_utc is not None
    root_half_life = (root_first.next_update_utc - root_first.last_update_utc) / 2
    later = max(
        leaf.not_valid_after_utc + timedelta(days=1),
        root_first.last_update_utc + root_half_life + timedelta(minutes=1),
    )
    service.clock.set(later)
    service.work()
    after_expiry = fetch_crl(service.client, "/crl/intermediate.crl")
    assert after_expiry.get_revoked_certificate_by_serial_number(leaf.serial_number) is None
    root_late = fetch_crl(service.client, "/crl/root.crl")
    assert crl_number(root_late) > crl_number(root_first)
    assert root_late.last_update_utc == later.replace(microsecond=0)


def test_build_crl_enforces_the_br_profile(tmp_path: Path) -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    ca = BuiltinCa.load_or_create(
        tmp_path / "ca", public_url="http://pki.example.com", organization="Test", now=now
    )
    issuer = ca.issuer(False)
    with pytest.raises(ValueError, match="at most"):
        build_crl(issuer, [], 1, now, now + timedelta(days=11))  # BR 4.9.7: 10 days
    with pytest.raises(ValueError, match="not allowed"):
        build_crl(issuer, [(5, now, 6)], 1, now, now + timedelta(days=7))  # certificateHold
    with pytest.raises(ValueError, match="2\\^159"):
        build_crl(issuer, [], 2**159, now, now + timedelta(days=7))
    # The linter the tests rely on does catch what build_crl refuses to make.
    too_long = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(now)
        .next_update(now + timedelta(days=11))
        .add_extension(x509.CRLNumber(1), critical=False)
        .sign(issuer.key, hashes.SHA384())
    )
    findings = pkilint(
        "lint_crl",
        too_long.public_bytes(serialization.Encoding.DER),
        tmp_path,
        "-t",
        "CRL",
        "-p",
        "BR",
    )
    assert any("cabf.crl_invalid_validity_period" in f for f in findings), findings
    assert any("pkix.authority_key_identifier_missing" in f for f in findings), findings
    root = ca.root("production")
    crl = build_crl(root, [(7, now, 2)], 3, now, now + timedelta(days=365))  # cACompromise
    assert crl.is_signature_valid(ec_key(root.certificate))


# --- OCSP --------------------------------------------------------------------------------------


def test_ocsp_get_and_post_answers(service: Service, tmp_path: Path) -> None:
    service.topup(500)
    leaf = issue(service, "shop.example.com")
    intermediate = ca_cert(service.client, "intermediate")
    path = url_path(aia_url(leaf, OCSP_METHOD))
    assert path == "/ocsp/intermediate"

    # GET, RFC 6960 A.1: url-encoded base64 of the DER request.
    der = ocsp_request(leaf.serial_number, intermediate, hashes.SHA256())
    got = service.client.get(f"{path}/{quote(base64.b64encode(der).decode(), safe='')}")
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/ocsp-response"
    response = ocsp.load_der_ocsp_response(got.content)
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == leaf.serial_number
    assert isinstance(response.hash_algorithm, hashes.SHA256), "the CertID as asked"
    check_signed_by(response, intermediate)
    assert response.this_update_utc == service.clock.now().replace(microsecond=0)
    assert response.next_update_utc is not None
    validity = response.next_update_utc - response.this_update_utc
    assert timedelta(hours=8) <= validity <= timedelta(days=10)  # BR 4.9.10
    # RFC 5019 6.2: cacheable, but not past nextUpdate.
    assert "public" in got.headers["cache-control"] and "max-age=" in got.headers["cache-control"]
    assert got.headers["expires"] and got.headers["last-modified"] and got.headers["etag"]
    assert pkilint("lint_ocsp_response", got.content, tmp_path) == []

    # The same request unencoded, with the base64 slashes as path segments, is read the same.
    raw = service.client.get(f"{path}/{base64.b64encode(der).decode()}")
    assert ocsp.load_der_ocsp_response(raw.content).certificate_status == ocsp.OCSPCertStatus.GOOD

    # Revoked, over POST: time and reason as in the CRL.
    revoked_at = service.clock.now() - timedelta(hours=1)
    revoke(service, leaf, KEY_COMPROMISE, revoked_at)
    posted = service.client.post(
        path,
        content=ocsp_request(leaf.serial_number, intermediate),
        headers={"Content-Type": "application/ocsp-request"},
    )
    revoked = ocsp.load_der_ocsp_response(posted.content)
    assert revoked.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_time_utc == revoked_at.replace(microsecond=0)
    assert revoked.revocation_reason == x509.ReasonFlags.key_compromise
    check_signed_by(revoked, intermediate)
    assert pkilint("lint_ocsp_response", posted.content, tmp_path) == []


def test_ocsp_unknown_unauthorized_and_malformed(service: Service, tmp_path: Path) -> None:
    intermediate = ca_cert(service.client, "intermediate")
    sandbox = ca_cert(service.client, "sandbox-intermediate")
    path = "/ocsp/intermediate"

    # BR 4.9.10: never "good" for a serial this CA did not issue.
    never = service.client.post(path, content=ocsp_request(0x1234567890ABCDEF, intermediate))
    unknown = ocsp.load_der_ocsp_response(never.content)
    assert unknown.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert unknown.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    check_signed_by(unknown, intermediate)
    assert never.headers["cache-control"] == "no-store"
    assert pkilint("lint_ocsp_response", never.content, tmp_path) == []

    # A CertID naming another CA (here the sandbox's) is not this responder's to answer.
    other = service.client.post(path, content=ocsp_request(5, sandbox))
    refused = ocsp.load_der_ocsp_response(other.content)
    assert refused.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED
    assert pkilint("lint_ocsp_response", other.content, tmp_path) == []

    # The sandbox responder does answer for its own CA.
    own = service.client.post(
        "/ocsp/sandbox-intermediate", content=ocsp_request(5, sandbox, hashes.SHA384())
    )
    own_answer = ocsp.load_der_ocsp_response(own.content)
    assert own_answer.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    check_signed_by(own_answer, sandbox)

    for bad in (
        service.client.post(path, content=b"\x30\x03\x02\x01\x01"),
        service.client.post(path, content=b"x" * 5000),
        service.client.get(f"{path}/not*base64!"),
        service.client.get(f"{path}/{base64.b64encode(b'not DER').decode()}"),
        service.client.get(path),
    ):
        assert bad.status_code == 200
        answer = ocsp.load_der_ocsp_response(bad.content)
        assert answer.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        assert bad.headers["cache-control"] == "no-store"


# --- a real client against a real server ------------------------------------------------------


@pytest.fixture
def live_service(
    tmp_path: Path, dns_server: ChallTestSrv, site: DcvHttpServer, database_url: str | None
) -> Iterator[Service]:
    """`service` with its clock at the real time: `openssl ocsp` checks the answer's times and
    the CA certificates' validity against the system clock."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        dcv_http_port=site.port,
        dcv_resolver=dns_server.resolver,
        dcv_allow_networks=["127.0.0.0/8"],
        dcv_timeout_seconds=3,
    )
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    ctx = bootstrap.build_context(settings, clock)
    first = bootstrap.ensure_first_account(ctx)
    assert first is not None
    with ctx.db.transaction() as session:
        account_id = accounts.find_account(session, first.name).id
    with TestClient(create_app(ctx, worker=False)) as client:
        yield Service(ctx, client, clock, first.token, account_id, site, dns_server)


@contextlib.contextmanager
def http_server(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):  # waiting for start-up, not measuring it
            if server.started or not thread.is_alive():
                break
            time.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def openssl_ocsp(url: str, leaf: x509.Certificate, files: dict[str, Path], out: Path) -> str:
    leaf_path = out.with_suffix(".pem")
    leaf_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    proc = subprocess.run(
        [
            "openssl",
            "ocsp",
            "-issuer",
            str(files["intermediate"]),
            "-verify_other",
            str(files["intermediate"]),
            "-CAfile",
            str(files["root"]),
            "-cert",
            str(leaf_path),
            "-url",
            url,
            "-resp_text",
            "-respout",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output.replace(str(leaf_path), "leaf.pem")


def test_openssl_ocsp_client_sees_revoked_and_good(live_service: Service, tmp_path: Path) -> None:
    service = live_service
    service.topup(500)
    good = issue(service, "shop.example.com")
    revoked = issue(service, "www.example.com")
    revoke(service, revoked, KEY_COMPROMISE, service.clock.now())
    refresh_crls(service.ctx)
    files = {}
    for stem in ("intermediate", "root"):
        files[stem] = tmp_path / f"{stem}.pem"
        cert = ca_cert(service.client, stem)
        files[stem].write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    app = create_app(service.ctx, worker=False)
    with http_server(app) as base:
        # The responder URL as the certificate carries it, on this server.
        url = base + url_path(aia_url(revoked, OCSP_METHOD))
        out = openssl_ocsp(url, revoked, files, tmp_path / "revoked.der")
        assert "Response verify OK" in out
        assert "leaf.pem: revoked" in out
        assert "Reason: keyCompromise" in out
        assert "Cert Status: revoked" in out and "Revocation Reason: keyCompromise (0x1)" in out
        assert "WARNING" not in out, "nonce echoed, times valid"
        assert (
            pkilint("lint_ocsp_response", (tmp_path / "revoked.der").read_bytes(), tmp_path) == []
        )

        out = openssl_ocsp(url, good, files, tmp_path / "good.der")
        assert "Response verify OK" in out and "leaf.pem: good" in out
        assert "WARNING" not in out

        # GET over the wire (RFC 6960 A.1), and the CRL from the same server.
        intermediate = x509.load_pem_x509_certificate(files["intermediate"].read_bytes())
        encoded = quote(base64.b64encode(ocsp_request(revoked.serial_number, intermediate)))
        with httpx.Client(base_url=base, timeout=30) as client:
            got = client.get(f"{url_path(url)}/{encoded}")
            assert got.status_code == 200
            answer = ocsp.load_der_ocsp_response(got.content)
            assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
            assert answer.revocation_reason == x509.ReasonFlags.key_compromise
            crl = fetch_crl(client, url_path(crl_url(revoked)))
            assert crl.is_signature_valid(ec_key(intermediate))
            assert crl.get_revoked_certificate_by_serial_number(revoked.serial_number) is not None
            assert crl.get_revoked_certificate_by_serial_number(good.serial_number) is None
