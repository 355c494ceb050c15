"""The session engine's client, on an event loop: :class:`LoopClient`.

The one session engine (:class:`iontodrive.Stimulator` and its :class:`~iontodrive.sessions.device.
DeviceSession`) is written against a *blocking* device client. :class:`LoopClient` is that client for an
:class:`~iontodrive.aio.AsyncDeviceClient`: every blocking call made from an engine thread (``start()``'s
checks, ``wait()``'s status backstop, ``stop()``...) runs as a coroutine on the client's loop and its caller
waits for it; every listener the engine registers is called *on the loop*, by the asyncio client (safety
listeners as telemetry arrives, ordinary ones on its dispatch task). So the reading, the safety checks, the
heartbeats, the records' input and the user's callbacks cost no thread of their own: a session keeps only
the engine's ``wait()`` thread (asleep on a condition, it wakes every 0.5 s to poll status) and its record
writer (issue 16).

Rules that make this safe:

* **Nothing blocks the loop.** A blocking call made *on* the loop thread would wait for the loop it stops:
  it raises ``RuntimeError`` at once instead. The one call the engine makes from a safety listener, the
  first ``Abort`` of the driver's over-current trip, goes through :meth:`LoopClient.send_safety_command`,
  which on the loop sends the frame from a task on the loop's next turn and does not wait for the answer.
* **A stopped or closed loop is a dead link.** A call whose loop is closed raises ``LinkClosedError``; one
  whose loop stops while it waits gives up after the request's own deadline (``timeout_s`` x attempts,
  plus :data:`LOOP_GRACE_S`) with ``LinkClosedError`` too (the request itself raises ``LinkTimeoutError``
  within that time when the loop runs and the device is silent). Heartbeats come from the loop too, so a
  loop that stops stops them, and the device's watchdog ramps the output down (S10).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from iontodrive.clientcore import LinkStatistics
from iontodrive.errors import IontodriveError, LinkClosedError, LinkTimeoutError
from iontodrive.protocol import ContactReport, Event, IdentityReport, Message, StatusReport, Telemetry

from .client import AsyncDeviceClient, AsyncSubscription

logger = logging.getLogger(__name__)

LOOP_GRACE_S = 2.0
"""Seconds a blocking call waits beyond its request's own deadline for a loop that stopped answering."""

R = TypeVar("R")


class LoopClient:
    """A blocking device client (what the session engine uses) over an :class:`AsyncDeviceClient`.

    Call the blocking methods from any thread but the loop's; listeners run on the loop. See the module
    docstring for the rules.
    """

    def __init__(self, client: AsyncDeviceClient) -> None:
        self.aclient = client
        self._loop = client.loop
        self._loop_thread: int | None = None
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    async def open(cls, url: str, **options: Any) -> LoopClient:
        """Open ``url`` with :meth:`AsyncDeviceClient.open` (the same options) on the running loop."""
        client = cls(await AsyncDeviceClient.open(url, **options))
        client._loop_thread = threading.get_ident()
        return client

    # ------------------------------------------------------------------------------ running calls

    def _on_loop_thread(self) -> bool:
        if self._loop_thread is None:  # learnt on first use when built outside open()
            with contextlib.suppress(RuntimeError):
                if asyncio.get_running_loop() is self._loop:
                    self._loop_thread = threading.get_ident()
        return threading.get_ident() == self._loop_thread

    def _bound_s(self, timeout_s: float | None = None, retries: int | None = None) -> float:
        """The request's own deadline (``timeout_s`` x attempts, the client's unless given) plus
        :data:`LOOP_GRACE_S`."""
        client = self.aclient
        attempts = 1 + (client.retries if retries is None else retries)
        return (client.timeout_s if timeout_s is None else timeout_s) * attempts + LOOP_GRACE_S

    def _call(self, make: Callable[[], Coroutine[Any, Any, R]], what: str, bound_s: float | None = None) -> R:
        """Run ``make()`` on the loop and wait for it (bounded); see the module docstring."""
        if self._loop.is_closed():
            raise LinkClosedError(f"link {self.url}: its event loop is closed")
        if self._on_loop_thread():
            if self._loop.is_running():
                raise RuntimeError(f"{what} would block the event loop: await the asyncio client instead")
            raise LinkClosedError(f"link {self.url}: its event loop is not running (called from its thread)")
        coroutine = make()
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError as exc:  # closed between the check and the call
            coroutine.close()
            raise LinkClosedError(f"link {self.url}: its event loop is closed") from exc
        bound = bound_s if bound_s is not None else self._bound_s()
        try:
            return future.result(bound)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise LinkClosedError(
                f"link {self.url}: its event loop did not run {what} within {bound:.1f} s"
            ) from None
        except concurrent.futures.CancelledError:
            raise LinkClosedError(
                f"link {self.url}: {what} was cancelled (the loop is shutting down)"
            ) from None

    # ----------------------------------------------------------------------- what the engine reads

    @property
    def identity(self) -> IdentityReport:
        return self.aclient.identity

    @identity.setter
    def identity(self, identity: IdentityReport) -> None:
        self.aclient.identity = identity

    @property
    def url(self) -> str:
        return self.aclient.url

    @property
    def closed(self) -> bool:
        return self._closed or self.aclient.closed or self._loop.is_closed()

    @property
    def failure(self) -> BaseException | None:
        return self.aclient.failure

    @property
    def watchdog_ms(self) -> int:
        return self.aclient.watchdog_ms

    @property
    def stats(self) -> LinkStatistics:
        return self.aclient.stats

    @property
    def link(self) -> Any:
        """The asyncio transport (the threaded client's is a :class:`~iontodrive.link.SerialLink`)."""
        return self.aclient._transport

    @property
    def last_frame_age_s(self) -> float:
        """Seconds since the last valid frame arrived from the device (the loop's clock)."""
        return self._loop.time() - self.aclient.core.last_received

    @property
    def safety_lag_s(self) -> float:
        return self.aclient.safety_lag_s

    @property
    def heartbeat_withheld(self) -> str | None:
        return self.aclient.heartbeat_withheld

    # -------------------------------------------------------------------------------- requests

    def request(
        self, message: Message, *, timeout_s: float | None = None, retries: int | None = None
    ) -> Message:
        """As :meth:`iontodrive.client.DeviceClient.request` (blocking; not on the loop thread)."""
        return self._call(
            lambda: self.aclient.request(message, timeout_s=timeout_s, retries=retries),
            type(message).__name__,
            self._bound_s(timeout_s, retries),
        )

    def send_safety_command(self, message: Message) -> None:
        """Send ``message`` (``Abort``, ``Stop``) at once with no retry; its answer is not awaited here.

        On the loop thread (a safety listener) it is sent by a task that runs on the loop's next turn (before
        any further telemetry is read), whose answer is logged; elsewhere it waits for the answer. Failures
        are logged, never raised: the caller confirms zero output from telemetry and sends again
        (:meth:`DeviceSession._bring_to_zero`)."""
        if not self._on_loop_thread():
            with contextlib.suppress(IontodriveError):
                self.request(message, retries=0)
            return
        task = self._loop.create_task(self.aclient.request(message, retries=0))
        self._tasks.add(task)
        task.add_done_callback(self._safety_command_done)

    def _safety_command_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("safety command unanswered: %s", task.exception())

    def status(self) -> StatusReport:
        return self._call(self.aclient.status, "GetStatus")

    def identify(self) -> IdentityReport:
        return self._call(self.aclient.identify, "Identify")

    def check_contact(self, target_current_ua: int, probe_current_ua: int = 50) -> ContactReport:
        return self._call(
            lambda: self.aclient.check_contact(target_current_ua, probe_current_ua), "CheckContact"
        )

    def configure_telemetry(self, rate_hz: int) -> None:
        self._call(lambda: self.aclient.configure_telemetry(rate_hz), "ConfigureTelemetry")

    def set_watchdog(self, timeout_ms: int) -> None:
        self._call(lambda: self.aclient.set_watchdog(timeout_ms), "SetWatchdog")

    def clear_fault(self) -> None:
        self._call(self.aclient.clear_fault, "ClearFault")

    def reset(self) -> None:
        self._call(self.aclient.reset, "Reset")

    def heartbeat(self) -> None:
        self._call(self.aclient.heartbeat, "Heartbeat")

    def fetch_events(self, from_event_no: int, max_count: int = 32) -> list[Event]:
        bound_s = 2 * self._bound_s()  # the request and then the replayed events
        return self._call(lambda: self.aclient.fetch_events(from_event_no, max_count), "FetchEvents", bound_s)

    # ------------------------------------------------------------------------------- listeners

    def add_telemetry_listener(
        self, callback: Callable[[Telemetry], Any], *, safety: bool = False
    ) -> Callable[[], None]:
        """As the asyncio client's: called on the loop (``safety=True``: as each sample arrives)."""
        return self.aclient.add_telemetry_listener(callback, safety=safety)

    def add_event_listener(
        self, callback: Callable[[Event], Any], *, safety: bool = False
    ) -> Callable[[], None]:
        return self.aclient.add_event_listener(callback, safety=safety)

    def add_error_listener(self, callback: Callable[[BaseException], None]) -> Callable[[], None]:
        return self.aclient.add_error_listener(callback)

    def gate_heartbeats(self, is_live: Callable[[], bool]) -> Callable[[], None]:
        return self.aclient.gate_heartbeats(is_live)

    def subscribe_telemetry(self, maxsize: int = 10_000) -> AsyncSubscription[Telemetry]:
        """An async iterator (iterate it on the loop)."""
        return self.aclient.telemetry(maxsize)

    def subscribe_events(self, maxsize: int = 10_000) -> AsyncSubscription[Event]:
        return self.aclient.events(maxsize)

    # ---------------------------------------------------------------------------------- closing

    def close(self) -> None:
        """Close the asyncio client (blocking; the engine ramped its session down first). A closed loop
        leaves nothing to close: the device's watchdog ramps down (S10)."""
        if self._closed:
            return
        self._closed = True
        if self._loop.is_closed():
            logger.warning(
                "%s: closed with its event loop already gone; the device's watchdog acts", self.url
            )
            return
        if self._on_loop_thread() and self._loop.is_running():
            raise RuntimeError("LoopClient.close() would block the event loop: await aclose() instead")
        with contextlib.suppress(LinkClosedError, LinkTimeoutError):
            self._call(self.aclient.aclose, "close", bound_s=self._bound_s() + 5.0)

    async def aclose(self) -> None:
        """Close from the loop."""
        self._closed = True
        await self.aclient.aclose()


__all__ = ["LOOP_GRACE_S", "LoopClient"]
