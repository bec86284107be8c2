"""A web server that hangs: it accepts connections, reads what the client sends and never
answers. It counts the connections open at once, so tests can see how many checks a validator
runs against it concurrently."""

from __future__ import annotations

import selectors
import socket
import threading
from types import TracebackType


class HangingServer:
    def __init__(self, host: str, port: int) -> None:
        self._listener = socket.create_server((host, port), backlog=512)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready = self._selector.select(timeout=0.05)
            # Closed connections before new ones: a client that gave up one check and started
            # the next must not be counted with both open.
            ready.sort(key=lambda event: event[0].fileobj is self._listener)
            for key, _events in ready:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                else:
                    self._read(sock)

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self._selector.register(conn, selectors.EVENT_READ)
        with self._lock:
            self.accepted += 1
            self.open += 1
            self.max_open = max(self.max_open, self.open)

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            return  # the request: read and never answered
        self._selector.unregister(conn)  # the client gave up (its timeout)
        conn.close()
        with self._lock:
            self.open -= 1

    def __enter__(self) -> HangingServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for key in list(self._selector.get_map().values()):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            sock.close()  # connections still held are reset: their checks end at once
        self._selector.close()
