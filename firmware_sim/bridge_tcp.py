"""TCP transport: the simulator serves ``socket://HOST:PORT`` clients, one at a time (cross-platform).

A client that disconnects is simply replaced by the next one that connects; while no client is
connected the device keeps running and its output is dropped.
"""

from __future__ import annotations

import logging
import select
import socket

log = logging.getLogger(__name__)


class TcpTransport:
    """Listening socket plus at most one client. Port 0 picks a free port; :attr:`port` has the real one.

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = socket.create_server((host, port), reuse_port=False)
        self._server.setblocking(False)
        self.host = host
        self.port = self._server.getsockname()[1]
        self._client: socket.socket | None = None
        self.connects = 0
        self.dropped_bytes = 0

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _drop_client(self) -> None:
        if self._client is not None:
            log.info("client disconnected")
            try:
                self._client.close()
            finally:
                self._client = None

    def read(self, timeout: float) -> bytes:
        watch = [self._server] if self._client is None else [self._client, self._server]
        readable, _, _ = select.select(watch, [], [], timeout)
        if self._server in readable:
            try:
                conn, addr = self._server.accept()
            except BlockingIOError:
                conn = None
            if conn is not None:
                if self._client is not None:  # a new client replaces a stale one
                    self._drop_client()
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._client = conn
                self.connects += 1
                log.info("client connected from %s", addr)
        if self._client is not None and self._client in readable:
            try:
                data = self._client.recv(65536)
            except (BlockingIOError, InterruptedError):
                return b""
            except OSError:
                self._drop_client()
                return b""
            if not data:
                self._drop_client()
            return data
        return b""

    def write(self, data: bytes) -> None:
        if self._client is None:
            self.dropped_bytes += len(data)
            return
        view = memoryview(data)
        while view:
            try:
                n = self._client.send(view)
            except BlockingIOError:
                self.dropped_bytes += len(view)
                return
            except OSError:
                self._drop_client()
                self.dropped_bytes += len(view)
                return
            view = view[n:]

    def close(self) -> None:
        self._drop_client()
        self._server.close()
