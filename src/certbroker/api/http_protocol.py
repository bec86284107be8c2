"""uvicorn's httptools protocol with a request-head size limit (HTTP 431).

httptools (llhttp) has no limit of its own: it buffers a header name or value, however long, until
its end arrives. h11 has one (`h11_max_incomplete_event_size`), which is why `serve` used h11; this
subclass gives httptools the same limit so the C parser can be used (docs/PERFORMANCE.md, P9).

Two counts, each cheap:
- bytes fed to the parser while it reads a header section (request line + headers, or the
  trailers of a chunked body). Data is fed in pieces no longer than the room left, so a head that
  has not ended within the limit is refused before more is buffered; this is exact for the first
  request of a connection and after an idle keep-alive. A section that starts in the middle of a
  piece (a pipelined request) is counted from the next piece, so at most one piece more (<= the
  limit) is buffered;
- the request target and headers as the parser reports them (`on_url`, `on_header`), which also
  covers heads that arrive whole in one read, and the number of headers.

The limit is uvicorn's own `h11_max_incomplete_event_size` option (the same meaning for h11): it
travels inside uvicorn's `Config`, which `serve --workers N` pickles into each child process, so
the class stays an importable module-level class instead of one made per limit.
"""

from __future__ import annotations

import inspect
import json
import logging
from typing import Any, Final, cast

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# h11's default, used when uvicorn's option is unset.
DEFAULT_MAX_HEAD_BYTES: Final = 16 * 1024
# Apache's LimitRequestFields and Tomcat's maxHeaderCount; head and trailers together.
MAX_HEADERS: Final = 100
# Per header, ": " and CRLF around what on_header reports.
_HEADER_OVERHEAD: Final = 4

# What the subclass overrides or calls on uvicorn's class; checked at start-up (check_uvicorn).
_HOOKS: Final = (
    "data_received",
    "send_400_response",
    "on_url",
    "on_header",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
)

log = logging.getLogger("uvicorn.error")


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops and uvicorn answers its parse error."""


def check_uvicorn() -> None:
    """Fail at start-up, not by serving without a limit, if uvicorn or httptools changed the hooks
    this module relies on."""
    missing = [name for name in _HOOKS if not callable(getattr(HttpToolsProtocol, name, None))]
    if missing:
        raise RuntimeError(
            f"uvicorn {uvicorn.__version__}: HttpToolsProtocol has no {', '.join(missing)}; "
            "the request-head limit cannot be enforced (set CERTBROKER_HTTP_PARSER=h11)"
        )
    if not issubclass(httptools.HttpParserCallbackError, httptools.HttpParserError):
        raise RuntimeError("httptools: callback errors are no longer parser errors")
    if "h11_max_incomplete_event_size" not in inspect.signature(uvicorn.Config).parameters:
        raise RuntimeError(f"uvicorn {uvicorn.__version__}: no h11_max_incomplete_event_size")


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that answers 431 to a request head (or trailers) over the limit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = self.config.h11_max_incomplete_event_size
        self._max_head = DEFAULT_MAX_HEAD_BYTES if limit is None else int(limit)
        self._in_section = True  # the parser is (or will next be) reading header lines
        self._in_head = True  # ... and they are a request head, not trailers
        self._section_fed = 0  # bytes fed since the section started
        self._reported = 0  # target + headers (+ trailers) of this message, as reported
        self._headers = 0
        self._refused = False
        self._reason = ""

    # --- feeding -------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        view: bytes | memoryview = data
        while view:
            room = self._max_head - self._section_fed if self._in_section else self._max_head
            piece: bytes | memoryview = view
            if len(view) > room:
                whole = memoryview(view)  # slices without copying
                piece, view = whole[:room], whole[room:]
            else:
                view = b""
            if self._in_section:
                self._section_fed += len(piece)
            # httptools feeds any buffer; uvicorn only hands the data to the parser.
            super().data_received(cast(bytes, piece))
            if self._refused or self.transport.is_closing() or self._upgraded():
                return  # uvicorn too drops what follows an upgrade in the same read
            if self._in_section and self._section_fed >= self._max_head:
                # The section did not end within the limit (its end would be past it).
                self._refuse(f"headers not complete within {self._max_head} bytes")
                return

    def _upgraded(self) -> bool:
        return self.parser is None or bool(self.parser.should_upgrade())

    # --- parser callbacks ----------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._count(len(url), header=False)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + _HEADER_OVERHEAD, header=True)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_section = self._in_head = False
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        # The last chunk (size 0) is followed by trailers; any other by its data (on_body).
        self._in_section, self._section_fed = True, 0

    def on_body(self, body: bytes) -> None:
        self._in_section = False
        super().on_body(body)

    def on_chunk_complete(self) -> None:
        self._in_section = False

    def on_message_complete(self) -> None:
        self._in_section = self._in_head = True
        self._section_fed = self._reported = self._headers = 0
        super().on_message_complete()

    def _count(self, size: int, *, header: bool) -> None:
        self._reported += size
        self._headers += header
        if self._reported > self._max_head:
            reason = f"headers larger than {self._max_head} bytes"
        elif self._headers > MAX_HEADERS:
            reason = f"more than {MAX_HEADERS} headers"
        else:
            return
        self._refused = True
        self._reason = reason
        raise _HeadTooLarge(reason)

    # --- answering -----------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to a parser error, which our callbacks raise past the limit.
        if self._refused:
            self._answer(self._reason)
        else:
            super().send_400_response(msg)

    def _refuse(self, reason: str) -> None:
        self._refused = True
        self._reason = reason
        self._answer(reason)

    def _answer(self, reason: str) -> None:
        log.warning("request refused with 431: %s", reason)
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._in_head and cycle is not None and not cycle.response_complete:
            # A pipelined head while the previous response is still being made: an answer now
            # would be taken for that one. Finish it, then close; the refused request gets none.
            cycle.keep_alive = False
            self.flow.pause_reading()
            return
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(self._431(reason))
        self.transport.close()

    def _431(self, reason: str) -> bytes:
        # The API envelope, like the 429 of the rate limits (docs/API.md).
        text = f"request {reason}"
        body = json.dumps({"code": 431, "errors": text, "msg": text}).encode()
        lines = [b"HTTP/1.1 431 Request Header Fields Too Large"]
        lines += [name + b": " + value for name, value in self.server_state.default_headers]
        lines += [
            b"content-type: application/json",
            b"content-length: " + str(len(body)).encode(),
            b"connection: close",
        ]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body
