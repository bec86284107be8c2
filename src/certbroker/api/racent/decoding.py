"""Request bodies as Racent clients send them (SPEC 1.2): multipart, urlencoded or JSON."""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from certbroker.orders.errors import ApiError, Code

MAX_BODY_BYTES = 4 * 1024 * 1024  # room for two 2 MB pictures (SPEC 4.1 verificationPic)


def _bad(message: str) -> ApiError:
    return ApiError(Code.INVALID, message)


async def read_fields(request: Request) -> dict[str, Any]:
    """A flat mapping of field name to value; nested fields stay JSON strings or objects."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _bad(f"request body is larger than {MAX_BODY_BYTES} bytes")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=4, max_fields=200)
        except Exception as exc:  # starlette raises several types for malformed forms
            raise _bad(f"the form body could not be read: {exc}") from exc
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                fields[key] = value
            else:
                fields[key] = value
        return fields
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise _bad(f"request body is larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        return {}
    if content_type in ("application/json", "text/json", "") or content_type.endswith("+json"):
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _bad(f"the body is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise _bad("the JSON body must be an object of fields")
        return parsed
    raise ApiError(
        Code.INVALID,
        f"unsupported Content-Type {content_type!r}; send multipart/form-data, "
        "application/x-www-form-urlencoded or application/json",
    )


def text_field(fields: dict[str, Any], name: str) -> str | None:
    """A scalar field as text (numbers sent as numbers or strings alike); absent or empty → None."""
    value = fields.get(name)
    if value is None or isinstance(value, UploadFile):
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float | str):
        text = str(value).strip()
        return text or None
    raise ApiError(Code.INVALID, {name: [f"{name} must be a string"]})
