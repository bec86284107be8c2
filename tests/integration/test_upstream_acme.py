"""Publicly trusted certificates through an upstream ACME CA: Debian's Pebble with EAB required,
challtestsrv as everybody's DNS, the test's loopback web server as the customer's site.

SQLite only: every scenario waits on Pebble's own validation between worker passes, and the
upstream path shares every query with the built-in path that the PostgreSQL suites cover.
"""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from fastapi.testclient import TestClient
from sqlalchemy import select

from certbroker import bootstrap
from certbroker.api.limits import ApiGuard, ApiLimits
from certbroker.api.racent.routes import configure_limits
from certbroker.app import create_app
from certbroker.catalog.catalog import Catalog
from certbroker.clock import ManualClock
from certbroker.dns_delegation.confirmation import ask_txt, txt_strings
from certbroker.issuance.acme_upstream import AcmeUpstream
from certbroker.orders import accounts, upstream_accounts, upstream_orders
from certbroker.settings import (
    DcvDelegationSettings,
    Settings,
    UpstreamCapabilities,
    UpstreamSettings,
)
from certbroker.store.models import (
    Certificate,
    Event,
    LedgerEntry,
    UpstreamAccount,
    UpstreamAuthz,
    UpstreamOrder,
)
from certbroker.worker.runner import Worker
from tests.conftest import START, Service
from tests.helpers.challtestsrv import ChallTestSrv
from tests.helpers.dcv_http_server import DcvHttpServer, Route
from tests.helpers.pebble import EAB_KID, Pebble

PRODUCT = "acme-dv"
WILD_PRODUCT = "acme-dv-wild"  # wildcards and CNAME_CSR_HASH (dns-01 through the delegation)
ZONE = "dcv.test"
NAME = "shop.example.com"
PARAMS = {"server": "nginx", "domainInfo": [{"domainName": NAME, "dcvMethod": "HTTP_CSR_HASH"}]}


def _catalog_file(tmp_path: Path) -> Path:
    shipped = Catalog.load_default().require("comodo-ssl")
    raw = json.loads(
        (Path(__file__).parents[2] / "src/certbroker/catalog/products.json").read_text()
    )
    product = copy.deepcopy(next(p for p in raw["products"] if p["code"] == shipped.code))
    product.update(
        code=PRODUCT,
        productName="Pebble DV",
        dcvMethods=["HTTP_CSR_HASH", "HTTPS_CSR_HASH"],
        issuer={"type": "acme", "upstream": "pebble"},
    )
    wild = copy.deepcopy(
        next(p for p in raw["products"] if p["code"] == "comodo-positive-multi-domain-wildcard")
    )
    wild.update(
        code=WILD_PRODUCT,
        productName="Pebble DV wildcard",
        maxDomain=100,
        dcvMethods=["HTTP_CSR_HASH", "HTTPS_CSR_HASH", "CNAME_CSR_HASH"],
        issuer={"type": "acme", "upstream": "pebble"},
    )
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"currency": "USD", "products": [product, wild]}))
    return path


@pytest.fixture
def pebble(tmp_path: Path, dns_server: ChallTestSrv, site: DcvHttpServer) -> Iterator[Pebble]:
    with Pebble(tmp_path / "pebble", http_port=site.port, dns_server=dns_server.resolver) as p:
        yield p


def _service(
    tmp_path: Path,
    pebble: Pebble,
    dns_server: ChallTestSrv,
    site: DcvHttpServer,
    *,
    hmac_key: str,
    delegation: bool = False,
    directory: str | None = None,
    circuit_failures: int = 5,
) -> Iterator[Service]:
    upstream = UpstreamSettings(
        directory=directory or pebble.directory,
        circuit_failures=circuit_failures,
        eab_kid=EAB_KID,
        eab_hmac_key=hmac_key,  # type: ignore[arg-type]  # pydantic makes it a SecretStr
        ca_bundle=str(pebble.ca_bundle),
        caa_identities=["pebble.letsencrypt.org"],
        capabilities=UpstreamCapabilities(wildcard="dns-01"),
    )
    # challtestsrv is Pebble's DNS and, here, certbroker's publisher of the delegation zone.
    zone = (
        DcvDelegationSettings(
            zone=ZONE,
            publisher="challtestsrv",
            challtestsrv_url=f"http://127.0.0.1:{dns_server.management_port}",
            confirm_server=dns_server.resolver,
            confirm_timeout_seconds=10,
        )
        if delegation
        else DcvDelegationSettings()
    )
    settings = Settings(
        data_dir=tmp_path / "data",
        dcv_http_port=site.port,
        dcv_resolver=dns_server.resolver,
        dcv_allow_networks=["127.0.0.0/8"],
        dcv_timeout_seconds=3,
        key_pool_size=0,
        upstreams={"pebble": upstream},
        catalog=_catalog_file(tmp_path),
        dcv_delegation=zone,
    )
    clock = ManualClock(START)
    ctx = bootstrap.build_context(settings, clock)
    first = bootstrap.ensure_first_account(ctx)
    assert first is not None
    with ctx.db.transaction() as session:
        account_id = accounts.find_account(session, first.name).id
    app = create_app(ctx, worker=False)
    configure_limits(app, ApiGuard(replace(ApiLimits(), per_token=None, per_address=None)))
    with TestClient(app) as client:
        yield Service(ctx, client, clock, first.token, account_id, site, dns_server)


