"""Dose sessions from asyncio: :class:`AsyncStimulator` and :class:`AsyncSession`, on the one session engine.

There is no second copy of session logic here. An :class:`AsyncStimulator` holds an
:class:`iontodrive.Stimulator` (the session engine: checks, ceilings, records, progress, outcome, the
driver's over-current guard, the heartbeat gate) whose device client is a :class:`~iontodrive.aio.LoopClient`
over an :class:`~iontodrive.aio.AsyncDeviceClient`. So everything that happens per sample -- reading,
the safety checks, heartbeats, the record's input, progress and the callbacks -- runs on the event loop,
with no thread of its own. What the engine does between samples stays the engine's: its ``start()``
checks run in the loop's default executor, its ``wait()`` in one thread per session that sleeps on a
condition and polls status every 0.5 s, and its record writer in its own thread (fsync must not stall
the loop). ``bench/many_devices.py --engine`` measures what that costs.

Callbacks (``on_progress``, ``on_event``) are called **on the loop**; a coroutine function may be given,
whose coroutine then runs as a task (not awaited by the session; one that raises ends the session as a
plain callback that raises). Keep plain callbacks short: they share the loop with the safety checks.

Every way out ramps down, through the engine's own paths:

* **cancelling the task** that awaits ``deliver()``, ``start()`` or ``wait()``: the engine's ``wait()`` gets
  a :class:`TaskCancelled` (a ``KeyboardInterrupt``) raised *in its own thread*, exactly as Ctrl-C reaches
  it -- so it ramps down, writes the record (outcome ``interrupted``) and raises ``SessionInterrupted``;
  then the cancellation goes on. A ``start()`` that is cancelled while the Start is on its way first gets
  its handle, then ramps down the same way (no session without a handle, issue 13).
* **Ctrl-C** under :func:`asyncio.run`: asyncio cancels the main task, which is the case above.
* **SIGTERM**: ``deliver()`` (on the main thread) turns it into a cancellation of its task, as the threaded
  ``deliver()`` turns it into an interrupt.
* **a closed or stopped loop**: the heartbeats are sent from the loop, so they stop with it and the
  device's watchdog ramps the output down (S10, within about 2.5 s by default); the engine's calls then
  fail as a lost link (:class:`~iontodrive.aio.LoopClient`).
* **an exception in a callback**: the engine ramps down and ``wait()`` re-raises it, as in the threaded API.
* **leaving ``async with``** closes the stimulator, which ramps down any running session (S16).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from iontodrive.protocol import Event, IdentityReport, StatusReport, Telemetry

from .client import AsyncSubscription
from .loop_client import LoopClient

if TYPE_CHECKING:
    from iontodrive import Stimulator
    from iontodrive.prescription import Prescription
    from iontodrive.record import SessionRecord

logger = logging.getLogger(__name__)

CANCEL_RAMP_BOUND_S = 120.0  # a cancelled task waits at most this long for the engine's ramp-down
R = TypeVar("R")
T = TypeVar("T")


class TaskCancelled(KeyboardInterrupt):
    """Raised inside the engine's ``wait()`` thread when the asyncio task awaiting it is cancelled (the
    engine handles it as it handles Ctrl-C: ramp down, record, ``SessionInterrupted``)."""


def _raise_in_thread(thread: threading.Thread, exc_type: type[BaseException]) -> bool:
    """Raise ``exc_type`` in ``thread`` at its next bytecode (how CPython delivers Ctrl-C to a thread
    that waits; the engine's waits are built to survive an interrupt anywhere)."""
    ident = thread.ident
    if ident is None or not thread.is_alive():
        return False
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
    return bool(done == 1)


class AsyncSession:
    """A running session (the engine's handle, awaitable). Create with :meth:`AsyncStimulator.start`."""

    def __init__(self, owner: AsyncStimulator, handle: Any) -> None:
        self._owner = owner
        self.handle = handle  # the engine's session handle (iontodrive's Session / DeviceSession)
        self._record: SessionRecord | None = None

    @property
    def session_id(self) -> str:
        return str(self.handle.session_id)

    @property
    def progress(self) -> Any:
        """The engine's latest :class:`~iontodrive.Progress` (or None)."""
        return self.handle.progress

    @property
    def outcome(self) -> Any:
        return self.handle.outcome

    @property
    def finished(self) -> bool:
        return bool(self.handle.finished)

    async def pause(self) -> None:
        await self._owner._call(self.handle.pause)

    async def resume(self) -> None:
        await self._owner._call(self.handle.resume)

    async def set_current(self, current_ma: float) -> None:
        await self._owner._call(self.handle.set_current, current_ma)

    async def stop(self) -> None:
        """Ask for a ramped stop (returns at once; ``wait()`` for the end)."""
        await self._owner._call(self.handle.stop)

    async def abort(self) -> None:
        await self._owner._call(self.handle.abort)

    async def wait(self, timeout_s: float | None = None) -> SessionRecord:
        """Until the session is over and output is at zero; the engine's record. Raises what the engine's
        ``wait()`` raises; cancelled, it ramps down first (module docstring) and then re-raises the
        cancellation."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SessionRecord] = loop.create_future()

        def run() -> None:
            outcome: tuple[Any, BaseException | None] | None = None
            escaped = False  # the interrupt got past the engine's own handling: stop explicitly
            while True:
                try:
                    if outcome is None:
                        try:
                            if escaped:
                                self.handle.stop()
                            outcome = (self.handle.wait(timeout_s), None)
                        except TaskCancelled:
                            escaped = True
                            continue
                        except BaseException as exc:  # handed to the awaiting task, whatever it is
                            outcome = (None, exc)
                    _settle(loop, future, *outcome)
                    return
                except TaskCancelled:  # arrived after wait() was over: nothing left to interrupt
                    continue

        thread = threading.Thread(target=run, name="iontodrive-aio-wait", daemon=True)
        thread.start()
        try:
            record = await asyncio.shield(future)
        except asyncio.CancelledError:
            logger.warning("task cancelled: ramping down the session before going on")
            _raise_in_thread(thread, TaskCancelled)
            with contextlib.suppress(BaseException):  # the engine's ramp-down and record (bounded)
                await asyncio.wait_for(asyncio.shield(future), CANCEL_RAMP_BOUND_S)
            raise
        self._record = record
        return record


def _settle(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, error: BaseException | None
) -> None:
    def settle() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
        loop.call_soon_threadsafe(settle)


class _Opening:
    """``AsyncStimulator.open(url)``: awaitable, or an async context manager."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self._url, self._options = url, options
        self._stim: AsyncStimulator | None = None

    def __await__(self) -> Generator[Any, None, AsyncStimulator]:
        return AsyncStimulator._open(self._url, self._options).__await__()

    async def __aenter__(self) -> AsyncStimulator:
        self._stim = await AsyncStimulator._open(self._url, self._options)
        return self._stim

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stim is not None:
            await self._stim.aclose()


class AsyncStimulator:
    """A stimulator that delivers dose sessions from asyncio (see the module docstring).

    ``async with AsyncStimulator.open(url, **options) as stim:`` -- the URL and options as for
    :meth:`iontodrive.Stimulator.open`.
    """

    def __init__(self, stim: Stimulator, loop: asyncio.AbstractEventLoop) -> None:
        self.stimulator = stim
        self._loop = loop
        self._client: LoopClient = stim.client  # type: ignore[assignment]  # set by _open
        self._subscriptions: list[AsyncSubscription[Any]] = []
        self._removers: list[Callable[[], None]] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @staticmethod
    def open(url: str, **options: Any) -> _Opening:
        """Open ``url`` (off the loop) and identify the device.

        Raises what :meth:`iontodrive.Stimulator.open` raises (``PortInUseError``, ``LinkClosedError``,
        ``LinkTimeoutError``, ``IncompatibleDeviceError``)."""
        return _Opening(url, options)

    @classmethod
    async def _open(cls, url: str, options: dict[str, Any]) -> AsyncStimulator:
        from iontodrive import Stimulator
        from iontodrive.resources import normalise_resource

        if options.get("reconnect_s") is not None:
            raise TypeError("reconnect_s: the asyncio API does not reconnect yet; use iontodrive.Stimulator")
        options.pop("reconnect_s", None)
        url = normalise_resource(url, for_backend="device")
        client = await LoopClient.open(url, **options)
        return cls(Stimulator(client), asyncio.get_running_loop())

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Ramp down any running session (S16) and close, off the loop."""
        if self._closed:
            return
        self._closed = True
        for remove in self._removers:
            remove()
        for sub in list(self._subscriptions):
            sub.close()
        # The ramp-down blocks (the engine's calls), so it runs off the loop; the close itself is awaited
        # here: closing the port uses the loop's executor, which 16 blocked closes would otherwise fill.
        await self._call(self.stimulator.ramp_down_running, "client closed")
        await self._client.aclose()

    async def _call(self, function: Callable[..., R], *args: Any) -> R:
        return await self._loop.run_in_executor(None, lambda: function(*args))

    @property
    def identity(self) -> IdentityReport:
        identity: IdentityReport = self.stimulator.identity
        return identity

    @property
    def client(self) -> LoopClient:
        """The engine's device client (its ``aclient`` is the :class:`~iontodrive.aio.AsyncDeviceClient`)."""
        return self._client

    async def status(self) -> StatusReport:
        """A snapshot of the device's state, output and session (awaited on the loop)."""
        return await self._client.aclient.status()

    # ---------------------------------------------------------------------------------- sessions

    async def start(
        self,
        prescription: Prescription,
        *,
        record_path: str | Path | None = None,
        labels: dict[str, str] | None = None,
        on_progress: Callable[[Any], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        **start_options: Any,
    ) -> AsyncSession:
        """Check and start a session on the engine; its handle. Raises what the engine's ``start()`` raises
        (``SafetyRefusal`` with nothing sent, ``DeviceRefusal``...). Cancelled while starting: the session
        is ramped down as soon as it has a handle, then the cancellation goes on."""
        loop = self._loop  # (no heartbeat gate of its own: the heartbeats are sent from this loop)

        def start() -> Any:
            return self.stimulator.start(
                prescription,
                record_path=record_path,
                labels=labels,
                on_progress=on_progress,
                on_event=on_event,
                **start_options,
            )

        future = loop.run_in_executor(None, start)
        try:
            handle = await asyncio.shield(future)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                handle = await asyncio.shield(future)
                await AsyncSession(self, handle).wait()  # cancelled below: ramps down
            raise
        return AsyncSession(self, handle)

    async def deliver(
        self,
        prescription: Prescription,
        on_progress: Callable[[Any], None] | None = None,
        **options: Any,
    ) -> SessionRecord:
        """Run a whole session and return its record (the engine's). Cancelling the task, Ctrl-C and
        SIGTERM ramp down first (module docstring)."""
        task = asyncio.current_task()
        on_main = threading.current_thread() is threading.main_thread()
        if on_main and task is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            session = await self.start(prescription, on_progress=on_progress, **options)
            return await session.wait()
        finally:
            if on_main and task is not None:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    self._loop.remove_signal_handler(signal.SIGTERM)

    # ------------------------------------------------------------------------------ subscriptions

    def telemetry(self, maxsize: int = 10_000) -> AsyncSubscription[Telemetry]:
        """An async iterator of telemetry samples (bounded; oldest dropped when full)."""
        return self._bridge(Telemetry, self.stimulator.add_telemetry_listener, maxsize)

    def events(self, maxsize: int = 10_000) -> AsyncSubscription[Event]:
        """An async iterator of events, once each, in order."""
        return self._bridge(Event, self.stimulator.add_event_listener, maxsize)

    def _bridge(
        self, kind: type[T], add: Callable[..., Callable[[], None]], maxsize: int
    ) -> AsyncSubscription[T]:
        sub: AsyncSubscription[T] = AsyncSubscription(self, kind, maxsize)
        remove = add(sub._put)  # the engine's listeners are called on the loop
        self._subscriptions.append(sub)
        self._removers.append(remove)
        sub._on_close = remove
        return sub

    def _unsubscribe(self, sub: AsyncSubscription[Any]) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)
        if sub._on_close is not None:
            sub._on_close()
