"""Messages survive clients that paste them unescaped into HTML attributes delimited by `'`:
no `'`, `"`, `<`, `>` or control characters in `errors`, `msg` or `lastError`, whatever the
input or the fetched content held. Tried in every body style."""

from __future__ import annotations

import json
from typing import Any

from certbroker.pki.text import quoted, safe_text
from tests.conftest import Service
from tests.helpers.body_styles import STYLES, post

UNSAFE = set("'\"<>") | {chr(c) for c in range(0x20)} | {"\x7f"}


def _clean(text: str) -> bool:
    return not UNSAFE & set(text)


def _assert_safe(answer: dict[str, Any]) -> None:
    assert answer["code"] != 1, answer
    assert _clean(answer["msg"]), answer["msg"]
    errors = answer["errors"]
    texts = [errors] if isinstance(errors, str) else [m for ms in errors.values() for m in ms]
    assert texts and all(_clean(t) for t in texts), errors


def test_safe_text_keeps_messages_recognisable() -> None:
    assert safe_text("plain text, ok") == "plain text, ok"
    assert safe_text("""it's "x" <b>""") == "it\u2019s \u201dx\u201d \u2039b\u203a"
    assert safe_text("a\x00b\x1bc\u2028") == "a\\x00b\\x1bc\\u2028"
    assert safe_text("abcdef", 3) == "abc\u2026"
    assert quoted("a'b") == "\u2018a\u2019b\u2019"


def test_errors_and_msg_carry_no_quotes_or_angle_brackets(service: Service) -> None:
    service.topup(100)
    hostile = "a'b<c>\"d.example.com"
    for style in STYLES:
        bad_name = post(
            service.client,
            style,
            "place",
            service.token,
            productCode="comodo-ssl",
            years=1,
            params={
                "server": "nginx",
                "domainInfo": [{"domainName": hostile, "dcvMethod": "HTTP_CSR_HASH"}],
            },
        )
        _assert_safe(bad_name)
        message = bad_name["errors"]["domainInfo.0.domainName"][0]
        assert "\u2018a\u2019b\u2039c\u203a\u201dd.example.com\u2019" in message  # still legible
        assert bad_name["msg"] == f"domainInfo.0.domainName: {message}"
        unknown = post(service.client, style, "place", service.token, productCode="x'<y>", years=1)
        assert unknown["code"] == -3
        _assert_safe(unknown)
        assert unknown["msg"] == unknown["errors"]
        bad_json = post(
            service.client,
            style,
            "validate",
            service.token,
            productCode="comodo-ssl",
            years=1,
            params="{'server': 'nginx'}",
        )
        _assert_safe(bad_json)


def test_last_error_escapes_what_the_site_served(service: Service) -> None:
    service.topup(100)
    params = {
        "server": "nginx",
        "domainInfo": [{"domainName": "shop.example.com", "dcvMethod": "HTTP_CSR_HASH"}],
    }
    placed = service.call("place", productCode="comodo-ssl", years=1, params=params)["data"]
    service.site.serve_file(
        placed["DCVfileName"], "<img src=x onerror='alert(1)'>\"\x1b[31m\r\nline two"
    )
    service.work()
    for style in STYLES:
        collected = post(service.client, style, "collect", service.token, certId=placed["certId"])
        assert collected["code"] == 1
        last_error = collected["data"]["dcvList"][0]["lastError"]
        assert last_error and _clean(last_error), last_error
        assert "found \u2018\u2039img src=x onerror=\u2019" in last_error  # still legible
    raw = service.client.post(
        "/ssl/collect", data={"api_token": service.token, "certId": placed["certId"]}
    ).text
    assert (
        "onerror='" not in raw and "<img" not in json.loads(raw)["data"]["dcvList"][0]["lastError"]
    )