@pytest.fixture
def acme_service(
    tmp_path: Path, pebble: Pebble, dns_server: ChallTestSrv, site: DcvHttpServer
) -> Iterator[Service]:
    yield from _service(tmp_path, pebble, dns_server, site, hmac_key=pebble.eab_hmac_key)


@pytest.fixture(autouse=True)
def _no_hook() -> Iterator[None]:
    yield
    upstream_orders.after_commit = None


def _work_until(service: Service, cert_id: str, wanted: str, passes: int = 60) -> dict[str, Any]:
    """Worker passes (the clock moved past each poll delay) until collect shows `wanted`.
    Pebble validates in the background, so a pass may find it still busy."""
    for _ in range(passes):
        service.advance(upstream_orders.POLL_DELAY)
        service.work()
        answer = service.call("collect", certId=cert_id)
        if answer["status"] == wanted:
            return answer
        time.sleep(0.05)
    raise AssertionError(f"{cert_id} never became {wanted}: {answer}")


def _place(service: Service) -> dict[str, Any]:
    assert [r.ok for r in upstream_accounts.check_all(service.ctx)] == [True]
    service.topup(100)
    placed = service.call("place", productCode=PRODUCT, years="1", params=PARAMS)
    assert placed["code"] == 1, placed
    data: dict[str, Any] = placed["data"]
    return data


def _publish(service: Service, data: dict[str, Any]) -> None:
    service.site.routes[f"/.well-known/acme-challenge/{data['DCVfileName']}"] = Route(
        body=data["DCVfileContent"].encode()
    )


def _verify_chain(tmp_path: Path, pebble: Pebble, data: dict[str, Any]) -> None:
    (tmp_path / "root.pem").write_text(pebble.roots())
    (tmp_path / "leaf.pem").write_text(data["certificate"])
    (tmp_path / "chain.pem").write_text(data["caCertificate"])
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(tmp_path / "root.pem"),
            "-untrusted",
            str(tmp_path / "chain.pem"),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _certificates(service: Service) -> int:
    with service.ctx.db.read() as session:
        return len(session.scalars(select(Certificate.id)).all())


def _charges(service: Service) -> list[int]:
    with service.ctx.db.read() as session:
        return list(
            session.scalars(select(LedgerEntry.amount_cents).where(LedgerEntry.kind == "charge"))
        )


def test_http01_place_publish_complete(
    acme_service: Service, pebble: Pebble, tmp_path: Path
) -> None:
    service = acme_service
    data = _place(service)
    cert_id = data["certId"]
    # newOrder happens in the worker: place answers at once, the file fields come after.
    assert data["DCVfileName"] == ""
    first = service.call("collect", certId=cert_id)
    assert first["data"]["application"]["status"] == "processing"

    service.work()
    shown = service.call("collect", certId=cert_id)["data"]
    token = shown["DCVfileName"]
    assert shown["application"]["status"] == "done"
    assert shown["DCVfilePath"] == f"http://{NAME}/.well-known/acme-challenge/{token}"
    assert shown["DCVfileContent"].startswith(token + ".")
    assert len(shown["DCVfileContent"]) == 87  # token . base64url(SHA-256 thumbprint)
    assert shown["dcvInfo"][NAME]["DCVfileContent"] == shown["DCVfileContent"]

    _publish(service, shown)
    done = _work_until(service, cert_id, "COMPLETE")["data"]
    assert done["dcvList"][0]["is_verify"] == "verified"
    assert done["dcvList"][0]["verifiedBy"] == "upstream http-01"
    _verify_chain(tmp_path, pebble, done)
    assert done["privateKey"] and done["pkcs12"]
    assert _certificates(service) == 1
    assert _charges(service) == [-12_00]
    # vendorId/vendorCertId stay numeric; the upstream's URLs go in extension fields.
    assert done["vendorId"].isdigit() and done["vendorCertId"] == done["vendorId"]
    assert done["upstreamOrderUrl"].startswith(pebble.directory.removesuffix("/dir"))
    assert done["upstreamCertUrl"].startswith(pebble.directory.removesuffix("/dir"))
    assert shown["vendorCertId"] == "" and shown["upstreamCertUrl"] == ""


