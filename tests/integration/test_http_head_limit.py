"""The request-head limit of `serve` with the httptools parser (api/http_protocol.py), against a
real uvicorn on loopback: oversized heads get 431 and never reach the app."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from certbroker.api.http_protocol import MAX_HEADERS, LimitedHttpToolsProtocol
from certbroker.cli import uvicorn_options
from certbroker.settings import Settings
from tests.helpers.live_uvicorn import LiveUvicorn

LIMIT = 2048


class RecordingApp:
    """Answers 200 with the path after reading the whole body; remembers every request."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.paths.append(scope["path"])
        while (await receive()).get("more_body"):
            pass
        body = scope["path"].encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class Live(LiveUvicorn):
    def __init__(self, app: RecordingApp, settings: Settings) -> None:
        super().__init__(app, **uvicorn_options(settings))

    def exchange(self, *parts: bytes) -> bytes:
        """Send the parts one by one, then read until the server closes (no half-close: uvicorn
        drops pipelined requests on EOF)."""
        with self.connect() as sock:
            for part in parts:
                sock.sendall(part)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


@pytest.fixture
def live(app: RecordingApp) -> Iterator[Live]:
    settings = Settings(http_max_header_bytes=LIMIT, http_keepalive_seconds=1)
    with Live(app, settings) as server:
        yield server


def head(path: str, size: int | None = None, *, close: bool = True) -> bytes:
    """A GET whose head (request line to the blank line) is exactly `size` bytes when given."""
    start = f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode()
    end = b"Connection: close\r\n\r\n" if close else b"\r\n"
    if size is None:
        return start + end
    pad = size - len(start) - len(end) - len(b"X-Pad: \r\n")
    assert pad >= 0
    return start + b"X-Pad: " + b"a" * pad + b"\r\n" + end


def assert_431(answer: bytes) -> dict[str, Any]:
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"connection: close" in status.lower()
    envelope: dict[str, Any] = json.loads(body)
    assert envelope["code"] == 431
    return envelope


def test_serve_uses_httptools_with_the_head_limit_and_h11_stays_selectable() -> None:
    options = uvicorn_options(Settings(http_max_header_bytes=LIMIT))
    assert options["http"] is LimitedHttpToolsProtocol
    assert options["h11_max_incomplete_event_size"] == LIMIT
    assert options["loop"] == "auto"
    assert uvicorn_options(Settings(http_parser="h11"))["http"] == "h11"
    # `serve --workers N` pickles uvicorn's Config into each child: the class and limit survive.
    config = uvicorn.Config("certbroker.cli:server_app_from_environment", factory=True, **options)
    copy = pickle.loads(pickle.dumps(config))  # noqa: S301 - our own object
    assert copy.http is LimitedHttpToolsProtocol
    assert copy.h11_max_incomplete_event_size == LIMIT


def test_start_up_fails_when_uvicorn_lacks_a_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(HttpToolsProtocol, "send_400_response")
    with pytest.raises(RuntimeError, match="send_400_response"):
        uvicorn_options(Settings())
    assert uvicorn_options(Settings(http_parser="h11"))["http"] == "h11"


def test_normal_requests_and_a_head_at_the_limit_reach_the_app(
    live: Live, app: RecordingApp
) -> None:
    # Two requests on one keep-alive connection: the count starts again for the second.
    answer = live.exchange(head("/one", LIMIT, close=False) + head("/two", LIMIT))
    assert answer.count(b"HTTP/1.1 200 ") == 2
    assert app.paths == ["/one", "/two"]


def test_a_head_one_byte_over_the_limit_is_refused(live: Live, app: RecordingApp) -> None:
    envelope = assert_431(live.exchange(head("/big", LIMIT + 1)))
    assert envelope["errors"] == f"request headers not complete within {LIMIT} bytes"
    assert app.paths == []


def test_one_huge_header_is_refused_before_it_ends(live: Live, app: RecordingApp) -> None:
    # Sent in parts and never ended: once the limit is reached the end can only come past it, so
    # the server answers without waiting (bytes sent after its close would reset the connection).
    start = b"GET /huge HTTP/1.1\r\nHost: x\r\nX-Pad: "
    sent = start + b"a" * (LIMIT - len(start))
    assert_431(live.exchange(*(sent[i : i + 700] for i in range(0, len(sent), 700))))
    assert app.paths == []


def test_many_small_headers_adding_up_are_refused(live: Live, app: RecordingApp) -> None:
    lines = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 30) for i in range(80))  # ~3 KiB
    assert_431(live.exchange(b"GET /many HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n"))
    assert app.paths == []


def test_too_many_headers_are_refused_under_the_byte_limit(live: Live, app: RecordingApp) -> None:
    lines = b"".join(b"h%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
    assert len(lines) < LIMIT
    envelope = assert_431(live.exchange(b"GET /n HTTP/1.1\r\n" + lines + b"\r\n"))
    assert envelope["errors"] == f"request more than {MAX_HEADERS} headers"
    assert app.paths == []
    lines = b"".join(b"h%d: v\r\n" % i for i in range(MAX_HEADERS - 2))  # + Host, Connection
    answer = live.exchange(
        b"GET /ok HTTP/1.1\r\nHost: x\r\n" + lines + b"Connection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert app.paths == ["/ok"]


def test_an_oversized_pipelined_head_gets_no_answer_and_the_first_request_its_own(
    live: Live, app: RecordingApp
) -> None:
    # Both heads in one write: the second is mostly inside the piece that ends the first, where
    # only the parser's reports count it.
    second = b"GET /second HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * LIMIT + b"\r\n\r\n"
    answer = live.exchange(head("/first", close=False) + second)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"/first")
    assert answer.count(b"HTTP/1.1") == 1  # no 431 that could be taken for /first's answer
    assert app.paths == ["/first"]


def test_oversized_trailers_are_refused(live: Live, app: RecordingApp) -> None:
    request = (
        b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Trailer: " + b"t" * (4 * LIMIT)
    )
    assert_431(live.exchange(request))
    assert app.paths == ["/chunked"]  # the head was fine; the body never completed
