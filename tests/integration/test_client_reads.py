"""What real clients read: collect's aliases, `msg` on every failure, productList's vendor,
every order from `list` without paging, `amount` 0 on free rows. In every body style."""

from __future__ import annotations

from typing import Any

from tests.conftest import Service
from tests.helpers.body_styles import STYLES, post

PARAMS = {
    "server": "nginx",
    "domainInfo": [{"domainName": "shop.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
}


def _issue(service: Service, usd: int = 100, **params: Any) -> str:
    service.topup(usd)
    placed = service.call("place", productCode="comodo-ssl", years=1, params={**PARAMS, **params})
    assert placed["code"] == 1, placed
    service.publish(placed["data"])
    service.work()
    cert_id: str = placed["data"]["certId"]
    return cert_id


def test_collect_answers_the_names_clients_read(service: Service) -> None:
    rsa_order = _issue(service)
    ec_order = _issue(service, usd=101, keyType="ec256")
    for style in STYLES:
        answer = post(service.client, style, "collect", service.token, certId=rsa_order)
        data = answer["data"]
        assert answer["status"] == data["status"] == "COMPLETE"
        assert data["DCVInfo"] == data["dcvInfo"] and "shop.example.com" in data["DCVInfo"]
        assert data["productType"] == "dv"
        assert data["rsaPrivateKey"] == data["privateKey"]
        assert "PRIVATE KEY" in data["rsaPrivateKey"]
        ec = post(service.client, style, "collect", service.token, certId=ec_order)["data"]
        assert "privateKey" in ec and "rsaPrivateKey" not in ec  # it only names RSA keys


def test_every_failure_has_msg_and_product_list_names_the_vendor(service: Service) -> None:
    for style in STYLES:
        field_error = post(service.client, style, "collect", service.token)
        assert field_error == {
            "code": -1,
            "errors": {"certId": ["certId is required"]},
            "msg": "certId: certId is required",
        }
        two = post(service.client, style, "list", service.token, page="x", pageSize="0")
        assert two["msg"] == "; ".join(f"{f}: {m}" for f, ms in two["errors"].items() for m in ms)
        assert two["msg"].startswith("page: page must be a whole number")
        bad_token = post(service.client, style, "collect", "wrong", certId="x")
        assert bad_token["code"] == 400 and bad_token["msg"] == bad_token["errors"]
        products = post(service.client, style, "productList", service.token)["data"]
        assert {p["vendor"] for p in products} >= {"Sectigo"}
        assert all(p["vendor"] for p in products)


def test_list_without_paging_answers_every_order_and_free_rows_cost_nothing(
    service: Service,
) -> None:
    first = _issue(service)
    service.topup(1000)
    for i in range(51):  # one more than the default page
        params = {
            "server": "nginx",
            "domainInfo": [{"domainName": f"n{i}.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
        }
        assert service.call("place", productCode="comodo-ssl", years=1, params=params)["code"] == 1
    reissued = service.call("reissue", certId=first, reason="key lost")["data"]["certId"]
    for style in STYLES:
        everything = post(service.client, style, "list", service.token)
        assert everything["total"] == len(everything["data"]) == 53
        amounts = {row["certId"]: row["amount"] for row in everything["data"]}
        assert amounts[reissued] == "0.00" and amounts[first] == "12.00"
        paged = post(service.client, style, "list", service.token, page=1)
        assert paged["total"] == 53 and len(paged["data"]) == 50 and paged["pageSize"] == 50
