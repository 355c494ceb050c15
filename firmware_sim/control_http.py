"""The control API over HTTP (JSON) and the web console, a thin shell over :class:`SimController`.

Served by aiohttp (one package that is both the HTTP server and the streaming response, on its own event
loop in one background thread; nothing of it touches the device but through the controller).

========================================  =========================================================
``GET  /``                                the web console (``firmware_sim/console/index.html``)
``GET  /vendor/<file>``                   its vendored JavaScript and CSS (uPlot)
``GET  /api/status``                      :meth:`SimController.snapshot` as JSON
``GET  /api/events?after=N``              events numbered above N since the last power-up
``GET  /api/actions``                     the actions and their parameters
``POST /api/act/<action>``                do it; body: JSON object of parameters (``at_s`` and the
                                          action's own), ``{}`` or empty for none; answers what was
                                          scheduled, or 400 with ``{"error": ...}``
``GET  /api/log``                         the actions asked for so far
``GET  /api/stream?hz=F``                 server-sent events: a snapshot plus the new events, F times
                                          a second (1..50, default 20)
========================================  =========================================================

Access: the server listens on loopback unless ``allow_remote`` and a ``token`` are both given
(:func:`~firmware_sim.bridge_tcp.check_listen_address`); with a token configured every request must carry
it, as ``Authorization: Bearer TOKEN`` or ``?token=TOKEN`` (the console passes on the one in its URL),
else 401. A request from a non-loopback peer without a configured token is refused (403) whatever the
listening address, and so is one whose ``Host`` header names anything but a loopback address (a web page
elsewhere cannot reach the API through DNS rebinding). ``POST`` requests must say ``Content-Type:
application/json`` (415 otherwise), which a page on another origin cannot send without a CORS preflight
that this server never grants.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import ipaddress
import json
import logging
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from .bridge_tcp import check_listen_address
from .control import ACTIONS, PLANT_FAULTS, ControlError, SimController

log = logging.getLogger(__name__)

CONSOLE_DIR = Path(__file__).with_name("console")
_VENDOR = {"uPlot.iife.min.js": "application/javascript", "uPlot.min.css": "text/css"}
_OTHER_PARAMS = {
    "host_silence": ["duration_s"],
    "host_heard": [],
    "link_faults": ["drop_rate", "corrupt_rate"],
    "power_cut": [],
    "reset": [],
    "unplug": ["duration_s"],
    "replug": [],
    "skin": ["r_skin_kohm", "r_series_ohm", "c_skin_nf"],
}


def action_parameters() -> dict[str, list[str]]:
    """Every action with the names of its parameters (besides ``at_s``, which all take)."""
    out: dict[str, list[str]] = {}
    for name in ACTIONS:
        if name in PLANT_FAULTS:
            out[name] = [f.name for f in dataclasses.fields(PLANT_FAULTS[name]) if f.name != "at_s"]
        else:
            out[name] = list(_OTHER_PARAMS[name])
    return out


def _host_is_loopback(host_header: str | None) -> bool:
    """True if a ``Host`` header names a loopback address (``localhost``, 127.x, ``[::1]``, any port)."""
    if not host_header:
        return False
    host = host_header.strip()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.lower() == "localhost" or _is_loopback(host)


def _is_loopback(peer: str | None) -> bool:
    if not peer:
        return False
    try:
        return ipaddress.ip_address(peer.split("%")[0]).is_loopback
    except ValueError:
        return False


class ControlServer:
    """HTTP control API and console for ``controller`` on ``host:port`` (port 0 = a free one).

    Raises:
        RemoteListenRefused: a non-loopback ``host`` without ``allow_remote`` and a token.
    """

    def __init__(
        self,
        controller: SimController,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        allow_remote: bool = False,
    ) -> None:
        check_listen_address(host, allow_remote=allow_remote, token=token)
        self.controller = controller
        self.host = host
        self.port = port
        self.token = token or None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.streams_open = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 10.0) -> ControlServer:
        """Start serving in a background thread; returns once the port is bound.

        Raises:
            OSError: the address cannot be bound (or the server did not come up within ``timeout_s``).
        """
        self._thread = threading.Thread(target=self._serve, name="sim-control", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise OSError(f"the control server did not start within {timeout_s} s")
        if self._error is not None:
            raise OSError(f"cannot serve the control API on {self.host}:{self.port}: {self._error}")
        log.info("control API and console on %s", self.url)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported through start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        app = web.Application(middlewares=[self._guard])
        app.add_routes(
            [
                web.get("/", self._index),
                web.get("/vendor/{name}", self._vendor),
                web.get("/api/status", self._status),
                web.get("/api/events", self._events),
                web.get("/api/actions", self._actions),
                web.get("/api/log", self._log),
                web.post("/api/act/{action}", self._act),
                web.get("/api/stream", self._stream),
            ]
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            await runner.cleanup()

    # ----------------------------------------------------------------------------------------- access

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        peer = request.remote
        if self.token is None:
            if not _is_loopback(peer):
                return web.json_response({"error": "refused: not a loopback client and no token"}, status=403)
            if not _host_is_loopback(request.headers.get("Host")):
                return web.json_response({"error": "refused: Host is not a loopback address"}, status=403)
        else:
            presented = request.query.get("token", "")
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                presented = auth[len("Bearer ") :]
            if not hmac.compare_digest(presented.encode(), self.token.encode()):
                return web.json_response({"error": "refused: a valid token is required"}, status=401)
        if request.method == "POST" and request.content_type != "application/json":
            return web.json_response({"error": "POST needs Content-Type: application/json"}, status=415)
        response: web.StreamResponse = await handler(request)
        return response

    # --------------------------------------------------------------------------------------- handlers

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(CONSOLE_DIR / "index.html", headers={"Cache-Control": "no-store"})

    async def _vendor(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _VENDOR:
            raise web.HTTPNotFound()
        return web.FileResponse(CONSOLE_DIR / "vendor" / name, headers={"Content-Type": _VENDOR[name]})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.controller.snapshot())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        try:
            after = int(request.query.get("after", "0"))
        except ValueError:
            return web.json_response({"error": "after must be an integer"}, status=400)
        return web.json_response(self.controller.events(after))

    async def _actions(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(action_parameters())

    async def _log(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.controller.log)

    async def _act(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["action"]
        text = await request.text()
        try:
            params = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            return web.json_response({"error": f"the body is not JSON: {exc}"}, status=400)
        if not isinstance(params, dict):
            return web.json_response({"error": "the body must be a JSON object"}, status=400)
        try:
            result = self.controller.act(name, params)
        except ControlError as exc:
            status = 404 if name not in ACTIONS else 400
            return web.json_response({"error": str(exc)}, status=status)
        return web.json_response(result)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        try:
            hz = float(request.query.get("hz", "20"))
        except ValueError:
            hz = 0.0
        if not 1.0 <= hz <= 50.0:
            return web.json_response({"error": "hz is out of range: must be in [1, 50]"}, status=400)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        period = 1.0 / hz
        last_event = 0
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        self.streams_open += 1
        try:
            while self._stopped is not None and not self._stopped.is_set():
                snap = self.controller.snapshot()
                events = self.controller.events(last_event) if snap["last_event_no"] != last_event else []
                if events:
                    last_event = events[-1]["no"]
                elif snap["last_event_no"] < last_event:  # a power cut restarted the numbering
                    events = self.controller.events(0)
                    last_event = events[-1]["no"] if events else 0
                snap["events"] = events
                await response.write(f"data: {json.dumps(snap)}\n\n".encode())
                next_t += period
                await asyncio.sleep(max(0.0, next_t - loop.time()))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.streams_open -= 1
        return response