def test_wrong_file_answers_nothing_upstream_until_fixed(
    acme_service: Service, pebble: Pebble, tmp_path: Path
) -> None:
    service = acme_service
    cert_id = _place(service)["certId"]
    service.work()
    shown = service.call("collect", certId=cert_id)["data"]
    _publish(service, {**shown, "DCVfileContent": "not-the-key-authorization"})

    for _ in range(3):
        service.advance(upstream_orders.POLL_DELAY)
        service.work()
    row = service.call("collect", certId=cert_id)["data"]["dcvList"][0]
    assert row["is_verify"] == ""
    assert "acme-challenge/" + shown["DCVfileName"] in row["lastError"]
    assert "not-the-key-authorization" in row["lastError"] or "expected" in row["lastError"]
    # Nothing was answered upstream: the challenge is still pending and Pebble never fetched.
    with service.ctx.db.read() as session:
        authz = session.scalars(select(UpstreamAuthz)).one()
        assert authz.answered_at is None
        key = upstream_accounts.account_key(service.ctx, session, "pebble")
    assert key is not None and key.account_url is not None
    client = AcmeUpstream(service.ctx.upstreams["pebble"], key.key_pem, key.account_url)
    upstream = client.authorization(authz.url)
    assert upstream.status == "pending"
    assert [c.status for c in upstream.challenges] == ["pending"] * len(upstream.challenges)
    assert "Pulled token" not in pebble.log() and "validat" not in pebble.log().lower()

    _publish(service, shown)
    service.advance(upstream_orders.BACKOFF_MAX)  # past the DCV back-off
    done = _work_until(service, cert_id, "COMPLETE")["data"]
    _verify_chain(tmp_path, pebble, done)


@pytest.fixture
def wrong_eab_service(
    tmp_path: Path, pebble: Pebble, dns_server: ChallTestSrv, site: DcvHttpServer
) -> Iterator[Service]:
    wrong = "A" * len(pebble.eab_hmac_key)
    yield from _service(tmp_path, pebble, dns_server, site, hmac_key=wrong)


def test_wrong_eab_key_fails_the_check_and_place_answers_minus_6(
    wrong_eab_service: Service,
) -> None:
    service = wrong_eab_service
    [result] = upstream_accounts.check_all(service.ctx)
    assert not result.ok
    assert result.line().startswith("pebble: FAILED: unauthorized")
    assert "check the EAB key of kid 'kid-1'" in result.line()
    with service.ctx.db.read() as session:
        account = session.scalars(select(UpstreamAccount)).one()
        assert account.status == "failed" and account.account_url is None

    service.topup(100)
    answer = service.call("place", productCode=PRODUCT, years="1", params=PARAMS)
    assert answer["code"] == -6
    assert "upstream CA ’pebble’" in answer["errors"]
    assert "nothing was charged" in answer["errors"]
    assert service.balance() == 100_00
    assert service.counts() == (0, 0)
    # validate answers the same.
    checked = service.call("validate", productCode=PRODUCT, years="1", params=PARAMS)
    assert checked["code"] == -6


def test_email_is_refused_for_acme_products(acme_service: Service) -> None:
    service = acme_service
    upstream_accounts.check_all(service.ctx)
    service.topup(100)
    params = {"server": "nginx", "domainInfo": [{"domainName": NAME, "dcvMethod": "EMAIL"}]}
    answer = service.call("place", productCode=PRODUCT, years="1", params=params)
    assert answer["code"] == -1
    [message] = next(iter(answer["errors"].values()))
    assert message == (
        f"dcvMethod EMAIL is not supported by product {PRODUCT} (ACME); "
        "use one of HTTP_CSR_HASH, HTTPS_CSR_HASH"
    )


def test_a_step_dying_between_answer_and_finalize_resumes_with_one_certificate(
    acme_service: Service, pebble: Pebble, tmp_path: Path
) -> None:
    service = acme_service
    cert_id = _place(service)["certId"]
    service.work()
    _publish(service, service.call("collect", certId=cert_id)["data"])

    def die(step: str, _upstream_order_id: int) -> None:
        if step == "answered":
            raise RuntimeError("killed after answering")

    upstream_orders.after_commit = die
    service.work()  # the step dies; the worker logs it and the lease stays
    upstream_orders.after_commit = None
    with service.ctx.db.read() as session:
        row = session.scalars(select(UpstreamOrder)).one()
        assert row.lease_owner is not None and row.finalize_sent_at is None
    assert "Issued certificate serial" not in pebble.log()

    # A new worker (another process) takes over once the lease has run out.
    service.advance(service.ctx.policy.lease)
    done = _work_until(service, cert_id, "COMPLETE")["data"]
    _verify_chain(tmp_path, pebble, done)
    assert _certificates(service) == 1
    assert _charges(service) == [-12_00]
    assert service.balance() == 100_00 - 12_00
    # Pebble issued one certificate for this order.
    assert pebble.log().count("Issued certificate serial") == 1


