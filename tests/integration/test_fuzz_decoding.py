"""Issue 7: property tests of request decoding through the real app (TestClient).

Whatever the body, encoding, content type or field types, the answer is JSON in the envelope
with an integer `code`, never a 5xx and never -2 (an unhandled exception): TestClient re-raises
server exceptions, so one would fail the test even before the assertions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certbroker import bootstrap
from certbroker.api.limits import ApiGuard, ApiLimits
from certbroker.api.racent.endpoints import ENDPOINTS
from certbroker.api.racent.routes import configure_limits
from certbroker.app import create_app
from certbroker.orders import accounts, ledger
from certbroker.settings import Settings

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FIELD_NAMES = sorted(
    {name for e in ENDPOINTS for name in e.fields.model_fields}
    | {"params", "domainInfo", "csr", "verificationPic"}
)
PARAM_KEYS = [
    "csr",
    "privateKey",
    "server",
    "uniqueValue",
    "dcvMethod",
    "domainInfo",
    "organizationInfo",
    "Administrator",
    "tech",
    "finance",
    "originalfromOthers",
    "keyType",
]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=latin-1",
    "text/json",
    "application/vnd.api+json",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=bogus",
    "multipart/form-data",
    "multipart/form-data; boundary=xyz",
    "multipart/form-data; boundary=",
    "text/plain",
    "",
]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz") / "data"
    ctx = bootstrap.build_context(Settings(data_dir=data_dir))
    first = bootstrap.ensure_first_account(ctx)
    assert first is not None
    with ctx.db.transaction() as session:
        ledger.post(
            session,
            account_id=accounts.find_account(session, first.name).id,
            amount_cents=10**9,
            kind="topup",
            op_key="topup:fuzz",
            now=ctx.clock.now(),
        )
    app = create_app(ctx, worker=False)
    configure_limits(app, ApiGuard(ApiLimits(per_token=None, per_address=None)))
    with TestClient(app) as client:
        yield client, first.token
    ctx.db.dispose()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["1", "0", "-1", "shop.example.com", "HTTP_CSR_HASH", "comodo-ssl", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
domain_items = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "domainName": st.sampled_from(["shop.example.com", "*.example.com", "1.2.3.4", ""])
            | json_values,
            "dcvMethod": st.sampled_from(["HTTP_CSR_HASH", "EMAIL", "CNAME_CSR_HASH", "x"])
            | json_values,
            "dcvEmail": json_values,
        },
    ),
    max_size=3,
)
params_values = (
    st.fixed_dictionaries(
        {},
        optional={
            **{key: json_values for key in PARAM_KEYS},
            "domainInfo": domain_items | json_values,
            "server": st.sampled_from(["other", "nginx", "NGINX"]) | json_values,
        },
    )
    | json_values
)
field_values = st.one_of(
    json_values,
    params_values,
    st.sampled_from(["261201aaaaaaaaaa", "ref-1", "comodo-ssl", "sectigo-multi-domain", "3"]),
)


def _field_map(token: str) -> st.SearchStrategy[dict[str, Any]]:
    token_values = st.sampled_from([token, "", "cb_wrong"]) | json_values
    return st.fixed_dictionaries(
        {"api_token": token_values},
        optional={name: field_values for name in FIELD_NAMES if name != "api_token"},
    ) | st.dictionaries(st.text(max_size=12), field_values, max_size=6)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _assert_envelope(response: Any) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and type(body["code"]) is int, body
    assert body["code"] != -2, body


endpoint_names = st.sampled_from([e.name for e in ENDPOINTS])


@FUZZ
@given(data=st.data(), endpoint=endpoint_names)
def test_json_bodies_of_any_shape(api: tuple[TestClient, str], data: Any, endpoint: str) -> None:
    client, token = api
    fields = data.draw(_field_map(token))
    response = client.post(f"/ssl/{endpoint}", json=fields)
    _assert_envelope(response)


@FUZZ
@given(data=st.data(), endpoint=endpoint_names, multipart=st.booleans())
def test_form_bodies_with_any_values(
    api: tuple[TestClient, str], data: Any, endpoint: str, multipart: bool
) -> None:
    client, token = api
    fields = {k: _as_text(v) for k, v in data.draw(_field_map(token)).items()}
    if multipart:
        parts: dict[str, tuple[str | None, bytes]] = {
            k: (None, v.encode("utf-8", "surrogatepass")) for k, v in fields.items()
        }
        if data.draw(st.booleans()):
            parts["verificationPic"] = ("pic.png", data.draw(st.binary(max_size=64)))
        response = client.post(f"/ssl/{endpoint}", files=parts)
    else:
        response = client.post(f"/ssl/{endpoint}", data=fields)
    _assert_envelope(response)


@FUZZ
@given(
    endpoint=endpoint_names,
    content_type=st.sampled_from(CONTENT_TYPES) | st.text(max_size=30),
    body=st.binary(max_size=300)
    | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
def test_raw_bodies_under_any_content_type(
    api: tuple[TestClient, str], endpoint: str, content_type: str, body: bytes
) -> None:
    client, _token = api
    headers = {"content-type": content_type} if content_type.isprintable() else {}
    if not content_type.isascii():
        headers = {}
    response = client.post(f"/ssl/{endpoint}", content=body, headers=headers)
    _assert_envelope(response)


def test_pathological_json_is_refused_with_a_message(api: tuple[TestClient, str]) -> None:
    client, token = api
    nested = b"[" * 100_000 + b"]" * 100_000
    for body in (nested, b'{"api_token": ' + b"9" * 5000 + b"}", b"\xff\xfe{"):
        response = client.post(
            "/ssl/collect", content=body, headers={"content-type": "application/json"}
        )
        _assert_envelope(response)
        assert response.json()["code"] == -1
    params = json.dumps({"api_token": token, "params": "[" * 50_000 + "]" * 50_000})
    response = client.post(
        "/ssl/validate", content=params, headers={"content-type": "application/json"}
    )
    _assert_envelope(response)
