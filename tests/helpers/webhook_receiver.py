"""A webhook receiver on 127.0.0.1 that behaves like a careful customer's endpoint.

It verifies `X-Certbroker-Signature` (written here from the documented format, independently of
certbroker's code), processes each event id once (de-duplicating on `X-Certbroker-Delivery`),
and can be told to misbehave: `script` lists what to do with the next requests (`fail`: HTTP 500
without processing), `lose_types` names event types whose first processing loses its answer (the
connection closes without one: a lost 2xx).
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Received:
    delivery_id: str
    event_type: str
    signature: str
    body: bytes
    host: str | None
    path: str
    signature_ok: bool
    answer: str  # fail | lose | processed | duplicate


def verify_signature(secret: str, header: str, body: bytes) -> bool:
    """docs/API.md: `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    if "t" not in parts or "v1" not in parts or not parts["t"].isdigit():
        return False
    expected = hmac.new(
        secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


class WebhookReceiver:
    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.script: list[str] = []
        self.lose_types: set[str] = set()
        self.requests: list[Received] = []
        self.processed: Counter[str] = Counter()
        self.events: list[dict[str, Any]] = []  # processed payloads, in arrival order
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answer = receiver._handle(self.headers, self.path, body)
                if answer == "lose":
                    self.close_connection = True  # processed, but the 2xx never leaves
                    return
                status = 500 if answer == "fail" else 200
                reply = b"try again later" if status == 500 else b"ok"
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, host: str = "127.0.0.1", path: str = "/hook") -> str:
        return f"http://{host}:{self.port}{path}"

    def _handle(self, headers: Any, path: str, body: bytes) -> str:
        delivery_id = headers.get("X-Certbroker-Delivery", "")
        event_type = headers.get("X-Certbroker-Event", "")
        signature = headers.get("X-Certbroker-Signature", "")
        with self._lock:
            ok = self.secret is not None and verify_signature(self.secret, signature, body)
            answer = self.script.pop(0) if self.script else "process"
            if answer == "fail":
                pass
            elif delivery_id in self.processed:
                answer = "duplicate"  # de-duplication: acknowledged, not processed again
            elif ok:
                self.processed[delivery_id] += 1
                self.events.append(json.loads(body))
                answer = "lose" if event_type in self.lose_types else "processed"
                self.lose_types.discard(event_type)
            else:
                answer = "fail"  # a careful receiver refuses what it cannot verify
            self.requests.append(
                Received(
                    delivery_id=delivery_id,
                    event_type=event_type,
                    signature=signature,
                    body=body,
                    host=headers.get("Host"),
                    path=path,
                    signature_ok=ok,
                    answer=answer,
                )
            )
            return answer

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
