"""TCP transport: the simulator serves ``socket://HOST:PORT`` clients, one at a time (cross-platform).

A client that disconnects is simply replaced by the next one that connects; while no client is
connected the device keeps running and its output is dropped.

TCP never loses bytes either: what the socket does not take at once (its send buffer full because the
client does not read) waits in an :class:`~firmware_sim.outbuffer.OutBuffer` and is sent when the socket is
writable again (:meth:`TcpTransport.read` waits for that too); above the buffer's cap whole frames are
shed, telemetry first.
"""

from __future__ import annotations

import logging
import select
import socket
import time

from .outbuffer import DEFAULT_CAP_BYTES, OutBuffer, OutputCounters

log = logging.getLogger(__name__)


class TcpTransport(OutputCounters):
    """Listening socket plus at most one client. Port 0 picks a free port; :attr:`port` has the real one.

    ``out_cap_bytes`` bounds the output waiting for a client that does not read; ``send_buffer_bytes``
    sets the kernel send buffer of accepted clients (SO_SNDBUF; None = the system's, which grows to
    megabytes -- tests use a small one to see back-pressure sooner). :attr:`dropped_bytes`
    counts output bytes that never reached a client; :attr:`dropped_frames` / :attr:`dropped_telemetry`
    the whole frames shed for a client that did not read.

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        out_cap_bytes: int = DEFAULT_CAP_BYTES,
        send_buffer_bytes: int | None = None,
    ) -> None:
        self._server = socket.create_server((host, port), reuse_port=False)
        self._server.setblocking(False)
        self.host = host
        self.port = self._server.getsockname()[1]
        self._client: socket.socket | None = None
        self._out = OutBuffer(out_cap_bytes)
        self._send_buffer = send_buffer_bytes
        self.connects = 0
        self._dropped_unconnected = 0

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _drop_client(self) -> None:
        if self._client is not None:
            log.info("client disconnected")
            self._out.clear()  # the next client must not read the previous one's frames
            try:
                self._client.close()
            finally:
                self._client = None

    def _accept(self) -> None:
        try:
            conn, addr = self._server.accept()
        except BlockingIOError:
            return
        if self._client is not None:  # a new client replaces a stale one
            self._drop_client()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._send_buffer is not None:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        self._client = conn
        self.connects += 1
        log.info("client connected from %s", addr)

    def read(self, timeout: float) -> bytes:
        """Bytes from the client, waiting at most ``timeout`` s; accepts clients and sends waiting output."""
        deadline = time.monotonic() + timeout
        while True:
            client = self._client
            watch = [self._server] if client is None else [client, self._server]
            writers = [client] if client is not None and self._out else []
            readable, writable, _ = select.select(watch, writers, [], max(0.0, timeout))
            if self._server in readable:
                self._accept()
            if client is not None and client is self._client:
                if writable:
                    self._flush()
                if client in readable and self._client is client:
                    return self._recv(client)
            if not readable and not writable:
                return b""
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return b""

    def _recv(self, client: socket.socket) -> bytes:
        try:
            data = client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            self._drop_client()
            return b""
        if not data:
            self._drop_client()
        return data

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the client and send what the socket takes now (never blocks, never cuts)."""
        client = self._client
        if client is None:
            self._dropped_unconnected += len(data)
            return
        if not self._out:
            try:
                n = client.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                self._drop_client()
                self._dropped_unconnected += len(data)
                return
            if n == len(data):
                return
            data = data[n:]
        self._out.append(data)
        self._flush()

    def _flush(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            self._out.write_to(client.send)
        except BlockingIOError:
            pass
        except OSError:
            self._drop_client()

    def close(self) -> None:
        self._drop_client()
        self._server.close()
