"""SPEC section 1: POST only, three body encodings, params as string or object, lenient numbers,
case-insensitive endpoint names, the envelope and its codes, the OpenAPI document."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import Service

PARAMS = {
    "server": "other",
    "domainInfo": [{"domainName": "shop.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
}


def test_multipart_form(service: Service) -> None:
    service.topup(100)
    fields = {
        "api_token": service.token,
        "productCode": "comodo-ssl",
        "years": "1",
        "params": json.dumps(PARAMS),
    }
    response = service.client.post("/ssl/place", files={k: (None, v) for k, v in fields.items()})
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["code"] == 1
    assert response.request.headers["content-type"].startswith("multipart/form-data")


def test_urlencoded_form(service: Service) -> None:
    service.topup(100)
    response = service.client.post(
        "/ssl/validate",
        data={
            "api_token": service.token,
            "productCode": "comodo-ssl",
            "years": "1",
            "params": json.dumps(PARAMS),
        },
    )
    assert response.request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert response.json() == {"code": 1}


def test_json_body_with_params_as_string_like_the_php_sdk(service: Service) -> None:
    service.topup(100)
    body = {
        "api_token": service.token,
        "productCode": "comodo-ssl",
        "years": "1",
        "params": json.dumps(PARAMS),
    }
    response = service.client.post("/ssl/place", json=body)
    assert response.json()["code"] == 1


def test_json_body_with_params_as_object_and_numeric_years(service: Service) -> None:
    service.topup(100)
    body = {"api_token": service.token, "productCode": "comodo-ssl", "years": 1, "params": PARAMS}
    response = service.client.post("/ssl/place", json=body)
    assert response.json()["code"] == 1


def test_endpoint_names_are_case_insensitive(service: Service) -> None:
    for path in ("/ssl/productlist", "/ssl/PRODUCTLIST", "/ssl/productList"):
        response = service.client.post(path, data={"api_token": service.token})
        assert response.json()["code"] == 1, path
    response = service.client.post(
        "/ssl/certidbyrefid", data={"api_token": service.token, "refId": "x"}
    )
    assert response.json()["errors"] == {"refId": ["no order with refId x"]}


def test_get_is_refused_in_the_envelope(service: Service) -> None:
    response = service.client.get("/ssl/collect")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json() == {
        "code": -1,
        "errors": "every endpoint takes POST only",
        "msg": "every endpoint takes POST only",
    }


def test_unknown_endpoint_answers_in_the_envelope(service: Service) -> None:
    response = service.client.post("/ssl/frobnicate", data={"api_token": service.token})
    assert response.status_code == 404
    assert response.json() == {"code": -1, "errors": "unknown endpoint", "msg": "unknown endpoint"}


def test_bad_token_is_400_in_the_body(service: Service) -> None:
    for token in ("wrong", ""):
        response = service.client.post("/ssl/productList", data={"api_token": token})
        assert response.status_code == 200
        assert response.json()["code"] == 400


def test_revoked_token_is_refused(service: Service) -> None:
    from certbroker.orders import accounts

    with service.ctx.db.transaction() as session:
        accounts.revoke_token(session, 1, now=service.clock.now())
    assert service.call("productList")["code"] == 400


def test_non_json_params_and_bad_bodies(service: Service) -> None:
    result = service.call("place", productCode="comodo-ssl", years="1", params="{not json")
    assert result["code"] == -1 and "params" in result["errors"]
    bad_json = service.client.post(
        "/ssl/place", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 200 and bad_json.json()["code"] == -1
    array = service.client.post("/ssl/place", json=[1, 2])
    assert array.json()["errors"] == "the JSON body must be an object of fields"
    assert array.json()["msg"] == "the JSON body must be an object of fields"
    xml = service.client.post("/ssl/place", content=b"<a/>", headers={"content-type": "text/xml"})
    assert xml.json()["code"] == -1 and "Content-Type" in xml.json()["errors"]


def test_product_list_and_vendor_filter(service: Service) -> None:
    everything = service.call("productList")["data"]
    sectigo = service.call("productList", vendor="Sectigo")["data"]
    assert 0 < len(sectigo) < len(everything)
    product = sectigo[0]
    for key in (
        "code",
        "productName",
        "supportWildcard",
        "supportStandard",
        "supportIp",
        "supportSan",
        "validationType",
        "maxDomain",
        "maxYear",
        "defaultProtectDomain",
        "price",
    ):
        assert key in product
    assert "price012" in product["price"]["basePrice"]
    levels = {p["validationType"] for p in everything}
    assert levels == {"dv", "ov", "ev"}
    wrong = service.call("productList", vendor="DigiCert")
    assert wrong["code"] == -1 and "vendor invalid" in wrong["errors"]["vendor"][0]


def test_openapi_documents_every_endpoint_and_its_fields(service: Service) -> None:
    from certbroker.api.racent.endpoints import ENDPOINTS

    doc: dict[str, Any] = service.client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for endpoint in ENDPOINTS:
        operation = doc["paths"][f"/ssl/{endpoint.name}"]["post"]
        content = operation["requestBody"]["content"]
        assert set(content) == {
            "multipart/form-data",
            "application/x-www-form-urlencoded",
            "application/json",
        }
        ref = content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert "api_token" in schemas[ref]["properties"]
    assert "params" in schemas["OrderFields"]["properties"]
    assert "certId" in schemas["CertIdFields"]["properties"]


def test_legacy_dcv_lookups_and_country(service: Service) -> None:
    service.topup(100)
    params = {
        "server": "other",
        "domainInfo": [
            {"domainName": "a.example.com", "dcvMethod": "HTTP_CSR_HASH"},
            {"domainName": "b.example.com", "dcvMethod": "CNAME_CSR_HASH"},
        ],
    }
    placed = service.call("place", productCode="sectigo-multi-domain", years=1, params=params)
    cert_id = placed["data"]["certId"]
    whole = service.call("validatefile", orderId=cert_id)["data"]
    assert whole["DCVfileName"] == placed["data"]["DCVfileName"]
    one = service.call("validatedns", orderId=cert_id, domain="B.example.com")["data"]
    assert one["DCVdnsHost"] == placed["data"]["DCVdnsHost"]
    assert one["DCVfilePath"].startswith("http://b.example.com")
    missing = service.call("validatedns", orderId=cert_id, domain="c.example.com")
    assert missing["code"] == -1 and "c.example.com" in missing["errors"]["domain"][0]
    assert service.call("validatefile")["errors"] == {"orderId": ["orderId is required"]}
    countries = service.call("country")["data"]
    assert {"code": "CN"} in countries and len(countries) == 249


def test_other_paths_name_their_own_methods(service: Service) -> None:
    response = service.client.post("/crl/intermediate.crl")
    assert response.status_code == 405
    assert "GET" in response.headers["allow"] and "POST" not in response.headers["allow"]
