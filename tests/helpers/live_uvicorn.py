"""A real uvicorn server on a free loopback port, in a thread, for tests that speak raw HTTP."""

from __future__ import annotations

import socket
import threading
from typing import Any, Self

import uvicorn

from tests.helpers.challtestsrv import free_port


class LiveUvicorn:
    def __init__(self, app: Any, **options: Any) -> None:
        self.port = free_port()
        options = {"log_config": None, **options, "host": "127.0.0.1", "port": self.port}
        config = uvicorn.Config(app, lifespan="off", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.settimeout(30)
        return sock
