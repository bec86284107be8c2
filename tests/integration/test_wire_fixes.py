"""Wrongs real clients ran into: misnamed calls in messages, out-of-range list parameters that
broke the connection, wildcard characters in the domain filter, control characters in fields.
Each is tried in every body style, on SQLite and PostgreSQL (the `service` fixture)."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest

from certbroker.orders import listing
from tests.conftest import Service
from tests.helpers.body_styles import STYLES, post
from tests.helpers.live_uvicorn import LiveUvicorn

PARAMS = {
    "server": "nginx",
    "domainInfo": [{"domainName": "shop.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
}


def _call(service: Service, style: str, endpoint: str, **fields: Any) -> dict[str, Any]:
    return post(service.client, style, endpoint, service.token, **fields)


def _place(service: Service, **params: Any) -> dict[str, Any]:
    service.topup(100)
    placed = service.call("place", productCode="comodo-ssl", years=1, params={**PARAMS, **params})
    assert placed["code"] == 1, placed
    data: dict[str, Any] = placed["data"]
    return data


def test_batch_calls_name_themselves_when_the_state_refuses(service: Service) -> None:
    placed = _place(service)
    service.publish(placed)
    service.work()
    for style in STYLES:
        for endpoint in ("batchUpdateDCV", "batchRemoveMdcDomain", "updateDCV"):
            fields = {"certId": placed["certId"], "dcvMethod": "HTTP_CSR_HASH"}
            result = _call(service, style, endpoint, **fields)
            assert result["code"] == -7, (style, result)
            assert (
                result["errors"] == f"{endpoint} is not allowed while the certificate is COMPLETE"
            )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("page", "9223372036854775808"),
        ("page", str(10**18)),
        ("page", "0"),
        ("pageSize", "9223372036854775808"),
        ("pageSize", "-1"),
        ("startDate", "0001-01-01"),
        ("endDate", "9999-12-31"),
        ("endDate", "1969-12-31"),
    ],
)
def test_list_refuses_numbers_and_dates_out_of_range(
    service: Service, field: str, value: str
) -> None:
    for style in STYLES:
        result = _call(service, style, "list", **{field: value})
        assert result["code"] == -1, (style, result)
        assert list(result["errors"]) == [field], result


def test_errors_never_close_a_kept_alive_connection(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out-of-range input and an unexpected failure (-2) both leave the connection open."""

    def boom(*_args: object) -> None:
        raise RuntimeError("a failure nobody expected")

    with LiveUvicorn(service.client.app) as live:
        connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
        answers = []
        socket_ids = []
        for fields in (
            {"page": "9223372036854775808"},
            {"page": str(10**18)},
            {"startDate": "0001-01-01"},
            {"refId": "a\x00b"},
            {"boom": "1"},
            {"page": "1"},
        ):
            if "boom" in fields:
                monkeypatch.setattr(listing, "list_orders", boom)
            else:
                monkeypatch.undo()
            body = json.dumps({"api_token": service.token, **fields})
            endpoint = "certIdByrefId" if "refId" in fields else "list"
            connection.request(
                "POST", f"/ssl/{endpoint}", body, {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            answers.append((response.status, json.loads(response.read())["code"]))
            assert response.getheader("connection") != "close"
            socket_ids.append(id(connection.sock))
        connection.close()
    assert answers == [(200, -1), (200, -1), (200, -1), (200, -1), (200, -2), (200, 1)]
    assert len(set(socket_ids)) == 1 and connection.sock is None


def test_list_domain_filter_matches_literally(service: Service) -> None:
    _place(service)
    for style in STYLES:
        for pattern, total in (
            ("%", 0),
            ("_", 0),
            ("%.com", 0),
            ("sh_p.example.com", 0),
            ("example.com", 1),
            ("shop.example.com", 1),
        ):
            result = _call(service, style, "list", domain=pattern)
            assert result["code"] == 1 and result["total"] == total, (style, pattern, result)


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\x85"])
def test_control_characters_are_refused_in_every_text_field(service: Service, char: str) -> None:
    service.topup(100)
    orders_before = service.counts()
    for style in STYLES:
        bad_ref = _call(
            service,
            style,
            "place",
            productCode="comodo-ssl",
            years=1,
            refId=f"r{char}1",
            params=PARAMS,
        )
        assert bad_ref["code"] == -1 and list(bad_ref["errors"]) == ["refId"], bad_ref
        assert "control character" in bad_ref["errors"]["refId"][0]
        lookup = _call(service, style, "certIdByrefId", refId=f"r{char}1")
        assert lookup["code"] == -1 and list(lookup["errors"]) == ["refId"], lookup
        nested = {
            "server": "nginx",
            "domainInfo": [{"domainName": f"shop{char}.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
        }
        bad_name = _call(service, style, "place", productCode="comodo-ssl", years=1, params=nested)
        assert bad_name["code"] == -1, bad_name
        assert list(bad_name["errors"]) == ["domainInfo.0.domainName"], bad_name
        reason = _call(service, style, "cancel", certId="x", reason=f"because{char}")
        assert reason["code"] == -1 and list(reason["errors"]) == ["reason"], reason
    assert service.counts() == orders_before


def test_line_breaks_stay_allowed_where_text_has_lines(service: Service) -> None:
    """A CSR or a reason spans lines; an identifier's surrounding whitespace is trimmed."""
    placed = _place(service)
    for style in STYLES:
        result = _call(service, style, "collect", certId=f" {placed['certId']}\r\n")
        assert result["code"] == 1, result
        inner = _call(
            service, style, "collect", certId=f"{placed['certId'][:4]}\n{placed['certId'][4:]}"
        )
        assert inner["code"] == -1 and list(inner["errors"]) == ["certId"], inner
    cancelled = service.call("cancel", certId=placed["certId"], reason="first line\r\nsecond\tline")
    assert cancelled["code"] == 1, cancelled
