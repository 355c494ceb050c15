"""TCP transport: the simulator serves ``socket://HOST:PORT`` clients, one at a time (cross-platform).

One client at a time, as a serial port has one owner: while a client is connected, another that connects
is refused (accepted and closed at once, counted in :attr:`TcpTransport.refused_clients`, logged with
both addresses); the connected host notices nothing. When the client disconnects the next one is served;
while none is connected the device keeps running and its output is dropped.

Access: by default only a loopback address may be listened on. Any other (``0.0.0.0``, a LAN address)
needs ``allow_remote=True`` *and* a ``token``; then every client must send ``token`` and a newline
(``b"TOKEN\n"``) as its first bytes, within :data:`AUTH_TIMEOUT_S`, or it is disconnected; what follows
the newline is protocol bytes. On loopback no token is asked for.

:meth:`TcpTransport.unplug` closes the client and stops listening (new connections are refused by the
kernel); :meth:`TcpTransport.replug` listens on the same port again.

TCP never loses bytes either: what the socket does not take at once (its send buffer full because the
client does not read) waits in an :class:`~firmware_sim.outbuffer.OutBuffer` and is sent when the socket is
writable again (:meth:`TcpTransport.read` waits for that too); above the buffer's cap whole frames are
shed, telemetry first.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import select
import socket
import time

from .host_presence import HostPresence
from .outbuffer import DEFAULT_CAP_BYTES, OutBuffer, OutputCounters

log = logging.getLogger(__name__)

AUTH_TIMEOUT_S = 5.0
_MAX_TOKEN_LINE = 1024


class RemoteListenRefused(ValueError):
    """Listening beyond loopback was asked for without ``allow_remote`` and a token."""


def is_loopback(host: str) -> bool:
    """True if every address ``host`` resolves to is a loopback address (``localhost``, 127.x, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return False
    addresses = {str(info[4][0]) for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_listen_address(host: str, *, allow_remote: bool, token: str | None) -> None:
    """Refuse a non-loopback ``host`` unless ``allow_remote`` and a non-empty ``token`` are both given.

    Raises:
        RemoteListenRefused: naming the address and what is missing.
    """
    if is_loopback(host):
        return
    missing = [what for what, ok in (("--allow-remote", allow_remote), ("a --token", bool(token))) if not ok]
    if missing:
        raise RemoteListenRefused(
            f"listening on {host!r} (beyond loopback) needs {' and '.join(missing)}: anyone who reaches "
            "that address could drive the simulated stimulator"
        )


class TcpTransport(OutputCounters, HostPresence):
    """Listening socket plus at most one client. Port 0 picks a free port; :attr:`port` has the real one.

    ``out_cap_bytes`` bounds the output waiting for a client that does not read; ``send_buffer_bytes``
    sets the kernel send buffer of accepted clients (SO_SNDBUF; None = the system's, which grows to
    megabytes -- tests use a small one to see back-pressure sooner). :attr:`dropped_bytes`
    counts output bytes that never reached a client; :attr:`dropped_frames` / :attr:`dropped_telemetry`
    the whole frames shed for a client that did not read.

    ``token`` / ``allow_remote``: see the module docstring.

    Raises:
        RemoteListenRefused: a non-loopback ``host`` without ``allow_remote`` and a token.
        OSError: the address cannot be bound.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        out_cap_bytes: int = DEFAULT_CAP_BYTES,
        send_buffer_bytes: int | None = None,
        *,
        token: str | None = None,
        allow_remote: bool = False,
    ) -> None:
        check_listen_address(host, allow_remote=allow_remote, token=token)
        self._server: socket.socket | None = socket.create_server((host, port), reuse_port=False)
        self._server.setblocking(False)
        self.host = host
        self.port = self._server.getsockname()[1]
        # a token is asked of clients only beyond loopback: on loopback the port is as open as a local
        # serial port, and the driver's socket:// opening sends no token (so --token for the control API
        # does not lock the driver out)
        self._token = token.encode() if token and not is_loopback(host) else None
        self._client: socket.socket | None = None
        self._client_addr: object = None
        self._pending: socket.socket | None = None  # connected, token not yet presented
        self._pending_since = 0.0
        self._pending_buf = bytearray()
        self._out = OutBuffer(out_cap_bytes)
        self._send_buffer = send_buffer_bytes
        self.connects = 0
        self.refused_clients = 0
        self.rejected_tokens = 0
        self.plugged = True
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
                self._host_gone()  # its reply cache goes with it (protocol v2)

    def _accept(self) -> None:
        assert self._server is not None
        try:
            conn, addr = self._server.accept()
        except BlockingIOError:
            return
        if self._client is not None or self._pending is not None:  # one host at a time, as on a serial port
            self.refused_clients += 1
            log.warning(
                "refused a second client from %s: %s holds the port (the session stays with it)",
                addr,
                self._client_addr,
            )
            conn.close()
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._send_buffer is not None:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        self._client_addr = addr
        if self._token is not None:
            self._pending, self._pending_since = conn, time.monotonic()
            self._pending_buf.clear()
            return
        self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        self._client = conn
        self.connects += 1
        log.info("client connected from %s", self._client_addr)

    def _authenticate(self) -> bytes:
        """Read the pending client's token line; admit it (returning the bytes after the line) or drop it."""
        conn = self._pending
        assert conn is not None and self._token is not None
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            data = b""
        self._pending_buf += data
        newline = self._pending_buf.find(b"\n")
        if not data or (newline < 0 and len(self._pending_buf) > _MAX_TOKEN_LINE):
            self._reject_pending("no token")
            return b""
        if newline < 0:
            return b""
        presented = bytes(self._pending_buf[:newline]).rstrip(b"\r")
        rest = bytes(self._pending_buf[newline + 1 :])
        if not hmac.compare_digest(presented, self._token):
            self._reject_pending("wrong token")
            return b""
        self._pending = None
        self._admit(conn)
        return rest

    def _reject_pending(self, why: str) -> None:
        if self._pending is not None:
            self.rejected_tokens += 1
            log.warning("client from %s disconnected: %s", self._client_addr, why)
            self._pending.close()
            self._pending = None

    def unplug(self) -> None:
        """The cable is pulled: the client is disconnected and nobody can connect until :meth:`replug`."""
        if not self.plugged:
            return
        self._drop_client()
        self._reject_pending("unplugged")
        if self._server is not None:
            self._server.close()
            self._server = None
        self.plugged = False
        log.info("unplugged %s", self.url)

    def replug(self) -> None:
        """Listen on the same address and port again."""
        if self.plugged:
            return
        self._server = socket.create_server((self.host, self.port), reuse_port=False)
        self._server.setblocking(False)
        self.plugged = True
        log.info("replugged %s", self.url)

    def read(self, timeout: float) -> bytes:
        """Bytes from the client, waiting at most ``timeout`` s; accepts clients and sends waiting output."""
        deadline = time.monotonic() + timeout
        while True:
            if self._server is None:  # unplugged
                time.sleep(max(0.0, deadline - time.monotonic()))
                return b""
            client = self._client
            pending = self._pending
            watch: list[socket.socket] = [self._server]
            if client is not None:
                watch.append(client)
            if pending is not None:
                watch.append(pending)
                if time.monotonic() - self._pending_since > AUTH_TIMEOUT_S:
                    self._reject_pending("no token within the time allowed")
                    continue
            writers = [client] if client is not None and self._out else []
            wait = max(0.0, timeout) if pending is None else min(max(0.0, timeout), 0.1)
            readable, writable, _ = select.select(watch, writers, [], wait)
            if pending is not None and pending in readable:
                rest = self._authenticate()
                if rest:
                    return rest
                if self._client is not None:
                    continue
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
        self._reject_pending("closing")
        if self._server is not None:
            self._server.close()
            self._server = None
