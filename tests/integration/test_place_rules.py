"""Bad input answered with its documented code and a readable message; nothing stored or charged."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from certbroker.pki.csr import build_csr
from certbroker.pki.keys import generate_private_key
from tests.conftest import Service

ONE = [{"domainName": "shop.example.com", "dcvMethod": "HTTP_CSR_HASH"}]


def csr(*names: str) -> str:
    return build_csr(generate_private_key("ec256"), list(names)).pem


def rsa1024_csr(tmp: Path) -> str:
    # cryptography refuses 1024-bit RSA keys, so the weak CSR comes from openssl (tests only).
    out = tmp / "weak.csr"
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            str(tmp / "k"),
            "-subj",
            "/CN=shop.example.com",
            "-out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out.read_text()


def contact() -> dict[str, str]:
    return {
        "organation": "Example Ltd",
        "address": "1 Main St",
        "city": "Berlin",
        "state": "Berlin",
        "postCode": "10115",
        "country": "DE",
    }


CASES: list[tuple[str, dict[str, Any], int, str, str]] = [
    # (id, fields, code, where the message is ("" for a string error), message fragment)
    (
        "malformed CSR",
        {
            "params": {
                "server": "nginx",
                "domainInfo": ONE,
                "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"
                "-----END CERTIFICATE REQUEST-----",
            }
        },
        -1,
        "csr",
        "",
    ),
    (
        "names differ from domainInfo",
        {"params": {"server": "nginx", "domainInfo": ONE, "csr": "@other"}},
        -1,
        "csr",
        "other.example.com",
    ),
    (
        "wildcard on a non-wildcard product",
        {
            "params": {
                "server": "nginx",
                "domainInfo": [{"domainName": "*.example.com", "dcvMethod": "CNAME_CSR_HASH"}],
            }
        },
        -1,
        "domainInfo",
        "wildcard",
    ),
    (
        "plain name on a wildcard-only product",
        {
            "productCode": "comodo-wildcard-ssl-certificate",
            "params": {"server": "nginx", "domainInfo": ONE},
        },
        -1,
        "domainInfo",
        "The product does not support normal type(shop.example.com)",
    ),
    (
        "too many names",
        {
            "params": {
                "server": "nginx",
                "domainInfo": [*ONE, {"domainName": "b.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
            }
        },
        -1,
        "domainInfo",
        "",
    ),
    ("unknown product", {"productCode": "no-such-product"}, -3, "", "no-such-product"),
    ("unsupported years", {"years": "7"}, -3, "", "7"),
    ("years not a number", {"years": "one"}, -1, "years", "years"),
    (
        "OV order without contacts",
        {"productCode": "sectigo-ov", "params": {"server": "nginx", "domainInfo": ONE}},
        -1,
        "organizationInfo",
        "organizationInfo is required",
    ),
    ("upper-case server", {"params": {"server": "NGINX", "domainInfo": ONE}}, -1, "server", ""),
    ("missing domainInfo", {"params": {"server": "nginx"}}, -1, "domainInfo", ""),
    ("non-JSON params", {"params": "{{{"}, -1, "params", ""),
    (
        "bad uniqueValue",
        {"params": {"server": "nginx", "domainInfo": ONE, "uniqueValue": "has space"}},
        -1,
        "uniqueValue",
        "",
    ),
    (
        "file method for a wildcard",
        {
            "productCode": "comodo-wildcard-ssl-certificate",
            "params": {
                "server": "nginx",
                "domainInfo": [{"domainName": "*.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
            },
        },
        -1,
        "domainInfo",
        "",
    ),
]


def _fields(case: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "productCode": "comodo-ssl",
        "years": "1",
        "params": {"server": "nginx", "domainInfo": ONE},
    }
    fields.update(case)
    params = fields["params"]
    if isinstance(params, dict) and params.get("csr") == "@other":
        params["csr"] = csr("other.example.com")
    return fields


@pytest.mark.parametrize("endpoint", ["validate", "place"])
@pytest.mark.parametrize(
    ("fields", "code", "field", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input(
    service: Service, endpoint: str, fields: dict[str, Any], code: int, field: str, fragment: str
) -> None:
    service.topup(1000)
    before = service.balance()
    result = service.call(endpoint, **_fields(json.loads(json.dumps(fields))))
    assert result["code"] == code, result
    if field:
        assert isinstance(result["errors"], dict), result
        messages = [
            m for key, values in result["errors"].items() if key.startswith(field) for m in values
        ]
        assert messages, result
        assert all(isinstance(m, str) and m for m in messages)
        assert any(fragment in m for m in messages), result
    else:
        assert isinstance(result["errors"], str) and fragment in result["errors"], result
    assert service.counts() == (0, 0)
    assert service.balance() == before


def test_1024_bit_key_is_refused(service: Service, tmp_path: Path) -> None:
    service.topup(100)
    result = service.call(
        "place",
        productCode="comodo-ssl",
        years="1",
        params={"server": "nginx", "domainInfo": ONE, "csr": rsa1024_csr(tmp_path)},
    )
    assert result["code"] == -1
    assert "1024" in result["errors"]["csr"][0] and "2048" in result["errors"]["csr"][0]
    assert service.counts() == (0, 0)


def test_ov_contacts_are_checked_per_role_and_field(service: Service) -> None:
    service.topup(1000)
    incomplete = contact()
    del incomplete["postCode"]
    result = service.call(
        "place",
        productCode="sectigo-ov",
        years="1",
        params={
            "server": "nginx",
            "domainInfo": ONE,
            "organizationInfo": {"organizationName": "Example Ltd"},
            "Administrator": incomplete,
            "tech": contact(),
            "finance": {},
        },
    )
    assert result["code"] == -1
    errors = result["errors"]
    assert "The administrator’s postCode is required" in errors["Administrator"]
    assert "tech" not in errors
    assert "organizationInfo.organizationPostCode" in errors
    assert service.counts() == (0, 0)


def test_bad_token_and_empty_balance(service: Service) -> None:
    params = {"server": "nginx", "domainInfo": ONE}
    bad = service.call(
        "place", token="cb_forged", productCode="comodo-ssl", years="1", params=params
    )
    assert bad["code"] == 400 and bad["errors"]
    broke = service.call("place", productCode="comodo-ssl", years="1", params=params)
    assert broke["code"] == -4 and "12.00" in broke["errors"]
    also = service.call("validate", productCode="comodo-ssl", years="1", params=params)
    assert also["code"] == -4
    assert service.counts() == (0, 0)


def test_validate_charges_nothing(service: Service) -> None:
    service.topup(100)
    result = service.call(
        "validate",
        productCode="comodo-ssl",
        years="1",
        params={"server": "nginx", "domainInfo": ONE, "csr": csr("shop.example.com")},
    )
    assert result == {"code": 1}
    assert service.counts() == (0, 0) and service.balance() == 100_00


def test_ref_id_retry_returns_the_same_order_and_charges_once(service: Service) -> None:
    service.topup(100)
    params = {"server": "nginx", "domainInfo": ONE}
    first = service.call("place", productCode="comodo-ssl", years="1", refId="R1", params=params)
    again = service.call("place", productCode="comodo-ssl", years=1, refId="R1", params=params)
    assert first["code"] == again["code"] == 1
    assert again["data"]["certId"] == first["data"]["certId"]
    assert again["data"]["DCVfileName"] == first["data"]["DCVfileName"]
    assert service.counts() == (1, 1)
    other = service.call("place", productCode="comodo-ssl", years="2", refId="R1", params=params)
    assert other["code"] == -1 and "R1" in other["errors"]["refId"][0]
    assert service.counts() == (1, 1)
    assert service.balance() == 100_00 - 12_00


def test_another_accounts_cert_id_is_unknown(service: Service) -> None:
    service.topup(100)
    placed = service.call(
        "place",
        productCode="comodo-ssl",
        years="1",
        refId="mine",
        params={"server": "nginx", "domainInfo": ONE},
    )
    _other_id, other_token = service.new_account("other")
    cert_id = placed["data"]["certId"]
    foreign = service.call("collect", token=other_token, certId=cert_id)
    unknown = service.call("collect", token=other_token, certId="261201aaaaaaaaaa")
    assert foreign["code"] == unknown["code"] == -1
    assert foreign["errors"] == {"certId": [f"certificate {cert_id} not found"]}
    assert service.call("cancel", token=other_token, certId=cert_id, reason="x")["code"] == -1
    assert service.call("certIdByrefId", token=other_token, refId="mine")["code"] == -1
    assert service.call("collect", certId=cert_id)["status"] == "PENDING"
