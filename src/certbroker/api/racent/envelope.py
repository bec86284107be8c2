"""The `{code, data, errors, msg}` envelope (SPEC 1.4): HTTP 200 for every business answer.

Every non-1 answer carries `msg`, the human-readable string form of `errors`, which several
clients show instead of `errors`. Messages (`errors`, `msg`, every `lastError`) pass a last
sanitiser: some clients paste them unescaped into HTML attributes, so quotes, angle brackets
and control characters never leave the server as such (pki/text.py)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from certbroker.orders.errors import ApiError, Code, FieldErrors
from certbroker.pki.text import safe_text

UNEXPECTED_TEXT = "unexpected error; nothing was changed, try again"
# Keys of answer data that hold messages certbroker writes.
MESSAGE_KEYS = frozenset({"lastError"})


def _clean_errors(errors: str | FieldErrors) -> str | FieldErrors:
    if isinstance(errors, str):
        return safe_text(errors)
    return {field: [safe_text(m) for m in messages] for field, messages in errors.items()}


def message_of(errors: str | FieldErrors) -> str:
    """`errors` as one line: a string as is, a field map as `field: message; ...`."""
    if isinstance(errors, str):
        return errors
    return "; ".join(f"{field}: {m}" for field, messages in errors.items() for m in messages)


def error_body(code: int, errors: str | FieldErrors) -> dict[str, Any]:
    clean = _clean_errors(errors)
    return {"code": code, "errors": clean, "msg": message_of(clean)}


def clean_messages(data: Any) -> Any:
    """Sanitise every `lastError` in the answer data, in place (lists and objects)."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key in MESSAGE_KEYS and isinstance(value, str):
                data[key] = safe_text(value)
            elif isinstance(value, dict | list):
                clean_messages(value)
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, dict | list):
                clean_messages(item)
    return data


def success(data: Any = None, **top_level: Any) -> JSONResponse:
    body: dict[str, Any] = {"code": int(Code.SUCCESS)}
    body.update(top_level)
    if data is not None:
        body["data"] = clean_messages(data)
    return JSONResponse(body)


def failure(
    error: ApiError, http_status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        error_body(int(error.code), error.errors), status_code=http_status, headers=headers
    )


def unexpected() -> JSONResponse:
    """-2: the details are logged, never sent."""
    return failure(ApiError(Code.UNEXPECTED, UNEXPECTED_TEXT))
