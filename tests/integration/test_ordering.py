"""place → DCV over real HTTP and DNS → issuance → collect, in-process with a controlled clock."""

from __future__ import annotations

import contextlib
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from certbroker.pki.csr import build_csr
from certbroker.pki.keys import generate_private_key, load_private_key_pem, public_key_matches
from tests.conftest import Service

DV_PARAMS = {
    "server": "nginx",
    "domainInfo": [{"domainName": "shop.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
}


def csr_for(*names: str, spec: str = "ec256") -> str:
    return build_csr(generate_private_key(spec), list(names)).pem


def test_place_with_client_csr_issues_after_the_file_is_published(service: Service) -> None:
    service.topup(100)
    csr = csr_for("shop.example.com")
    placed = service.call(
        "place", productCode="comodo-ssl", years="1", params={**DV_PARAMS, "csr": csr}
    )
    assert placed["code"] == 1, placed
    data = placed["data"]
    assert data["DCVfilePath"].endswith("/.well-known/pki-validation/" + data["DCVfileName"])
    assert service.balance() == 100_00 - 12_00

    # Not published yet: the check fails with the exact URL and status, and is retried later.
    service.work()
    pending = service.call("collect", certId=data["certId"])
    assert pending["status"] == "PENDING"
    row = pending["data"]["dcvList"][0]
    assert row["is_verify"] == ""
    assert "404" in row["lastError"] and data["DCVfileName"] in row["lastError"]
    assert pending["data"]["dcv"]["status"] == "processing"

    service.publish(data)
    assert service.work() == 0, "the next check waits for its back-off"
    service.advance(timedelta(minutes=1))
    service.work()
    done = service.call("collect", certId=data["certId"])
    assert done["status"] == "COMPLETE", done
    issued = done["data"]
    assert issued["dcvList"][0]["is_verify"] == "verified"
    assert issued["issued"]["status"] == "done"
    assert "privateKey" not in issued and "pkcs12" not in issued  # the customer holds the key
    leaf = x509.load_pem_x509_certificate(issued["certificate"].encode())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["shop.example.com"]
    assert public_key_matches_csr(leaf, csr)
    assert issued["beginDate"] < issued["endDate"] <= issued["dueDate"]
    assert issued["applyParams"]["csr"].strip() == csr.strip()


def public_key_matches_csr(leaf: x509.Certificate, csr_pem: str) -> bool:
    return leaf.public_key() == x509.load_pem_x509_csr(csr_pem.encode()).public_key()


def test_place_without_csr_generates_key_and_bundles(service: Service) -> None:
    service.topup(100)
    params = {
        "server": "tomcat",
        "domainInfo": [
            {"domainName": "a.example.com", "dcvMethod": "HTTP_CSR_HASH"},
            {"domainName": "b.example.com", "dcvMethod": "HTTP_CSR_HASH"},
        ],
    }
    placed = service.call("place", productCode="sectigo-multi-domain", years=1, params=params)
    assert placed["code"] == 1, placed
    service.publish(placed["data"])
    service.work()
    done = service.call("collect", certId=placed["data"]["certId"])
    assert done["status"] == "COMPLETE", done["data"]["dcvList"]
    data = done["data"]
    key = load_private_key_pem(data["privateKey"])
    leaf = x509.load_pem_x509_certificate(data["certificate"].encode())
    assert public_key_matches(key, leaf.public_key())
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048  # the default key type
    assert data["pkcsPass"] and data["jksPass"] and data["pkcs12"] and data["jks"]
    csr = x509.load_pem_x509_csr(data["applyParams"]["csr"].encode())
    assert csr.public_key() == leaf.public_key()


def test_ov_order_waits_for_the_operator_and_carries_the_organization(service: Service) -> None:
    from certbroker.orders.cancelling import approve_organization

    service.topup(500)
    contact = {
        "organation": "Example Ltd",
        "address": "1 Main St",
        "city": "Berlin",
        "state": "Berlin",
        "postCode": "10115",
        "country": "DE",
        "firstName": "Ann",
        "lastName": "Lee",
        "email": "ann@example.com",
        "mobile": "+49301234567",
    }
    params = {
        **DV_PARAMS,
        "csr": csr_for("shop.example.com"),
        "organizationInfo": {
            "organizationName": "Example Ltd",
            "organizationAddress": "1 Main St",
            "organizationCity": "Berlin",
            "organizationCountry": "DE",
            "organizationPostCode": "10115",
            "organizationMobile": "+49301234567",
            "organizationState": "Berlin",
        },
        "Administrator": contact,
        "tech": contact,
        "finance": contact,
    }
    placed = service.call("place", productCode="sectigo-ov", years=1, params=params)
    assert placed["code"] == 1, placed
    service.publish(placed["data"])
    service.work()
    waiting = service.call("collect", certId=placed["data"]["certId"])
    assert waiting["status"] == "PENDING"
    assert waiting["data"]["dcv"]["status"] == "done"
    assert waiting["data"]["ov"]["status"] == "processing"

    approve_organization(service.ctx, placed["data"]["certId"], "documents checked")
    service.work()
    done = service.call("collect", certId=placed["data"]["certId"])
    assert done["status"] == "COMPLETE"
    assert done["data"]["ov"]["status"] == "done"
    leaf = x509.load_pem_x509_certificate(done["data"]["certificate"].encode())
    assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Example Ltd"
    assert leaf.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "DE"
    policies = leaf.extensions.get_extension_for_class(x509.CertificatePolicies).value
    assert "2.23.140.1.2.2" in [p.policy_identifier.dotted_string for p in policies]


def test_ov_rejection_fails_and_refunds(service: Service) -> None:
    from certbroker.orders.cancelling import reject_organization

    service.topup(500)
    contact = {
        "organation": "Example Ltd",
        "address": "1 Main St",
        "city": "Berlin",
        "state": "Berlin",
        "postCode": "10115",
        "country": "DE",
    }
    params = {
        **DV_PARAMS,
        "organizationInfo": {
            "organizationName": "Example Ltd",
            "organizationAddress": "1 Main",
            "organizationCity": "Berlin",
            "organizationCountry": "DE",
            "organizationPostCode": "10115",
            "organizationMobile": "+4930",
        },
        "Administrator": contact,
        "tech": contact,
        "finance": contact,
    }
    placed = service.call("place", productCode="sectigo-ov", years=1, params=params)
    assert placed["code"] == 1, placed
    assert service.balance() < 500_00
    reject_organization(service.ctx, placed["data"]["certId"], "company not found in registry")
    failed = service.call("collect", certId=placed["data"]["certId"])
    assert failed["status"] == "FAILED"
    assert failed["data"]["ov"]["status"] == "failed"
    assert "registry" in failed["data"]["failureReason"]
    assert service.balance() == 500_00


def test_sandbox_account_issues_without_a_file_from_the_sandbox_ca(service: Service) -> None:
    account_id, token = service.new_account("integrator", sandbox=True)
    service.topup(50, account_id)
    placed = service.call(
        "place",
        token=token,
        productCode="comodo-ssl",
        years=1,
        params={**DV_PARAMS, "csr": csr_for("shop.example.com")},
    )
    assert placed["code"] == 1, placed
    service.work()
    done = service.call("collect", token=token, certId=placed["data"]["certId"])
    assert done["status"] == "COMPLETE"
    assert service.site.requests == [], "sandbox orders fetch nothing"
    leaf = x509.load_pem_x509_certificate(done["data"]["certificate"].encode())
    issuer_cn = leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert "SANDBOX" in str(issuer_cn)
    # Nothing that trusts the production root accepts a sandbox certificate.
    ca_dir = service.ctx.ca.issuer(sandbox=False).root_pem
    at = int(service.clock.now().timestamp())
    refused = openssl_verify_output(done["data"], ca_dir, at)
    assert "unable to get local issuer certificate" in refused, refused
    sandbox_root = service.ctx.ca.issuer(sandbox=True).root_pem
    assert openssl_verify_output(done["data"], sandbox_root, at).strip().endswith("OK")


def openssl_verify_output(data: dict[str, str], root_pem: str, at: int) -> str:
    import subprocess
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, pem in (
            ("root", root_pem),
            ("chain", data["caCertificate"]),
            ("leaf", data["certificate"]),
        ):
            paths[name] = Path(tmp) / f"{name}.pem"
            paths[name].write_text(pem)
        result = subprocess.run(
            [
                "openssl",
                "verify",
                "-attime",
                str(at),
                "-CAfile",
                str(paths["root"]),
                "-untrusted",
                str(paths["chain"]),
                str(paths["leaf"]),
            ],
            capture_output=True,
            text=True,
        )
        return result.stdout + result.stderr


def test_cancel_pending_refunds_and_second_cancel_is_minus_8(service: Service) -> None:
    service.topup(100)
    placed = service.call("place", productCode="comodo-ssl", years=2, params=DV_PARAMS)
    assert placed["code"] == 1
    assert service.balance() < 100_00
    cert_id = placed["data"]["certId"]
    assert service.call("cancel", certId=cert_id, reason="changed my mind")["code"] == 1
    assert service.balance() == 100_00
    assert service.call("collect", certId=cert_id)["status"] == "CANCELLED"
    again = service.call("cancel", certId=cert_id, reason="again")
    assert again["code"] == -8
    assert service.balance() == 100_00


def test_cancel_issued_within_30_days_revokes_and_refunds_later_is_refused(
    service: Service,
) -> None:
    from sqlalchemy import select

    from certbroker.store.models import Certificate

    service.topup(100)
    first = service.call(
        "place",
        productCode="comodo-ssl",
        years=1,
        params={**DV_PARAMS, "csr": csr_for("shop.example.com")},
    )
    second = service.call(
        "place",
        productCode="comodo-ssl",
        years=1,
        refId="second",
        params={**DV_PARAMS, "csr": csr_for("shop.example.com")},
    )
    for placed in (first, second):
        service.publish(placed["data"])
    service.work()
    service.advance(timedelta(days=29))
    assert service.call("cancel", certId=first["data"]["certId"], reason="x")["code"] == 1
    with service.ctx.db.transaction() as session:
        revoked = session.scalars(
            select(Certificate).where(Certificate.revoked_at.is_not(None))
        ).all()
        assert len(revoked) == 1 and revoked[0].revocation_reason == 5
    service.advance(timedelta(days=2))
    late = service.call("cancel", certId=second["data"]["certId"], reason="x")
    assert late["code"] == -7 and "30 days" in late["errors"]
    assert service.call("collect", certId=second["data"]["certId"])["status"] == "COMPLETE"
    assert service.balance() == 100_00 - 12_00


def test_validation_window_end_fails_and_refunds_once(service: Service) -> None:
    service.topup(100)
    placed = service.call("place", productCode="comodo-ssl", years=1, params=DV_PARAMS)
    service.advance(timedelta(days=31))
    service.work()
    service.work()
    assert service.call("collect", certId=placed["data"]["certId"])["status"] == "FAILED"
    assert service.balance() == 100_00


def test_dcv_retries_follow_the_back_off(service: Service) -> None:
    service.topup(100)
    placed = service.call("place", productCode="comodo-ssl", years=1, params=DV_PARAMS)
    cert_id = placed["data"]["certId"]
    delays = [timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1)]
    service.work()
    for delay in delays:
        assert service.work() == 0
        service.advance(delay - timedelta(seconds=1))
        assert service.work() == 0, f"checked before {delay}"
        service.advance(timedelta(seconds=1))
        assert service.work() == 1, f"not checked after {delay}"
    dcv_row = service.call("collect", certId=cert_id)["data"]["dcvList"][0]
    assert dcv_row["lastError"].startswith("HTTP 404")


def test_wrong_content_is_reported_then_fixed(service: Service) -> None:
    service.topup(100)
    placed = service.call("place", productCode="comodo-ssl", years=1, params=DV_PARAMS)
    data = placed["data"]
    service.site.serve_file(data["DCVfileName"], "0" * 64 + "\nsectigo.com\n")
    service.work()
    error = service.call("collect", certId=data["certId"])["data"]["dcvList"][0]["lastError"]
    assert "content" in error.lower()
    service.publish(data)
    service.advance(timedelta(minutes=1))
    service.work()
    assert service.call("collect", certId=data["certId"])["status"] == "COMPLETE"


def test_cert_id_by_ref_id_and_dcv_email(service: Service) -> None:
    service.topup(100)
    placed = service.call(
        "place", productCode="comodo-ssl", years=1, refId="INV-7", params=DV_PARAMS
    )
    found = service.call("certIdByrefId", refId="INV-7")
    assert found == {"code": 1, "data": {"certId": placed["data"]["certId"]}}
    assert service.call("certIdByrefId", refId="nope")["code"] == -1
    emails = service.call("DCVemail", domainName="shop.example.com")["data"]["emails"]
    assert "admin@shop.example.com" in emails and "postmaster@example.com" in emails
    assert len(emails) == 10


def test_crashed_issuance_is_finished_with_the_same_serial(service: Service) -> None:
    """Crash after the serial was stored, before the result was: one certificate, same serial."""
    from sqlalchemy import select

    from certbroker.orders import issuing
    from certbroker.store.models import Certificate, Order

    service.topup(100)
    placed = service.call(
        "place",
        productCode="comodo-ssl",
        years=1,
        params={**DV_PARAMS, "csr": csr_for("shop.example.com")},
    )
    service.publish(placed["data"])
    original_sign = service.ctx.ca.sign

    def crash(*_args: object) -> None:
        raise RuntimeError("power cut")

    service.ctx.ca.sign = crash  # type: ignore[method-assign,assignment]
    with contextlib.suppress(RuntimeError):
        service.work()
    service.ctx.ca.sign = original_sign  # type: ignore[method-assign]
    with service.ctx.db.transaction() as session:
        signing = session.scalars(select(Certificate)).all()
        assert [c.state for c in signing] == ["signing"]
        serial = signing[0].serial_hex
        order = session.scalars(select(Order)).one()
        assert order.status == "PENDING"
    service.advance(issuing_lease())
    service.work()
    with service.ctx.db.transaction() as session:
        certs = session.scalars(select(Certificate)).all()
        assert [(c.state, c.serial_hex) for c in certs] == [("issued", serial)]
    assert service.call("collect", certId=placed["data"]["certId"])["status"] == "COMPLETE"
    del issuing


def issuing_lease() -> timedelta:
    from certbroker.orders.context import Policy

    return Policy().lease + timedelta(seconds=1)
