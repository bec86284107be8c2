"""Request bodies as Racent clients send them (SPEC 1.2): multipart, urlencoded or JSON.

The body is read in full, under a size limit enforced while it streams in (also for chunked
bodies without Content-Length) and a time limit, before anything parses it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from certbroker.api.limits import DEFAULT_MAX_BODY_BYTES
from certbroker.orders.errors import ApiError, Code
from certbroker.pki.text import quoted, safe_text

MAX_BODY_BYTES = DEFAULT_MAX_BODY_BYTES
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def _bad(message: str) -> ApiError:
    return ApiError(Code.INVALID, message)


def _too_large(max_bytes: int) -> ApiError:
    return _bad(f"request body is larger than {max_bytes} bytes")


async def read_body(request: Request, max_bytes: int, timeout_seconds: float) -> bytes:
    """The raw body, refused as soon as it grows past `max_bytes` or takes too long."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                chunks.append(chunk)
    except TimeoutError:
        raise _bad(f"the request body did not arrive within {timeout_seconds:g} seconds") from None
    except ClientDisconnect:
        raise _bad("the client closed the connection before the body was complete") from None
    return b"".join(chunks)


def _replay(request: Request, body: bytes) -> Request:
    """A request whose body is `body`, already read and bounded, for starlette's form parser."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


async def read_fields(
    request: Request,
    *,
    max_bytes: int = MAX_BODY_BYTES,
    timeout_seconds: float = 30.0,
) -> dict[str, Any]:
    """A flat mapping of field name to value; nested fields stay JSON strings or objects.

    File parts stay `UploadFile`s; the caller closes them (`close_uploads`).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, max_bytes, timeout_seconds)
    if content_type in FORM_TYPES:
        try:
            form = await _replay(request, body).form(max_files=4, max_fields=200)
        except Exception as exc:  # starlette raises several types for malformed forms
            # The parser's message names the problem (boundary, part size), never the content.
            raise _bad(f"the form body could not be read: {_reason(exc)}") from exc
        return refuse_control_characters(dict(form.multi_items()))
    if not body.strip():
        return {}
    if content_type in ("application/json", "text/json", "") or content_type.endswith("+json"):
        try:
            parsed = json.loads(body)
        except json.JSONDecodeError as exc:
            raise _bad(
                f"the body is not valid JSON: {safe_text(exc.msg)} "
                f"at line {exc.lineno} column {exc.colno}"
            ) from None
        except (ValueError, RecursionError):
            # Invalid UTF-8, integers longer than Python accepts, pathological nesting.
            raise _bad("the body is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise _bad("the JSON body must be an object of fields")
        return refuse_control_characters(parsed)
    raise ApiError(
        Code.INVALID,
        f"unsupported Content-Type {quoted(content_type, 100)}; send multipart/form-data, "
        "application/x-www-form-urlencoded or application/json",
    )


# Identifiers and numbers: one line. Other fields (CSR, key, reason, JSON) may hold line breaks
# and tabs, never other control characters.
SINGLE_LINE_FIELDS = frozenset(
    {
        "api_token",
        "certId",
        "orderId",
        "renewId",
        "refId",
        "productCode",
        "years",
        "domainName",
        "domain",
        "dcvMethod",
        "dcvEmail",
        "vendor",
        "status",
        "page",
        "pageSize",
        "startDate",
        "endDate",
        "uniqueValue",
        "limit",
        "url",
        "secret",
    }
)
_LINE_SPACE = frozenset("\t\n\r")


def _control_character(text: str, single_line: bool) -> str | None:
    for char in text:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            if char in _LINE_SPACE and not single_line:
                continue
            return f"U+{code:04X}"
    return None


def _walk(value: object, path: str, single_line: bool, errors: dict[str, list[str]]) -> None:
    if isinstance(value, str):
        found = _control_character(value.strip() if single_line else value, single_line)
        if found is not None:
            errors.setdefault(path, []).append(
                f"{path} contains the control character {found}; control characters are "
                "not accepted in text fields"
            )
        if value[:1] in ("{", "[") and not single_line:
            # A nested JSON field sent as a string (params, domainInfo): its values too.
            try:
                nested = json.loads(value)
            except (ValueError, RecursionError):
                return  # reported by whoever reads the field
            _walk_nested(nested, "" if path == "params" else path, errors)
    elif isinstance(value, dict | list):
        _walk_nested(value, "" if path == "params" else path, errors)


def _walk_nested(value: object, prefix: str, errors: dict[str, list[str]]) -> None:
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(item, str):
            found = _control_character(item, single_line=False)
            if found is not None:
                errors.setdefault(path, []).append(
                    f"{path} contains the control character {found}; control characters "
                    "are not accepted in text fields"
                )
        else:
            _walk_nested(item, path, errors)


def refuse_control_characters(fields: dict[str, Any]) -> dict[str, Any]:
    """Refuse NUL and other control characters in every text field, nested ones included.

    PostgreSQL refuses NUL in text and SQLite stores it; neither should decide what a field
    may hold, and such characters end up in logs, mail and HTML."""
    errors: dict[str, list[str]] = {}
    for name, value in fields.items():
        if isinstance(name, str) and _control_character(name, single_line=True) is not None:
            raise _bad("a field name contains a control character")
        _walk(value, str(name), str(name) in SINGLE_LINE_FIELDS, errors)
    if errors:
        raise ApiError(Code.INVALID, errors)
    return fields


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]


async def close_uploads(fields: dict[str, Any]) -> None:
    for value in fields.values():
        if isinstance(value, UploadFile):
            await value.close()


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
