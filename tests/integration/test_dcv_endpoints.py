"""updateDCV, batchUpdateDCV, removeMdcDomain, batchRemoveMdcDomain and validation reuse."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from cryptography import x509

from tests.conftest import Service

THREE = [
    {"domainName": "a.example.com", "dcvMethod": "HTTP_CSR_HASH"},
    {"domainName": "b.example.com", "dcvMethod": "HTTP_CSR_HASH"},
    {"domainName": "c.example.com", "dcvMethod": "HTTP_CSR_HASH"},
    {"domainName": "d.example.com", "dcvMethod": "HTTP_CSR_HASH"},
]


def place_multi(service: Service, names: list[dict[str, str]] = THREE) -> dict[str, Any]:
    service.topup(500)
    placed = service.call(
        "place",
        productCode="sectigo-multi-domain",
        years=1,
        params={"server": "nginx", "domainInfo": names},
    )
    assert placed["code"] == 1, placed
    data: dict[str, Any] = placed["data"]
    return data


def dcv_list(service: Service, cert_id: str) -> dict[str, dict[str, Any]]:
    data = service.call("collect", certId=cert_id)["data"]
    return {row["domainName"]: row for row in data["dcvList"]}


def test_update_dcv_changes_one_name_and_rechecks_now(service: Service) -> None:
    data = place_multi(service)
    service.work()  # every name fails: nothing published
    result = service.call(
        "updateDCV", certId=data["certId"], domainName="b.example.com", dcvMethod="HTTPS_CSR_HASH"
    )
    assert result["code"] == 1, result
    assert result["data"]["DCVfileName"] == data["DCVfileName"]
    rows = {r["domainName"]: r for r in result["data"]["dcvList"]}
    assert rows["b.example.com"]["dcvMethod"] == "HTTPS_CSR_HASH"
    assert rows["b.example.com"]["lastError"] == "dcvMethod set to HTTPS_CSR_HASH; check queued"
    assert service.work() == 1, "only the changed name is due now"


def test_update_dcv_refuses_bad_choices(service: Service) -> None:
    data = place_multi(service)
    cert_id = data["certId"]
    need_name = service.call("updateDCV", certId=cert_id, dcvMethod="HTTPS_CSR_HASH")
    assert need_name["errors"] == {
        "domainName": ["domainName is required for a multi-domain order"]
    }
    unknown = service.call(
        "updateDCV", certId=cert_id, domainName="z.example.com", dcvMethod="HTTPS_CSR_HASH"
    )
    assert "z.example.com is not a name of" in unknown["errors"]["domainName"][0]
    method = service.call("updateDCV", certId=cert_id, domainName="a.example.com", dcvMethod="FAX")
    assert method["code"] == -1 and "FAX" in method["errors"]["dcvMethod"][0]
    email = service.call(
        "updateDCV",
        certId=cert_id,
        domainName="a.example.com",
        dcvMethod="EMAIL",
        dcvEmail="root@evil.test",
    )
    assert email["code"] == -1 and "approver" in email["errors"]["dcvEmail"][0]
    ok = service.call(
        "updateDCV",
        certId=cert_id,
        domainName="a.example.com",
        dcvMethod="EMAIL",
        dcvEmail="admin@example.com",
    )
    assert ok["code"] == 1
    assert dcv_list(service, cert_id)["a.example.com"]["dcvEmail"] == "admin@example.com"


def test_wildcard_cannot_switch_to_a_file_method(service: Service) -> None:
    service.topup(500)
    placed = service.call(
        "place",
        productCode="comodo-wildcard-ssl-certificate",
        years=1,
        params={
            "server": "nginx",
            "domainInfo": [{"domainName": "*.example.com", "dcvMethod": "CNAME_CSR_HASH"}],
        },
    )
    assert placed["code"] == 1, placed
    result = service.call("updateDCV", certId=placed["data"]["certId"], dcvMethod="HTTP_CSR_HASH")
    assert result["code"] == -1
    assert "BR 3.2.2.4.18" in result["errors"]["dcvMethod"][0]


def test_batch_update_without_arguments_rechecks_every_pending_name(service: Service) -> None:
    data = place_multi(service)
    assert service.work() == 4
    assert service.work() == 0
    assert service.call("batchUpdateDCV", certId=data["certId"])["code"] == 1
    service.publish(data)
    assert service.work() == 5, "four checks and one issuance"
    assert service.call("collect", certId=data["certId"])["status"] == "COMPLETE"


def test_batch_update_domain_info_wins_over_dcv_method(service: Service) -> None:
    data = place_multi(service)
    result = service.call(
        "batchUpdateDCV",
        certId=data["certId"],
        dcvMethod="HTTPS_CSR_HASH",
        domainInfo=[{"domainName": "c.example.com", "dcvMethod": "CNAME_CSR_HASH"}],
    )
    assert result["code"] == 1, result
    rows = dcv_list(service, data["certId"])
    assert rows["c.example.com"]["dcvMethod"] == "CNAME_CSR_HASH"
    assert rows["a.example.com"]["dcvMethod"] == "HTTP_CSR_HASH"
    everything = service.call("batchUpdateDCV", certId=data["certId"], dcvMethod="HTTPS_CSR_HASH")
    assert everything["code"] == 1
    assert {r["dcvMethod"] for r in dcv_list(service, data["certId"]).values()} == {
        "HTTPS_CSR_HASH"
    }
    to_email = service.call(
        "batchUpdateDCV", certId=data["certId"], dcvMethod="EMAIL", dcvEmail="admin@example.com"
    )
    assert to_email["code"] == -1 and "EMAIL" in to_email["errors"]["dcvMethod"][0]


def test_remove_a_failing_name_lets_the_rest_issue_and_refunds_it(service: Service) -> None:
    names = [*THREE, {"domainName": "e.example.com", "dcvMethod": "HTTP_CSR_HASH"}]
    data = place_multi(service, names)
    cert_id = data["certId"]
    paid = 500_00 - service.balance()
    # Everything but e.example.com can be validated: serve the file for every other name only.
    service.site.serve_file(data["DCVfileName"], data["DCVfileContent"])
    service.dns_server.add_a("e.example.com", "192.0.2.1")  # not reachable: a documentation address
    try:
        service.work()
        rows = dcv_list(service, cert_id)
        assert rows["e.example.com"]["is_verify"] == ""
        assert "192.0.2.1" in rows["e.example.com"]["lastError"]
        assert service.call("collect", certId=cert_id)["status"] == "PENDING"
        verified = service.call("removeMdcDomain", certId=cert_id, domainName="a.example.com")
        assert verified["code"] == -1 and "validated" in verified["errors"]["domainName"][0]
        removed = service.call("removeMdcDomain", certId=cert_id, domainName="e.example.com")
        assert removed == {"code": 1, "data": {"certId": cert_id, "removed": ["e.example.com"]}}
    finally:
        service.dns_server.clear_a("e.example.com")
    service.work()
    done = service.call("collect", certId=cert_id)
    assert done["status"] == "COMPLETE"
    assert [r["domainName"] for r in done["data"]["dcvList"]] == [n["domainName"] for n in THREE]
    # 4 names are in the base price; the fifth was refunded.
    assert 500_00 - service.balance() < paid


def test_batch_remove_drops_every_failing_name(service: Service) -> None:
    data = place_multi(service)
    cert_id = data["certId"]
    all_failing = service.call("batchRemoveMdcDomain", certId=cert_id, domainName="*")
    assert all_failing["code"] == -1
    assert all_failing["errors"] == {"domainName": ["at least one name must remain on the order"]}
    service.call(
        "updateDCV", certId=cert_id, domainName="a.example.com", dcvMethod="HTTPS_CSR_HASH"
    )
    service.publish(data)
    service.work()  # a.example.com is on HTTPS, which this test's server does not speak
    removed = service.call("batchRemoveMdcDomain", certId=cert_id)
    assert removed["data"]["removed"] == ["a.example.com"]


def test_dcv_calls_need_a_pending_order(service: Service) -> None:
    service.topup(100)
    placed = service.call(
        "place",
        productCode="comodo-ssl",
        years=1,
        params={
            "server": "nginx",
            "domainInfo": [{"domainName": "shop.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
        },
    )
    cert_id = placed["data"]["certId"]
    single = service.call("removeMdcDomain", certId=cert_id, domainName="shop.example.com")
    assert single["code"] == -7 and "multi-domain" in single["errors"]
    service.publish(placed["data"])
    service.work()
    for endpoint, extra in (
        ("updateDCV", {"dcvMethod": "HTTPS_CSR_HASH"}),
        ("batchUpdateDCV", {}),
        ("removeMdcDomain", {"domainName": "shop.example.com"}),
        ("batchRemoveMdcDomain", {}),
    ):
        result = service.call(endpoint, certId=cert_id, **extra)
        assert result["code"] == -7, (endpoint, result)
        assert "COMPLETE" in result["errors"]


def test_validation_is_reused_within_the_reuse_period(service: Service) -> None:
    service.topup(100)
    params = {
        "server": "nginx",
        "domainInfo": [{"domainName": "shop.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
    }
    first = service.call("place", productCode="comodo-ssl", years=1, params=params)
    service.publish(first["data"])
    service.work()
    service.advance(timedelta(days=100))
    second = service.call("place", productCode="comodo-ssl", years=1, refId="2", params=params)
    requests_before = len(service.site.requests)
    service.work()
    done = service.call("collect", certId=second["data"]["certId"])
    assert done["status"] == "COMPLETE"
    row = done["data"]["dcvList"][0]
    assert row["reused"] is True
    assert first["data"]["certId"] in row["verifiedBy"]
    assert len(service.site.requests) == requests_before, "nothing was fetched"

    # 2027-03-15 onwards the period is 100 days: the same validation no longer counts.
    service.clock.set(service.clock.now().replace(year=2027, month=4, day=1))
    third = service.call("place", productCode="comodo-ssl", years=1, refId="3", params=params)
    service.publish(third["data"])
    service.work()
    late = service.call("collect", certId=third["data"]["certId"])["data"]["dcvList"][0]
    assert late["reused"] is False
    assert late["is_verify"] == "verified", "checked again over HTTP"
    assert len(service.site.requests) > requests_before


def test_the_base_of_a_wildcard_follows_its_method_changes(service: Service) -> None:
    service.topup(500)
    placed = service.call(
        "place",
        productCode="comodo-wildcard-ssl-certificate",
        years=1,
        params={
            "server": "nginx",
            "domainInfo": [{"domainName": "*.example.com", "dcvMethod": "CNAME_CSR_HASH"}],
        },
    )
    assert placed["code"] == 1, placed
    cert_id = placed["data"]["certId"]
    listed = service.call("collect", certId=cert_id)["data"]["dcvList"]
    assert [(d["domainName"], d["dcvMethod"]) for d in listed] == [
        ("*.example.com", "CNAME_CSR_HASH"),
        ("example.com", "CNAME_CSR_HASH"),
    ]
    # No domainName: the order has one name to choose, the wildcard; its base follows.
    changed = service.call(
        "updateDCV", certId=cert_id, dcvMethod="EMAIL", dcvEmail="admin@example.com"
    )
    assert changed["code"] == 1, changed
    listed = service.call("collect", certId=cert_id)["data"]["dcvList"]
    assert [(d["domainName"], d["dcvMethod"], d["dcvEmail"]) for d in listed] == [
        ("*.example.com", "EMAIL", "admin@example.com"),
        ("example.com", "EMAIL", "admin@example.com"),
    ]


def test_a_wildcard_and_its_base_are_validated_by_one_cname_and_issued(service: Service) -> None:
    service.topup(500)
    zone = "wild-base.example.com"
    placed = service.call(
        "place",
        productCode="comodo-wildcard-ssl-certificate",
        years=1,
        params={
            "server": "nginx",
            "domainInfo": [{"domainName": f"*.{zone}", "dcvMethod": "CNAME_CSR_HASH"}],
        },
    )
    assert placed["code"] == 1, placed
    data = placed["data"]
    # _<md5>.<base> -> <sha>.<ca domain>: one record proves both names (BR 3.2.2.4.7).
    service.dns_server.set_cname(f"{data['DCVdnsHost']}.{zone}", data["DCVdnsValue"])
    service.work()
    done = service.call("collect", certId=data["certId"])
    assert done["status"] == "COMPLETE", done
    assert [d["is_verify"] for d in done["data"]["dcvList"]] == ["verified", "verified"]
    leaf = x509.load_pem_x509_certificate(done["data"]["certificate"].encode())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [f"*.{zone}", zone]
