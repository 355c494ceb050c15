"""The driver's exception tree. Small on purpose: catch :class:`IontodriveError` for everything.

::

    IontodriveError
    ├── LinkError                      the byte link failed
    │   ├── LinkClosedError            the port is closed (by us, or the device went away)
    │   │   └── PortInUseError         the port is open in another process: nothing was written
    │   ├── LinkTimeoutError           no answer before the deadline, retries included
    │   ├── LinkLostError              the link died during a session; the device's watchdog ramps down
    │   └── EventsLostError            device events could not all be delivered (reported, never silent)
    ├── ProtocolViolation              the two ends disagree about the protocol
    │   ├── LocalProtocolError         we tried to send something invalid (wraps EncodeError)
    │   └── RemoteProtocolError        the device sent something invalid or unexpected
    │       └── IncompatibleDeviceError  wrong protocol version
    │           └── ContradictoryIdentityError  limits that contradict the model family (S18)
    ├── DeviceRefusal                  the device answered NACK (code, field, value, range)
    ├── SafetyRefusal (ValueError)     the driver refused before sending anything (prescription, limits)
    ├── DeviceFault                    the device latched a fault or stopped a session on its own
    └── SessionInterrupted             ended early by KeyboardInterrupt or a signal, after ramp-down
"""

from __future__ import annotations

from iontodrive.protocol import ErrorCode, EventCode, Field, MessageType


class IontodriveError(Exception):
    """Base of every exception raised by the driver."""


class LinkError(IontodriveError):
    """The byte link failed."""


class LinkClosedError(LinkError):
    """The link is closed; no more requests can be sent."""


class LinkTimeoutError(LinkError):
    """A request got no answer within its deadline after all retries.

    Attributes: ``request`` (message class name), ``seq``, ``attempts``, ``deadline_s``.
    """

    def __init__(self, request: str, seq: int, attempts: int, deadline_s: float) -> None:
        self.request = request
        self.seq = seq
        self.attempts = attempts
        self.deadline_s = deadline_s
        super().__init__(
            f"{request} (seq {seq}) got no answer after {attempts} attempt(s) within {deadline_s:.3f} s"
        )


class LinkLostError(LinkError):
    """The link was lost while output was on. The device's watchdog (S10) ramps output down by itself."""


class PortInUseError(LinkClosedError):
    """The port is already open elsewhere (another process holds its lock); nothing was written to it."""


class EventsLostError(LinkError):
    """Device events in ``[first, last]`` (``count`` of them) could not be delivered to listeners: the
    device's ring no longer held them, a fetch failed, or a gap was absurdly large. Delivered to error
    listeners, never raised by a request."""

    def __init__(self, count: int, first: int, last: int, why: str) -> None:
        self.count = count
        self.first = first
        self.last = last
        super().__init__(f"{count} device event(s) between {first} and {last} lost: {why}")


class ProtocolViolation(IontodriveError):
    """The two ends disagree about the protocol."""


class LocalProtocolError(ProtocolViolation):
    """We tried to send something the protocol cannot carry (a driver bug or unchecked input)."""


class RemoteProtocolError(ProtocolViolation):
    """The device sent something invalid or unexpected (e.g. a reply of the wrong type)."""


class IncompatibleDeviceError(RemoteProtocolError):
    """The device speaks a protocol version this driver does not support."""

    def __init__(self, device_version: int, supported: tuple[int, ...]) -> None:
        self.device_version = device_version
        self.supported = supported
        super().__init__(
            f"device speaks protocol version {device_version}; this driver supports {list(supported)}"
        )


class ContradictoryIdentityError(IncompatibleDeviceError):
    """The device's identity contradicts its model family (S18): e.g. a "clinic-4" claiming 1 A.

    Attributes: ``model``, ``field`` (the IdentityReport field), ``value`` (reported), ``bound`` (the
    driver's limit of plausibility for that family) and ``reason``. Raised before anything is sent.
    """

    def __init__(self, model: str, field: str, value: int, bound: int, reason: str) -> None:
        self.model = model
        self.field = field
        self.value = value
        self.bound = bound
        self.reason = reason
        self.device_version = -1
        self.supported = ()
        RemoteProtocolError.__init__(
            self, f"device {model!r} reports {field} = {value}: {reason}; refused (S18)"
        )


class DeviceRefusal(IontodriveError):
    """The device refused a request (NACK). Nothing about the session changed.

    Attributes: ``request`` (MessageType), ``code`` (ErrorCode), ``field`` (Field), ``value``,
    ``minimum``, ``maximum`` (0 when not applicable).
    """

    def __init__(
        self,
        request: MessageType | int,
        code: ErrorCode,
        field: Field = Field.NONE,
        value: int = 0,
        minimum: int = 0,
        maximum: int = 0,
    ) -> None:
        self.request = request
        self.code = code
        self.field = field
        self.value = value
        self.minimum = minimum
        self.maximum = maximum
        try:
            request_name = MessageType(request).name
        except ValueError:
            request_name = f"0x{int(request):02X}"
        text = f"device refused {request_name}: {code.name}"
        if field != Field.NONE:
            text += f" ({field.name.lower()} = {value}, allowed [{minimum}, {maximum}])"
        super().__init__(text)


class SafetyRefusal(IontodriveError, ValueError):
    """The driver refused a request before sending anything, because it is unsafe or out of range.

    Attributes: ``field`` (the user-facing name, e.g. ``"current_ma"``), ``value``, ``minimum``,
    ``maximum`` (inclusive; ``None`` when unbounded on that side) and ``reason``.
    """

    def __init__(
        self,
        field: str,
        value: object,
        minimum: float | None = None,
        maximum: float | None = None,
        reason: str = "",
    ) -> None:
        self.field = field
        self.value = value
        self.minimum = minimum
        self.maximum = maximum
        self.reason = reason
        if minimum is not None or maximum is not None:
            lo = "-inf" if minimum is None else f"{minimum:g}"
            hi = "inf" if maximum is None else f"{maximum:g}"
            allowed = f"; allowed [{lo}, {hi}]"
        else:
            allowed = ""
        detail = f": {reason}" if reason else ""
        super().__init__(f"{field} = {value!r} refused{allowed}{detail}")


class DeviceFault(IontodriveError):
    """The device latched a fault or ended a session on its own (over-current, hardware trip).

    Attributes: ``code`` (the EventCode that reported it) and ``value`` (its event value).
    """

    def __init__(self, code: EventCode, value: int = 0, detail: str = "") -> None:
        self.code = code
        self.value = value
        super().__init__(f"device fault {code.name} (value {value}){': ' + detail if detail else ''}")


class SessionInterrupted(IontodriveError):
    """The session was interrupted (KeyboardInterrupt, SIGTERM) and ramped down; the record is complete."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"session interrupted by {reason}; output ramped down")