def test_builtin_issuance_never_claims_upstream_orders(acme_service: Service) -> None:
    service = acme_service
    _place(service)
    worker = Worker(service.ctx)
    from certbroker.orders import issuing

    assert issuing.claim_ready_orders(service.ctx, worker.owner) == []
    asyncio.run(worker.run_once())
    assert _certificates(service) == 0


def _issued(service: Service) -> tuple[str, str]:
    """An upstream order placed, published and COMPLETE: (certId, serial in hex)."""
    data = _place(service)
    service.work()
    _publish(service, service.call("collect", certId=data["certId"])["data"])
    done = _work_until(service, data["certId"], "COMPLETE")["data"]
    leaf = x509.load_pem_x509_certificate(done["certificate"].encode())
    return data["certId"], format(leaf.serial_number, "x")


def test_revoke_revokes_at_the_upstream_with_the_reason(
    acme_service: Service, pebble: Pebble
) -> None:
    service = acme_service
    cert_id, serial = _issued(service)
    assert pebble.cert_status(serial)["Status"] == "Valid"
    answer = service.call("revoke", certId=cert_id, reason="keyCompromise")
    assert answer["code"] == 1, answer
    status = pebble.cert_status(serial)
    assert status["Status"] == "Revoked" and status["Reason"] == 1
    assert service.call("collect", certId=cert_id)["status"] == "REVOKED"


def test_revoke_changes_nothing_when_the_upstream_refuses(
    acme_service: Service, pebble: Pebble
) -> None:
    service = acme_service
    cert_id, _serial = _issued(service)
    pebble.close()  # the upstream is gone: nothing may be recorded as revoked
    answer = service.call("revoke", certId=cert_id, reason="keyCompromise")
    assert answer["code"] == -6, answer
    assert "nothing was changed" in answer["errors"]
    assert service.call("collect", certId=cert_id)["status"] == "COMPLETE"
    with service.ctx.db.read() as session:
        revoked = session.scalars(select(Certificate.revoked_at)).all()
    assert revoked == [None]


def test_cancel_of_an_issued_upstream_certificate_revokes_it_there(
    acme_service: Service, pebble: Pebble
) -> None:
    service = acme_service
    cert_id, serial = _issued(service)
    answer = service.call("cancel", certId=cert_id, reason="ordered by mistake")
    assert answer["code"] == 1, answer
    status = pebble.cert_status(serial)
    assert status["Status"] == "Revoked" and status["Reason"] == 5  # cessationOfOperation
    assert service.call("collect", certId=cert_id)["status"] == "CANCELLED"


# --- dns-01 through the persistent CNAME delegation ----------------------------------------


@pytest.fixture
def dns_service(
    tmp_path: Path, pebble: Pebble, dns_server: ChallTestSrv, site: DcvHttpServer
) -> Iterator[Service]:
    yield from _service(
        tmp_path, pebble, dns_server, site, hmac_key=pebble.eab_hmac_key, delegation=True
    )


def _place_dns(service: Service, *names: str) -> dict[str, Any]:
    assert [r.ok for r in upstream_accounts.check_all(service.ctx)] == [True]
    service.topup(500)
    params = {
        "server": "nginx",
        "domainInfo": [{"domainName": n, "dcvMethod": "CNAME_CSR_HASH"} for n in names],
    }
    placed = service.call("place", productCode=WILD_PRODUCT, years="1", params=params)
    assert placed["code"] == 1, placed
    data: dict[str, Any] = placed["data"]
    return data


def _sans(data: dict[str, Any]) -> set[str]:
    leaf = x509.load_pem_x509_certificate(data["certificate"].encode())
    return set(
        leaf.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    )


def _txt_at(service: Service, fqdn: str) -> set[str]:
    response = asyncio.run(ask_txt(service.dns_server.resolver, fqdn, timeout=2))
    return txt_strings(response, fqdn)


def _answered(service: Service) -> list[object]:
    with service.ctx.db.read() as session:
        return list(session.scalars(select(UpstreamAuthz.answered_at)))


