"""The three body styles real clients send (SPEC 1.2), for wire tests that try each one.

- `json`: a JSON object whose nested fields (`params`, `domainInfo`) are JSON strings, as the
  PHP SDK sends them;
- `urlencoded`: a form, nested fields as JSON strings (the WHMCS modules);
- `multipart`: multipart/form-data, nested fields as JSON strings (the ERP's Node client).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

STYLES = ("json", "urlencoded", "multipart")


def _flat(fields: dict[str, Any]) -> dict[str, str]:
    return {
        key: json.dumps(value) if isinstance(value, dict | list) else str(value)
        for key, value in fields.items()
    }


def post(
    client: TestClient, style: str, endpoint: str, token: str, **fields: Any
) -> dict[str, Any]:
    """POST /ssl/<endpoint> in `style`; the answer's JSON (always HTTP 200 here)."""
    body = _flat({"api_token": token, **fields})
    if style == "json":
        response = client.post(f"/ssl/{endpoint}", json=body)
    elif style == "urlencoded":
        response = client.post(f"/ssl/{endpoint}", data=body)
        assert response.request.headers["content-type"] == "application/x-www-form-urlencoded"
    elif style == "multipart":
        response = client.post(f"/ssl/{endpoint}", files={k: (None, v) for k, v in body.items()})
        assert response.request.headers["content-type"].startswith("multipart/form-data")
    else:
        raise ValueError(f"unknown body style {style}")
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer
