"""Byte transports for the asyncio client: the port is opened by :meth:`iontodrive.link.SerialLink.open`
(one opening path: the same URLs, exclusive ports and :class:`~iontodrive.errors.PortInUseError` as the
threaded client), then read through the event loop.

* :class:`FdTransport` -- POSIX serial ports and ptys (the port's file descriptor) and ``socket://`` (the
  socket's): :meth:`asyncio.AbstractEventLoop.add_reader` calls back when bytes are there, writes go out at
  once and whatever the kernel does not take is sent when the descriptor is writable
  (:meth:`~asyncio.AbstractEventLoop.add_writer`). Nothing blocks the loop. (A kept library such as
  ``pyserial-asyncio-fast`` would do the same over pyserial's object; the loop's own reader needs no extra
  dependency and reads the descriptor the way :class:`~iontodrive.link.SerialLink` does.)
* :class:`ThreadBridgeTransport` -- ports with no descriptor to wait on (the in-process simulator
  ``sim://``, pyserial wrappers such as ``spy://``): one daemon thread reads the link with its timeout
  and hands the bytes to the loop with :meth:`~asyncio.AbstractEventLoop.call_soon_threadsafe`; writes
  go straight to the link (an in-memory write).

Failures (EOF, EIO, a reset) call ``on_lost(LinkClosedError)`` once, on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from iontodrive.errors import LinkClosedError
from iontodrive.link import READ_CHUNK, SerialLink

logger = logging.getLogger(__name__)

DataCallback = Callable[[bytes], None]
LostCallback = Callable[[LinkClosedError], None]


class AsyncTransport(ABC):
    """What the asyncio client needs from a transport (the two kinds below)."""

    url: str
    link: SerialLink

    @abstractmethod
    def start(self, on_data: DataCallback, on_lost: LostCallback) -> None:
        """Begin reading: ``on_data(bytes)`` for what arrives, ``on_lost(error)`` once when the link dies."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending; never blocks. Raises LinkClosedError when closed or failed."""

    @abstractmethod
    def close(self) -> None:
        """Stop reading and writing at once; the port itself is closed off the loop (pyserial's
        ``socket://`` close sleeps 0.3 s), in the loop's default executor."""

    _closing: asyncio.Future[None] | None = None

    async def wait_closed(self) -> None:
        """Wait (off the loop) until the port is closed (after :meth:`close`)."""
        if self._closing is not None:
            await self._closing
        else:
            await asyncio.get_running_loop().run_in_executor(None, self.link.close)


def open_transport(url: str, loop: asyncio.AbstractEventLoop, **serial_options: Any) -> AsyncTransport:
    """Open ``url`` (as :meth:`SerialLink.open` does) and wrap it for ``loop``.

    Raises:
        PortInUseError: the port is held by another process or client.
        LinkClosedError: it cannot be opened.
    """
    link = SerialLink.open(url, **serial_options)
    try:
        port: Any = link.port
        fd = getattr(port, "fd", None)
        if isinstance(fd, int) and fd >= 0:
            return FdTransport(link, loop, fd, None)
        sock = getattr(port, "_socket", None)  # pyserial's socket:// handler keeps its socket here
        if isinstance(sock, socket.socket):
            sock.setblocking(False)
            return FdTransport(link, loop, sock.fileno(), sock)
        return ThreadBridgeTransport(link, loop)
    except BaseException:
        link.close()
        raise


class FdTransport(AsyncTransport):
    """A file descriptor read through the loop's reader (see the module docstring)."""

    def __init__(
        self, link: SerialLink, loop: asyncio.AbstractEventLoop, fd: int, sock: socket.socket | None
    ) -> None:
        self.link = link
        self.url = link.url
        self._loop = loop
        self._fd = fd
        self._sock = sock
        self._out = bytearray()
        self._writer_on = False
        self._closed = False
        self._on_data: DataCallback | None = None
        self._on_lost: LostCallback | None = None
        os.set_blocking(fd, False)

    def start(self, on_data: DataCallback, on_lost: LostCallback) -> None:
        self._on_data, self._on_lost = on_data, on_lost
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            data = self._sock.recv(READ_CHUNK) if self._sock is not None else os.read(self._fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(f"read from {self.url} failed: {exc}")
            return
        if not data:
            self._lose(f"read from {self.url} failed: end of file")
            return
        assert self._on_data is not None
        self._on_data(data)

    def write(self, data: bytes) -> None:
        if self._closed:
            raise LinkClosedError(f"link {self.url} is closed")
        if self._out:
            self._out += data
            return
        try:
            written = self._sock.send(data) if self._sock is not None else os.write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            written = 0
        except OSError as exc:
            self._lose(f"write to {self.url} failed: {exc}")
            raise LinkClosedError(f"write to {self.url} failed: {exc}") from exc
        if written < len(data):
            self._out += data[written:]
            self._loop.add_writer(self._fd, self._writable)
            self._writer_on = True

    def _writable(self) -> None:
        try:
            written = self._sock.send(self._out) if self._sock is not None else os.write(self._fd, self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(f"write to {self.url} failed: {exc}")
            return
        del self._out[:written]
        if not self._out:
            self._loop.remove_writer(self._fd)
            self._writer_on = False

    def _lose(self, why: str) -> None:
        if self._closed:
            return
        self.close()
        if self._on_lost is not None:
            self._on_lost(LinkClosedError(why))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # the loop may be closed already
            self._loop.remove_reader(self._fd)
            if self._writer_on:
                self._loop.remove_writer(self._fd)
        self._closing = _close_off_loop(self._loop, self.link)


class ThreadBridgeTransport(AsyncTransport):
    """A link without a descriptor, read by one daemon thread (see the module docstring)."""

    def __init__(self, link: SerialLink, loop: asyncio.AbstractEventLoop) -> None:
        self.link = link
        self.url = link.url
        self._loop = loop
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="iontodrive-aio-bridge", daemon=True)
        self._on_data: DataCallback | None = None
        self._on_lost: LostCallback | None = None

    def start(self, on_data: DataCallback, on_lost: LostCallback) -> None:
        self._on_data, self._on_lost = on_data, on_lost
        self._thread.start()

    def _run(self) -> None:
        assert self._on_data is not None and self._on_lost is not None
        while not self._closed.is_set():
            try:
                data = self.link.read()
            except LinkClosedError as exc:
                if not self._closed.is_set():
                    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                        self._loop.call_soon_threadsafe(self._on_lost, exc)
                return
            if data:
                try:
                    self._loop.call_soon_threadsafe(self._on_data, data)
                except RuntimeError:  # the loop is closed
                    return

    def write(self, data: bytes) -> None:
        self.link.write(data)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()  # the thread's read returns within the link's read timeout; never joined here
        self._closing = _close_off_loop(self._loop, self.link)


def _close_off_loop(loop: asyncio.AbstractEventLoop, link: SerialLink) -> asyncio.Future[None] | None:
    """Close ``link`` in ``loop``'s executor (or here, when the loop is closed or not running)."""
    try:
        if loop.is_running() and not loop.is_closed():
            return loop.run_in_executor(None, link.close)
    except RuntimeError:
        pass
    link.close()
    return None
