"""A small SCPI instrument base over a VISA resource: write/query with timeouts, a command recorder hook,
``*IDN?`` parsing and the ``:SYST:ERR?`` error queue.

The resource is anything shaped like a pyvisa message-based resource (:class:`VisaResource`: ``write``,
``query``, ``close`` and a ``timeout`` in milliseconds); pyvisa's own resources from any backend (NI-VISA,
pyvisa-py, pyvisa-sim) qualify, and so do test wrappers around them.

Every command goes through :meth:`ScpiInstrument.write` or :meth:`ScpiInstrument.query`, which time-stamp it
with the instrument's clock and hand a :class:`CommandEntry` to the optional recorder (tests use
:class:`CommandLog` to assert command order; a script can write the log to a file as it goes).

Thread-safety: one lock serialises every exchange, so a query's reply always belongs to that query. The
session layer additionally drives an instrument from one thread at a time.

Failure modes: VISA I/O errors and timeouts raise :class:`InstrumentLinkError` (a
:class:`~iontodrive.errors.LinkError`); an instrument that reports errors in its queue raises
:class:`InstrumentError` with every queued message; an unparsable reply raises
:class:`~iontodrive.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol, runtime_checkable

from iontodrive.errors import IontodriveError, LinkError, RemoteProtocolError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 2.0
MAX_ERROR_QUEUE_READS = 32  # the 2400 series queue holds 10 messages, the 2450 and B2900 more


class InstrumentLinkError(LinkError):
    """A VISA read or write failed or timed out. Attributes: ``command`` (what was being sent)."""

    def __init__(self, command: str, detail: str) -> None:
        self.command = command
        super().__init__(f"VISA I/O failed on {command!r}: {detail}")


class InstrumentError(IontodriveError):
    """The instrument's error queue (``:SYST:ERR?``) held errors. Attributes: ``errors`` [(code, text)]."""

    def __init__(self, context: str, errors: list[tuple[int, str]]) -> None:
        self.context = context
        self.errors = errors
        listed = "; ".join(f"{code}: {text}" for code, text in errors)
        super().__init__(f"instrument reported errors after {context}: {listed}")


class UnsupportedInstrumentError(IontodriveError):
    """``*IDN?`` names an instrument no driver here supports. Nothing was sent after ``*IDN?``.

    Attributes: ``idn`` (the reply) and ``supported`` (a list of "manufacturer model" strings).
    """

    def __init__(self, idn: str, supported: list[str]) -> None:
        self.idn = idn
        self.supported = supported
        super().__init__(f"unsupported instrument {idn!r}; supported: {', '.join(supported)}")


@runtime_checkable
class VisaResource(Protocol):
    """What :class:`ScpiInstrument` needs from a VISA resource (pyvisa's MessageBasedResource has it)."""

    timeout: Any

    def write(self, message: str) -> Any: ...

    def query(self, message: str) -> str: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class CommandEntry:
    """One exchange with the instrument: ``t_s`` on the instrument's clock when it was sent, ``kind``
    (``"write"`` or ``"query"``), the ``command`` text (without termination) and the ``reply`` (queries)."""

    t_s: float
    kind: Literal["write", "query"]
    command: str
    reply: str | None = None


CommandRecorder = Callable[[CommandEntry], None]


class CommandLog:
    """A recorder that keeps every :class:`CommandEntry` in memory and optionally appends it to a file.

    File format: one line per exchange, ``<t_s>\\t<kind>\\t<command>[\\t<reply>]``, flushed at once so that
    a process killed mid-session leaves every command it sent. Use :meth:`read_file` to parse it back.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.entries: list[CommandEntry] = []
        self._lock = threading.Lock()
        self._file: IO[str] | None = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def __call__(self, entry: CommandEntry) -> None:
        with self._lock:
            self.entries.append(entry)
            if self._file is not None:
                fields = [f"{entry.t_s:.6f}", entry.kind, entry.command]
                if entry.reply is not None:
                    fields.append(entry.reply)
                self._file.write("\t".join(fields) + "\n")
                self._file.flush()

    def __iter__(self) -> Iterator[CommandEntry]:
        return iter(list(self.entries))

    def __len__(self) -> int:
        return len(self.entries)

    def commands(self) -> list[str]:
        """Every command text sent, writes and queries, in order."""
        return [entry.command for entry in self.entries]

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    @staticmethod
    def read_file(path: str | Path) -> list[CommandEntry]:
        """Parse a file written by a :class:`CommandLog` (a partial last line is ignored)."""
        entries = []
        for line in Path(path).read_text(encoding="utf-8").split("\n")[:-1]:
            parts = line.split("\t")
            kind: Literal["write", "query"] = "query" if parts[1] == "query" else "write"
            entries.append(
                CommandEntry(float(parts[0]), kind, parts[2], parts[3] if len(parts) > 3 else None)
            )
        return entries


@dataclass(frozen=True)
class Identification:
    """The four fields of an IEEE 488.2 ``*IDN?`` reply, stripped. ``model`` drops Keithley's ``MODEL``
    prefix (``"MODEL 2450"`` becomes ``"2450"``)."""

    manufacturer: str
    model: str
    serial: str
    firmware: str
    raw: str

    @classmethod
    def parse(cls, reply: str) -> Identification:
        """Parse ``manufacturer,model,serial,firmware``; RemoteProtocolError if there are not four fields."""
        text = reply.strip()
        parts = [part.strip() for part in text.split(",")]
        if len(parts) < 4 or not parts[0] or not parts[1]:
            raise RemoteProtocolError(f"*IDN? reply is not 'manufacturer,model,serial,firmware': {text!r}")
        model = re.sub(r"^MODEL\s+", "", parts[1], flags=re.IGNORECASE)
        return cls(parts[0], model.upper(), parts[2], ",".join(parts[3:]), text)

    def serial_number(self) -> int:
        """The serial as an integer for :class:`~iontodrive.protocol.IdentityReport`: its digits (at most
        nine, so it fits 32 bits), or 0 if it has none. The full text stays in :attr:`serial`."""
        digits = re.sub(r"\D", "", self.serial)
        return int(digits[-9:]) if digits else 0

    def firmware_version(self) -> tuple[int, int, int]:
        """The first three numbers in the firmware field's first word (missing ones as 0, each capped to
        255): ``"1.7.3c"`` gives (1, 7, 3), the 2400's ``"C32   Oct  4 2010 ..."`` gives (32, 0, 0)."""
        words = self.firmware.split()
        numbers = [min(255, int(n)) for n in re.findall(r"\d+", words[0] if words else "")[:3]]
        while len(numbers) < 3:
            numbers.append(0)
        return numbers[0], numbers[1], numbers[2]


