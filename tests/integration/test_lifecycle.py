"""reissue, replace, renew, revoke, list, certPath, and multi-year subscriptions over time."""

from __future__ import annotations

import io
import itertools
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import select

from certbroker.issuance.validity import max_leaf_validity
from certbroker.pki.csr import build_csr
from certbroker.pki.keys import generate_private_key
from certbroker.store.models import Certificate, Order
from tests.conftest import Service

NAME = "shop.example.com"
PARAMS = {"server": "nginx", "domainInfo": [{"domainName": NAME, "dcvMethod": "HTTP_CSR_HASH"}]}


def issue(service: Service, years: int = 1, **params: Any) -> dict[str, Any]:
    service.topup(500)
    placed = service.call(
        "place", productCode="comodo-ssl", years=years, params={**PARAMS, **params}
    )
    assert placed["code"] == 1, placed
    service.publish(placed["data"])
    service.work()
    done = service.call("collect", certId=placed["data"]["certId"])
    assert done["status"] == "COMPLETE", done
    data: dict[str, Any] = done["data"]
    return data


def test_reissue_gives_a_new_cert_id_same_due_date_no_charge(service: Service) -> None:
    first = issue(service)
    balance = service.balance()
    result = service.call("reissue", certId=first["certId"], reason="key lost")
    assert result["code"] == 1, result
    new_id = result["data"]["certId"]
    assert new_id != first["certId"]
    assert service.call("collect", certId=first["certId"])["status"] == "REISSUED"
    # A new key was made, so the DCV file changes; the earlier validation is reused anyway.
    assert result["data"]["DCVfileName"] != first["DCVfileName"]
    service.work()
    second = service.call("collect", certId=new_id)
    assert second["status"] == "COMPLETE"
    assert second["data"]["dueDate"] == first["dueDate"]
    assert second["data"]["dcvList"][0]["reused"] is True
    assert second["data"]["privateKey"] != first["privateKey"]
    assert service.balance() == balance
    again = service.call("reissue", certId=first["certId"], reason="again")
    assert again["code"] == -7 and "REISSUED" in again["errors"]


def test_reissue_with_a_csr_for_other_names_is_refused(service: Service) -> None:
    first = issue(service)
    csr = build_csr(generate_private_key("ec256"), ["other.example.com"]).pem
    result = service.call("reissue", certId=first["certId"], reason="x", csr=csr)
    assert result["code"] == -1 and "other.example.com" in result["errors"]["csr"][0]
    assert service.call("collect", certId=first["certId"])["status"] == "COMPLETE"


def test_reissue_ref_id_retry_returns_the_same_new_order(service: Service) -> None:
    first = issue(service)
    one = service.call("reissue", certId=first["certId"], reason="x", refId="RE-1")
    two = service.call("reissue", certId=first["certId"], reason="x", refId="RE-1")
    assert one["code"] == two["code"] == 1
    assert one["data"]["certId"] == two["data"]["certId"]