def test_dns01_wildcard_and_apex_through_one_cname_then_a_reissue_needs_nothing(
    dns_service: Service, pebble: Pebble, tmp_path: Path
) -> None:
    service = dns_service
    base = "wild-a.example.com"
    data = _place_dns(service, f"*.{base}", base)
    cert_id = data["certId"]
    # The CNAME is known at place, before any upstream order; one record covers both names.
    wild, apex = data["dcvInfo"][f"*.{base}"], data["dcvInfo"][base]
    assert wild == apex
    assert apex["DCVdnsHost"] == "_acme-challenge" and apex["DCVdnsType"] == "CNAME"
    target = apex["DCVdnsValue"]
    label = target.removesuffix(f".{ZONE}.")
    assert len(label) == 26 and label.isalnum() and label == label.lower()
    assert data["DCVdnsValue"] == target and data["DCVfileName"] == ""

    service.dns_server.set_cname(f"_acme-challenge.{base}", target)
    try:
        done = _work_until(service, cert_id, "COMPLETE")["data"]
        assert _sans(done) == {f"*.{base}", base}
        assert [r["verifiedBy"] for r in done["dcvList"]] == ["upstream dns-01"] * 2
        _verify_chain(tmp_path, pebble, done)
        # The values published at the one delegation name were removed once done.
        assert _txt_at(service, target) == set()

        # A reissue is a new upstream order that completes through the same CNAME: the test
        # sets nothing and publishes nothing.
        answer = service.call("reissue", certId=cert_id, reason="new key")
        assert answer["code"] == 1, answer
        again = answer["data"]["certId"]
        shown = service.call("collect", certId=again)["data"]
        assert shown["dcvInfo"][base]["DCVdnsValue"] == target
        renewed = _work_until(service, again, "COMPLETE")["data"]
        assert _sans(renewed) == {f"*.{base}", base}
        assert renewed["certificate"] != done["certificate"]
        _verify_chain(tmp_path, pebble, renewed)
        assert service.call("collect", certId=cert_id)["status"] == "REISSUED"
        assert _certificates(service) == 2
        assert len(_charges(service)) == 1  # the reissue is free
        with service.ctx.db.read() as session:
            rows = session.scalars(select(UpstreamOrder.status)).all()
        assert rows == ["downloaded", "downloaded"]
    finally:
        service.dns_server.clear_cname(f"_acme-challenge.{base}")


def test_dns01_missing_or_wrong_cname_answers_nothing_until_fixed(
    dns_service: Service, pebble: Pebble, tmp_path: Path
) -> None:
    service = dns_service
    base = "wrong-c.example.com"
    record = f"_acme-challenge.{base}"
    data = _place_dns(service, base)
    cert_id = data["certId"]
    target = data["DCVdnsValue"]

    for _ in range(2):
        service.advance(upstream_orders.POLL_DELAY)
        service.work()
    row = service.call("collect", certId=cert_id)["data"]["dcvList"][0]
    assert row["is_verify"] == ""
    assert f"create a CNAME record {record} pointing to {target}" in row["lastError"]
    assert _answered(service) == [None]

    service.dns_server.set_cname(record, f"someone-else.{ZONE}.")
    try:
        service.advance(upstream_orders.BACKOFF_MAX)
        service.work()
        row = service.call("collect", certId=cert_id)["data"]["dcvList"][0]
        assert f"it must point directly to {target}" in row["lastError"]
        assert _answered(service) == [None]
        assert _txt_at(service, target) == set()  # nothing published either
        # Nothing was answered upstream: the authz is still pending there.
        with service.ctx.db.read() as session:
            authz = session.scalars(select(UpstreamAuthz)).one()
            key = upstream_accounts.account_key(service.ctx, session, "pebble")
        assert key is not None and key.account_url is not None
        client = AcmeUpstream(service.ctx.upstreams["pebble"], key.key_pem, key.account_url)
        assert client.authorization(authz.url).status == "pending"

        service.dns_server.set_cname(record, target)
        service.advance(upstream_orders.BACKOFF_MAX)
        done = _work_until(service, cert_id, "COMPLETE")["data"]
        assert _sans(done) == {base}
        _verify_chain(tmp_path, pebble, done)
    finally:
        service.dns_server.clear_cname(record)


def test_cname_method_without_a_delegation_zone_answers_minus_1(acme_service: Service) -> None:
    service = acme_service
    upstream_accounts.check_all(service.ctx)
    service.topup(100)
    params = {
        "server": "nginx",
        "domainInfo": [{"domainName": "nozone.example.com", "dcvMethod": "CNAME_CSR_HASH"}],
    }
    answer = service.call("place", productCode=WILD_PRODUCT, years="1", params=params)
    assert answer["code"] == -1
    [message] = answer["errors"]["domainInfo.0.dcvMethod"]
    assert "no DNS delegation zone" in message
    assert message.endswith("use HTTP_CSR_HASH, HTTPS_CSR_HASH")
    assert service.balance() == 100_00