class ScpiInstrument:
    """SCPI exchanges with one instrument.

    Args:
        resource: an open VISA resource (see :class:`VisaResource`).
        timeout_s: I/O timeout per exchange (0.01-60 s), set on the resource.
        recorder: called with a :class:`CommandEntry` for every command sent (after the reply, for queries).
        clock: time stamps for the recorder, seconds (defaults to :func:`time.monotonic`).
    """

    def __init__(
        self,
        resource: VisaResource,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        recorder: CommandRecorder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (isinstance(timeout_s, (int, float)) and 0.01 <= timeout_s <= 60):
            raise ValueError(f"timeout_s = {timeout_s!r} is out of range: must be in [0.01, 60]")
        self.resource = resource
        self.timeout_s = float(timeout_s)
        self.recorder = recorder
        self.clock = clock
        self._lock = threading.RLock()
        resource.timeout = round(self.timeout_s * 1000)
        for name in ("read_termination", "write_termination"):
            if hasattr(resource, name):
                setattr(resource, name, "\n")

    def _record(self, entry: CommandEntry) -> None:
        if self.recorder is not None:
            self.recorder(entry)

    def write(self, command: str) -> None:
        """Send ``command``. Raises InstrumentLinkError on an I/O failure."""
        with self._lock:
            t = self.clock()
            try:
                self.resource.write(command)
            except Exception as exc:
                if isinstance(exc, IontodriveError):
                    raise
                raise InstrumentLinkError(command, f"{type(exc).__name__}: {exc}") from exc
            finally:
                self._record(CommandEntry(t, "write", command))
            logger.debug("-> %s", command)

    def query(self, command: str) -> str:
        """Send ``command`` and return the reply, stripped. Raises InstrumentLinkError on failure/timeout."""
        with self._lock:
            t = self.clock()
            reply: str | None = None
            try:
                reply = self.resource.query(command).strip()
            except Exception as exc:
                if isinstance(exc, IontodriveError):
                    raise
                raise InstrumentLinkError(command, f"{type(exc).__name__}: {exc}") from exc
            finally:
                self._record(CommandEntry(t, "query", command, reply))
            logger.debug("-> %s <- %s", command, reply)
            return reply

    def query_float(self, command: str) -> float:
        """Query a number (NR1/NR2/NR3). RemoteProtocolError if the reply is not one."""
        reply = self.query(command)
        try:
            return float(reply.split(",")[0])
        except ValueError:
            raise RemoteProtocolError(f"{command!r} returned {reply!r}, not a number") from None

    def query_bool(self, command: str) -> bool:
        """Query a boolean; accepts ``1``/``0`` and ``ON``/``OFF``. RemoteProtocolError otherwise."""
        reply = self.query(command).upper()
        if reply in ("1", "ON", "+1"):
            return True
        if reply in ("0", "OFF", "+0"):
            return False
        raise RemoteProtocolError(f"{command!r} returned {reply!r}, not a boolean")

    def identify(self) -> Identification:
        """``*IDN?``, parsed."""
        return Identification.parse(self.query("*IDN?"))

    def read_errors(self) -> list[tuple[int, str]]:
        """Drain the error queue with ``:SYST:ERR?`` (at most :data:`MAX_ERROR_QUEUE_READS` reads)."""
        errors: list[tuple[int, str]] = []
        for _ in range(MAX_ERROR_QUEUE_READS):
            reply = self.query(":SYST:ERR?")
            code_text, _, message = reply.partition(",")
            try:
                code = int(float(code_text))
            except ValueError:
                raise RemoteProtocolError(f":SYST:ERR? returned {reply!r}") from None
            if code == 0:
                break
            errors.append((code, message.strip().strip('"')))
        return errors

    def check_errors(self, context: str) -> None:
        """Raise :class:`InstrumentError` if the error queue holds anything (it is drained either way)."""
        errors = self.read_errors()
        if errors:
            raise InstrumentError(context, errors)

    def close(self) -> None:
        """Close the resource. Never raises (a dead link is already closed in every way that matters)."""
        with self._lock:
            try:
                self.resource.close()
            except Exception as exc:
                logger.debug("closing the VISA resource: %r", exc)