def test_replace_changes_names_within_what_was_paid(service: Service) -> None:
    first = issue(service)
    csr = build_csr(generate_private_key("ec256"), ["www.example.com"]).pem
    params = {
        "csr": csr,
        "domainInfo": [{"domainName": "www.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
    }
    result = service.call("replace", certId=first["certId"], params=params)
    assert result["code"] == 1, result
    new_id = result["data"]["certId"]
    assert service.call("collect", certId=first["certId"])["status"] == "REISSUED"
    service.publish(result["data"])
    service.work()
    done = service.call("collect", certId=new_id)
    assert done["status"] == "COMPLETE"
    leaf = x509.load_pem_x509_certificate(done["data"]["certificate"].encode())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["www.example.com"]
    too_many = {
        "csr": csr,
        "domainInfo": [
            {"domainName": "www.example.com", "dcvMethod": "HTTP_CSR_HASH"},
            {"domainName": "api.example.com", "dcvMethod": "HTTP_CSR_HASH"},
        ],
    }
    refused = service.call("replace", certId=new_id, params=too_many)
    assert refused["code"] == -1


def test_revoke_marks_the_certificate_and_lists_reason(service: Service) -> None:
    first = issue(service)
    bad = service.call("revoke", certId=first["certId"], reason="certificateHold")
    assert bad["code"] == -1 and "BR 7.2.2" in bad["errors"]["reason"][0]
    assert service.call("revoke", certId=first["certId"], reason="keyCompromise")["code"] == 1
    assert service.call("collect", certId=first["certId"])["status"] == "REVOKED"
    with service.ctx.db.transaction() as session:
        cert = session.scalars(select(Certificate)).one()
        assert cert.revocation_reason == 1 and cert.revoked_at is not None
    again = service.call("revoke", certId=first["certId"])
    assert again["code"] == -7


def test_renew_within_90_days_carries_the_remaining_time(service: Service) -> None:
    first = issue(service)
    early = service.call("renew", renewId=first["certId"], years=1, params=PARAMS)
    assert early["code"] == -7 and "90 days" in early["errors"]
    service.advance(timedelta(days=365 - 60))
    balance = service.balance()
    renewed = service.call("renew", renewId=first["certId"], years=1, refId="R", params=PARAMS)
    assert renewed["code"] == 1, renewed
    assert service.balance() == balance - 12_00
    twice = service.call("renew", renewId=first["certId"], years=1, params=PARAMS)
    assert twice["code"] == -7 and "already renewed" in twice["errors"]
    service.publish(renewed["data"])
    service.work()
    done = service.call("collect", certId=renewed["data"]["certId"])["data"]
    due = datetime.strptime(done["dueDate"], "%Y-%m-%d %H:%M:%S")
    start = datetime.strptime(done["applyTime"], "%Y-%m-%d %H:%M:%S")
    assert due - start >= timedelta(days=365 + 59), "the 60 remaining days were carried over"


def test_list_pages_and_filters(service: Service) -> None:
    service.topup(500)
    for i in range(5):
        params = {
            "server": "nginx",
            "domainInfo": [{"domainName": f"n{i}.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
        }
        assert service.call("place", productCode="comodo-ssl", years=1, params=params)["code"] == 1
    page = service.call("list", page=1, pageSize=2)
    assert page["code"] == 1 and len(page["data"]) == 2 and page["total"] == 5
    row = page["data"][0]
    assert row["commonName"] == "n4.example.com" and row["period"] == "1year"
    assert row["brand"] == "Sectigo" and row["amount"] == "12.00" and row["status"] == "PENDING"
    last = service.call("list", page=3, pageSize=2)
    assert [r["commonName"] for r in last["data"]] == ["n0.example.com"]
    by_domain = service.call("list", domain="example.com")
    assert by_domain["total"] == 5
    one = service.call("list", domain="n2.example.com")
    assert [r["commonName"] for r in one["data"]] == ["n2.example.com"]
    assert service.call("list", status="COMPLETE")["total"] == 0
    day = service.clock.now().astimezone(UTC) + timedelta(hours=8)
    assert service.call("list", startDate=f"{day:%Y-%m-%d}")["total"] == 5
    assert service.call("list", startDate="2030-01-01")["total"] == 0
    assert service.call("list", status="NOPE")["code"] == -1
    assert service.call("list", pageSize=1000)["code"] == -1
    _other, token = service.new_account("other")
    assert service.call("list", token=token)["total"] == 0


def test_cert_path_zip_has_a_folder_per_server(service: Service) -> None:
    data = issue(service)
    url = data["certPath"]
    assert url.startswith("http://certbroker.example.com/download/") and url.endswith(".zip")
    response = service.client.get(url.replace("http://certbroker.example.com", ""))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    names = set(zipfile.ZipFile(io.BytesIO(response.content)).namelist())
    cert_id = data["certId"]
    assert {
        f"nginx/{cert_id}.fullchain.pem",
        f"nginx/{cert_id}.key",
        f"apache/{cert_id}.crt",
        f"apache/{cert_id}.ca-bundle",
        f"apache/{cert_id}.key",
        f"iis/{cert_id}.pfx",
        "iis/password.txt",
        f"tomcat/{cert_id}.jks",
        "tomcat/password.txt",
    } <= names
    forged = service.client.get("/download/AAAA.zip")
    assert forged.status_code == 404
    service.advance(timedelta(days=2))
    assert service.client.get(url.replace("http://certbroker.example.com", "")).status_code == 404


def test_customer_csr_orders_have_no_cert_path(service: Service) -> None:
    csr = build_csr(generate_private_key("ec256"), [NAME]).pem
    data = issue(service, csr=csr)
    assert data["certPath"] == ""


def test_three_year_subscription_is_reissued_until_its_due_date(service: Service) -> None:
    """Issue 4: a 3-year order issued 2026-12-01 — each certificate within the maximum of its own
    issue date, no gap, the last ending by dueDate, DCV re-run when reuse lapsed."""
    service.clock.set(datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    first = issue(service, years=3)
    cert_id = first["certId"]
    due = datetime.strptime(first["dueDate"], "%Y-%m-%d %H:%M:%S")
    revalidations = 0
    for _ in range(400):
        with service.ctx.db.transaction() as session:
            order = session.scalars(select(Order).where(Order.cert_id == cert_id)).one()
            next_due = order.renew_due_at
        if next_due is None:
            if service.clock.now() >= due.replace(tzinfo=UTC) - timedelta(days=1):
                break
            service.advance(timedelta(hours=6))  # waiting for a re-validation to pass
        else:
            service.clock.set(max(next_due, service.clock.now()))
        before = service.call("collect", certId=cert_id)["data"]["dcvList"][0]["lastCheckTime"]
        service.work()
        after = service.call("collect", certId=cert_id)["data"]["dcvList"][0]["lastCheckTime"]
        revalidations += before != after
    with service.ctx.db.transaction() as session:
        order = session.scalars(select(Order).where(Order.cert_id == cert_id)).one()
        certs = session.scalars(
            select(Certificate)
            .where(Certificate.order_id == order.id)
            .order_by(Certificate.generation)
        ).all()
        assert order.status == "COMPLETE"
    assert all(c.state == "issued" for c in certs)
    assert len(certs) >= 10  # 199 days, then 100-day certificates, then 47-day ones
    for cert in certs:
        assert cert.pem is not None
        signed = x509.load_pem_x509_certificate(cert.pem.encode())
        assert (signed.not_valid_before_utc, signed.not_valid_after_utc) == (
            cert.not_before,
            cert.not_after,
        )
        issued_at = cert.issued_at
        assert issued_at is not None
        assert cert.not_after - cert.not_before < max_leaf_validity(issued_at)
    for earlier, later in itertools.pairwise(certs):
        assert later.not_before <= earlier.not_after, "no gap"
    assert certs[-1].not_after == order.due_at
    assert revalidations >= 3, "validation older than the reuse period was checked again"
    newest = service.call("collect", certId=cert_id)["data"]
    assert newest["serialNumber"] == certs[-1].serial_hex
    assert [c["serialNumber"] for c in newest["certificateHistory"]] == [
        c.serial_hex for c in certs]


@pytest.mark.parametrize(
    "operation",
    [
        "reissue",
        "replace",
        "renew",
        "revoke",
        "cancel",
        "updateDCV",
        "batchUpdateDCV",
        "removeMdcDomain",
        "batchRemoveMdcDomain",
    ],
)
def test_every_operation_in_a_wrong_state_is_refused_and_changes_nothing(
    service: Service, operation: str
) -> None:
    service.topup(1000)
    multi = {
        "server": "nginx",
        "domainInfo": [
            {"domainName": "a.example.com", "dcvMethod": "HTTP_CSR_HASH"},
            {"domainName": "b.example.com", "dcvMethod": "HTTP_CSR_HASH"},
        ],
    }
    orders: dict[str, str] = {}
    pending = service.call("place", productCode="sectigo-multi-domain", years=1, params=multi)
    orders["PENDING"] = pending["data"]["certId"]
    for status in ("COMPLETE", "CANCELLED", "REVOKED", "REISSUED", "FAILED", "EXPIRED"):
        placed = service.call(
            "place", productCode="sectigo-multi-domain", years=1, refId=status, params=multi
        )
        orders[status] = placed["data"]["certId"]
    service.publish(pending["data"])
    for status in ("COMPLETE", "CANCELLED", "REVOKED", "REISSUED", "FAILED", "EXPIRED"):
        service.call(
            "updateDCV",
            certId=orders[status],
            domainName="a.example.com",
            dcvMethod="HTTP_CSR_HASH",
        )
    with service.ctx.db.transaction() as session:
        for status in ("COMPLETE", "CANCELLED", "REVOKED", "REISSUED", "FAILED", "EXPIRED"):
            order = session.scalars(select(Order).where(Order.cert_id == orders[status])).one()
            order.status = status
    allowed = {
        "reissue": {"COMPLETE"},
        "replace": {"COMPLETE"},
        "renew": {"COMPLETE", "EXPIRED"},
        "revoke": {"COMPLETE", "REISSUED"},
        "cancel": {"PENDING", "COMPLETE"},
        "updateDCV": {"PENDING"},
        "batchUpdateDCV": {"PENDING"},
        "removeMdcDomain": {"PENDING"},
        "batchRemoveMdcDomain": {"PENDING"},
    }[operation]
    for status, cert_id in orders.items():
        if status in allowed:
            continue
        before = snapshot(service)
        fields: dict[str, Any] = {
            "certId": cert_id,
            "reason": "x",
            "domainName": "a.example.com",
            "dcvMethod": "HTTP_CSR_HASH",
            "params": multi,
            "years": 1,
        }
        if operation == "renew":
            fields = {"renewId": cert_id, "years": 1, "params": multi}
        result = service.call(operation, **fields)
        expected = -8 if (operation, status) == ("cancel", "CANCELLED") else -7
        assert result["code"] == expected, (operation, status, result)
        assert status in str(result["errors"]) or expected == -8
        assert snapshot(service) == before, (operation, status)


def snapshot(service: Service) -> tuple[object, ...]:
    with service.ctx.db.transaction() as session:
        orders = session.execute(select(Order.cert_id, Order.status, Order.updated_at)).all()
        certs = session.execute(select(Certificate.serial_hex, Certificate.revoked_at)).all()
    return (sorted(orders), sorted(certs), service.counts(), service.balance())


def test_a_failed_reissue_refunds_nothing_and_reinstates_the_old_certificate(
    service: Service,
) -> None:
    first = issue(service)
    balance = service.balance()
    # A replacement for a name that is never validated: its validation window ends.
    csr = build_csr(generate_private_key("ec256"), ["www.example.com"]).pem
    params = {
        "csr": csr,
        "domainInfo": [{"domainName": "www.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
    }
    child = service.call("replace", certId=first["certId"], params=params)
    assert child["code"] == 1, child
    assert service.call("collect", certId=first["certId"])["status"] == "REISSUED"
    service.advance(timedelta(days=31))
    service.work()
    assert service.call("collect", certId=child["data"]["certId"])["status"] == "FAILED"
    assert service.call("collect", certId=first["certId"])["status"] == "COMPLETE"
    assert service.balance() == balance, "a free reissue refunds nothing"


def test_cancelling_a_reissue_refunds_the_purchase_once(service: Service) -> None:
    first = issue(service)
    paid = service.balance()
    child = service.call("reissue", certId=first["certId"], reason="x")
    service.work()
    assert service.call("cancel", certId=child["data"]["certId"], reason="done")["code"] == 1
    assert service.balance() == paid + 12_00
    with service.ctx.db.transaction() as session:
        live = session.scalars(select(Certificate).where(Certificate.revoked_at.is_(None))).all()
    assert live == [], "every certificate of the purchase is revoked"
