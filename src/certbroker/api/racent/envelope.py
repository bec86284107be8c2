"""The `{code, data, errors}` envelope (SPEC 1.4): HTTP 200 for every business answer."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from certbroker.orders.errors import ApiError, Code


def success(data: Any = None, **top_level: Any) -> JSONResponse:
    body: dict[str, Any] = {"code": int(Code.SUCCESS)}
    body.update(top_level)
    if data is not None:
        body["data"] = data
    return JSONResponse(body)


def failure(
    error: ApiError, http_status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"code": int(error.code), "errors": error.errors}, status_code=http_status, headers=headers
    )


UNEXPECTED_TEXT = "unexpected error; nothing was changed, try again"


def unexpected() -> JSONResponse:
    """-2: the details are logged, never sent."""
    return failure(ApiError(Code.UNEXPECTED, UNEXPECTED_TEXT))
