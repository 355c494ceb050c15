"""Telling the device that its host went away, so that a reply cache never outlives its host.

Protocol v2 (``docs/protocol.md`` §7.3) scopes the memory of answers (S17) to one host session. A host
that vanishes without a word -- a pty whose last slave descriptor closed (EIO), a TCP client that
disconnected, a port unplugged -- ends its host session: the next host must never be answered from the
previous one's cache. The transports know when that happens; the runner knows the device. This module is
the one seam between them:

* a transport derives from :class:`HostPresence` and calls :meth:`HostPresence._host_gone` at the moment
  it loses its host;
* :func:`watch_host` (called by :class:`~firmware_sim.runner.DeviceRunner`) installs the callback on a
  transport and on every transport it wraps (``inner``, e.g. :class:`~firmware_sim.wired.WiredTransport`),
  and returns the function that removes it.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["HostPresence", "watch_host"]


class HostPresence:
    """Mixin for a transport that can tell when its host goes away (see the module docstring)."""

    on_host_gone: Callable[[], None] | None = None

    def _host_gone(self) -> None:
        """The host went away (closed the port, disconnected, or the port was unplugged)."""
        callback = self.on_host_gone
        if callback is not None:
            callback()


def watch_host(transport: object, callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` whenever ``transport`` (or a transport it wraps) loses its host; return the
    function that stops it. Transports that cannot tell are left alone."""
    watched: list[HostPresence] = []
    seen: set[int] = set()
    layer: object | None = transport
    while layer is not None and id(layer) not in seen:
        seen.add(id(layer))
        if isinstance(layer, HostPresence):
            layer.on_host_gone = callback
            watched.append(layer)
        layer = getattr(layer, "inner", None)

    def unwatch() -> None:
        for item in watched:
            if item.on_host_gone is callback:
                item.on_host_gone = None

    return unwatch