def test_acme_wildcard_gets_no_implied_base_domain(dns_service: Service) -> None:
    service = dns_service
    data = _place_dns(service, "*.only-wild.example.com")
    assert list(data["dcvInfo"]) == ["*.only-wild.example.com"]


def test_http01_reissue_shows_a_new_token_and_completes_after_publication(
    acme_service: Service, pebble: Pebble, tmp_path: Path
) -> None:
    service = acme_service
    cert_id, _serial = _issued(service)
    old_token = service.call("collect", certId=cert_id)["data"]["DCVfileName"]
    answer = service.call("reissue", certId=cert_id, reason="server moved")
    assert answer["code"] == 1, answer
    again = answer["data"]["certId"]
    service.work()
    shown = service.call("collect", certId=again)["data"]
    assert shown["DCVfileName"] and shown["DCVfileName"] != old_token
    assert shown["dcvList"][0]["is_verify"] == ""
    _publish(service, shown)
    done = _work_until(service, again, "COMPLETE")["data"]
    assert done["dcvList"][0]["verifiedBy"] == "upstream http-01"
    _verify_chain(tmp_path, pebble, done)
    assert _certificates(service) == 2


@pytest.fixture
def reusing_dns_service(
    tmp_path: Path, dns_server: ChallTestSrv, site: DcvHttpServer
) -> Iterator[Service]:
    """Pebble reusing every valid authorization (RFC 8555 7.4 lets a CA do so)."""
    with Pebble(
        tmp_path / "pebble", http_port=site.port, dns_server=dns_server.resolver, authz_reuse=100
    ) as pebble:
        yield from _service(
            tmp_path, pebble, dns_server, site, hmac_key=pebble.eab_hmac_key, delegation=True
        )


def test_reused_upstream_authz_counts_only_after_this_orders_cname_check(
    reusing_dns_service: Service,
) -> None:
    service = reusing_dns_service
    base = "reuse-e.example.com"
    record = f"_acme-challenge.{base}"
    first = _place_dns(service, base)
    service.dns_server.set_cname(record, first["DCVdnsValue"])
    try:
        _work_until(service, first["certId"], "COMPLETE")
        # The upstream now holds a valid authz for the name. With the CNAME gone, a new order
        # gets it back already valid, but it is never finalized: the gate wants the CNAME.
        service.dns_server.clear_cname(record)
        second = _place_dns(service, base)
        for _ in range(3):
            service.advance(upstream_orders.POLL_DELAY)
            service.work()
        shown = service.call("collect", certId=second["certId"])
        row = shown["data"]["dcvList"][0]
        assert shown["status"] == "PENDING" and row["is_verify"] == ""
        assert f"create a CNAME record {record} pointing to" in row["lastError"]
        with service.ctx.db.read() as session:
            finalized = session.scalars(select(UpstreamOrder.finalize_sent_at)).all()
        assert finalized[1] is None

        service.dns_server.set_cname(record, first["DCVdnsValue"])
        service.advance(upstream_orders.BACKOFF_MAX)
        done = _work_until(service, second["certId"], "COMPLETE")["data"]
        assert done["dcvList"][0]["verifiedBy"] == "upstream-reuse"
        assert _answered(service)[-1] is None  # reused: nothing answered for the second order
    finally:
        service.dns_server.clear_cname(record)


# --- cancel, cross-tenant reuse, CAA -----------------------------------------------------------


def _client(service: Service) -> AcmeUpstream:
    with service.ctx.db.read() as session:
        key = upstream_accounts.account_key(service.ctx, session, "pebble")
    assert key is not None and key.account_url is not None
    return AcmeUpstream(service.ctx.upstreams["pebble"], key.key_pem, key.account_url)


def test_cancel_of_a_pending_order_deactivates_its_upstream_authorizations(
    acme_service: Service, pebble: Pebble
) -> None:
    service = acme_service
    cert_id = _place(service)["certId"]
    service.work()  # the upstream order exists: its authz is pending at Pebble
    with service.ctx.db.read() as session:
        order_url = session.scalars(select(UpstreamOrder.order_url)).one()
    assert order_url is not None
    client = _client(service)
    [authz_url] = client.order(order_url).authorizations
    assert client.authorization(authz_url).status == "pending"

    answer = service.call("cancel", certId=cert_id, reason="not needed")
    assert answer["code"] == 1, answer
    assert service.call("collect", certId=cert_id)["status"] == "CANCELLED"
    with service.ctx.db.read() as session:
        row = session.scalars(select(UpstreamOrder)).one()
        assert row.status == "deactivating" and row.next_attempt_at is not None
    # Nothing upstream happened inside the cancel; the worker does it after the commit.
    assert client.authorization(authz_url).status == "pending"

    service.work()
    assert client.authorization(authz_url).status == "deactivated"
    assert client.order(order_url).status in ("deactivated", "invalid")
    with service.ctx.db.read() as session:
        row = session.scalars(select(UpstreamOrder)).one()
        assert row.status == "deactivated" and row.next_attempt_at is None
        assert session.scalars(select(UpstreamAuthz.status)).all() == ["deactivated"]


def test_cancel_while_the_upstream_is_down_succeeds_and_the_worker_deactivates_later(
    acme_service: Service, pebble: Pebble, tmp_path: Path
) -> None:
    service = acme_service
    cert_id = _place(service)["certId"]
    service.work()
    # The upstream hangs up: the worker's step fails and backs off; the cancel still succeeds.
    upstream = service.ctx.upstreams["pebble"]
    service.ctx.upstreams["pebble"] = replace(upstream, directory="https://127.0.0.1:9/dir")
    service.ctx.upstream_clients.forget("pebble")
    answer = service.call("cancel", certId=cert_id, reason="not needed")
    assert answer["code"] == 1, answer
    assert service.balance() == 100_00  # refunded at once
    service.work()
    with service.ctx.db.read() as session:
        row = session.scalars(select(UpstreamOrder)).one()
        assert row.status == "deactivating" and row.last_problem
        authz_url = session.scalars(select(UpstreamAuthz.url)).one()
    # Back: the next due step finishes the deactivation.
    service.ctx.upstreams["pebble"] = upstream
    service.ctx.upstream_clients.forget("pebble")
    service.advance(upstream_orders.BACKOFF_MAX)
    service.work()
    assert _client(service).authorization(authz_url).status == "deactivated"


def test_cancel_racing_the_finalize_revokes_the_certificate_issued_upstream(
    acme_service: Service, pebble: Pebble
) -> None:
    service = acme_service
    cert_id = _place(service)["certId"]
    service.work()
    _publish(service, service.call("collect", certId=cert_id)["data"])
    # Passes until the finalize was sent (the upstream order processing or valid), one pass
    # before the download.
    for _ in range(60):
        service.advance(upstream_orders.POLL_DELAY)
        service.work()
        with service.ctx.db.read() as session:
            status = session.scalars(select(UpstreamOrder.status)).one()
        if status in ("processing", "valid"):
            break
        time.sleep(0.05)
    assert status in ("processing", "valid"), status
    answer = service.call("cancel", certId=cert_id, reason="not needed")
    assert answer["code"] == 1, answer
    _work_passes(service, 5)
    with service.ctx.db.read() as session:
        row = session.scalars(select(UpstreamOrder)).one()
        assert row.status == "deactivated" and row.certificate_url is not None
    assert _certificates(service) == 0  # never stored as the order's certificate
    assert service.call("collect", certId=cert_id)["status"] == "CANCELLED"
    assert pebble.log().count("Issued certificate serial") == 1
    with service.ctx.db.read() as session:
        [payload] = session.scalars(
            select(Event.payload).where(Event.type == "upstream.certificate_revoked")
        ).all()
    status_at_pebble = pebble.cert_status(payload["serial"])
    assert status_at_pebble["Status"] == "Revoked" and status_at_pebble["Reason"] == 5


def _work_passes(service: Service, passes: int = 3) -> None:
    for _ in range(passes):
        service.advance(upstream_orders.POLL_DELAY)
        service.work()
        time.sleep(0.05)


def test_an_authz_another_reseller_proved_is_not_accepted_until_this_one_proves_it(
    reusing_dns_service: Service,
) -> None:
    """The upstream account is shared: Pebble hands account B the valid authzs account A's
    customers proved. B's orders complete only after B's own file / B's own CNAME label."""
    service = reusing_dns_service
    b_id, b_token = service.new_account("reseller-b")
    service.topup(500, account_id=b_id)

    # http-01: A proves the name with its file, which stays published.
    _cert_a, _serial = _issued(service)
    a_token = service.call("collect", certId=_cert_a)["data"]["DCVfileName"]
    placed = service.call("place", token=b_token, productCode=PRODUCT, years="1", params=PARAMS)
    assert placed["code"] == 1, placed
    cert_b = placed["data"]["certId"]
    _work_passes(service)
    shown = service.call("collect", token=b_token, certId=cert_b)
    row = shown["data"]["dcvList"][0]
    assert shown["status"] == "PENDING" and row["is_verify"] == ""
    b_file = shown["data"]["DCVfileName"]
    assert b_file and b_file != a_token  # B's own file, not the one A's customer published
    assert f"acme-challenge/{b_file}" in row["lastError"]
    with service.ctx.db.read() as session:
        assert session.scalars(select(UpstreamOrder.finalize_sent_at)).all()[-1] is None
    _publish(service, shown["data"])
    service.advance(upstream_orders.BACKOFF_MAX)
    for _ in range(20):
        _work_passes(service, 1)
        done = service.call("collect", token=b_token, certId=cert_b)
        if done["status"] == "COMPLETE":
            break
    assert done["status"] == "COMPLETE", done
    assert done["data"]["dcvList"][0]["verifiedBy"] == "upstream-reuse"

    # dns-01: A's CNAME points to A's label; B's label differs and B waits for it.
    base = "tenant-x.example.com"
    record = f"_acme-challenge.{base}"
    first = _place_dns(service, base)
    service.dns_server.set_cname(record, first["DCVdnsValue"])
    try:
        _work_until(service, first["certId"], "COMPLETE")
        params = {
            "server": "nginx",
            "domainInfo": [{"domainName": base, "dcvMethod": "CNAME_CSR_HASH"}],
        }
        placed = service.call(
            "place", token=b_token, productCode=WILD_PRODUCT, years="1", params=params
        )
        assert placed["code"] == 1, placed
        cert_b2, b_target = placed["data"]["certId"], placed["data"]["DCVdnsValue"]
        assert b_target != first["DCVdnsValue"]
        _work_passes(service)
        shown = service.call("collect", token=b_token, certId=cert_b2)
        row = shown["data"]["dcvList"][0]
        assert shown["status"] == "PENDING" and row["is_verify"] == ""
        assert f"it must point directly to {b_target}" in row["lastError"]

        service.dns_server.set_cname(record, b_target)
        service.advance(upstream_orders.BACKOFF_MAX)
        for _ in range(20):
            _work_passes(service, 1)
            done = service.call("collect", token=b_token, certId=cert_b2)
            if done["status"] == "COMPLETE":
                break
        assert done["status"] == "COMPLETE", done
        assert done["data"]["dcvList"][0]["verifiedBy"] == "upstream-reuse"
    finally:
        service.dns_server.clear_cname(record)


def test_caa_refusing_the_upstream_answers_nothing_until_fixed(
    acme_service: Service, pebble: Pebble, tmp_path: Path
) -> None:
    service = acme_service
    # RFC 8659: only another CA may issue; the upstream's identity is pebble.letsencrypt.org.
    service.dns_server.add_caa(NAME, ("issue", "other-ca.example"))
    try:
        cert_id = _place(service)["certId"]
        service.work()
        shown = service.call("collect", certId=cert_id)["data"]
        _publish(service, shown)  # the file is right: only CAA stands in the way
        _work_passes(service)
        row = service.call("collect", certId=cert_id)["data"]["dcvList"][0]
        assert row["is_verify"] == ""
        assert row["lastError"].startswith("CAA: ")
        assert "other-ca.example" in row["lastError"] or "not authorized" in row["lastError"]
        assert _answered(service) == [None]
        with service.ctx.db.read() as session:
            authz_url = session.scalars(select(UpstreamAuthz.url)).one()
        assert _client(service).authorization(authz_url).status == "pending"
        assert "Pulled token" not in pebble.log()

        service.dns_server.clear_caa(NAME)
        service.dns_server.add_caa(NAME, ("issue", "pebble.letsencrypt.org"))
        service.advance(upstream_orders.BACKOFF_MAX)
        done = _work_until(service, cert_id, "COMPLETE")["data"]
        _verify_chain(tmp_path, pebble, done)
    finally:
        service.dns_server.clear_caa(NAME)


def test_caa_issuewild_refusal_stops_a_dns01_wildcard_before_publication(
    dns_service: Service,
) -> None:
    service = dns_service
    base = "caa-wild.example.com"
    record = f"_acme-challenge.{base}"
    service.dns_server.add_caa(base, ("issue", "pebble.letsencrypt.org"), ("issuewild", ";"))
    data = _place_dns(service, f"*.{base}")
    service.dns_server.set_cname(record, data["DCVdnsValue"])
    try:
        _work_passes(service)
        row = service.call("collect", certId=data["certId"])["data"]["dcvList"][0]
        assert row["is_verify"] == "" and row["lastError"].startswith("CAA: ")
        assert _answered(service) == [None]
        assert _txt_at(service, data["DCVdnsValue"]) == set()  # nothing published either
    finally:
        service.dns_server.clear_cname(record)
        service.dns_server.clear_caa(base)
