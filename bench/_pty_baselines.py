"""Shared helpers for the pty benchmarks: pty pairs, echo and Modbus RTU peers, the simulator process.

Everything here runs over pseudo-terminal pairs made with :func:`pty.openpty` and put in raw mode with
:func:`tty.setraw` on both ends, so every baseline pays the same kernel path as the driver does when it
talks to the simulator's pty.

Peers (the echo loop and the Modbus RTU responder) run on the master fd, either in a thread of this
process (the default) or in a forked child process (``kind="process"``), which takes the GIL out of the
baseline at the cost of a cross-process wake-up like the simulator's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import select
import subprocess
import sys
import tempfile
import threading
import time
import tty
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ECHO_BYTES = 16
MODBUS_UNIT = 1
MODBUS_READ_HOLDING = 0x03

# ------------------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class LatencyStats:
    """Round-trip statistics in microseconds over ``n`` samples."""

    n: int
    median_us: float
    p90_us: float
    p99_us: float
    min_us: float
    max_us: float

    @classmethod
    def from_ns(cls, samples_ns: list[int]) -> LatencyStats:
        """Summarise round-trip times given in nanoseconds. Raises ValueError if there are none."""
        if not samples_ns:
            raise ValueError("no samples to summarise")
        us = np.asarray(samples_ns, dtype=np.float64) / 1000.0
        median, p90, p99 = np.percentile(us, [50, 90, 99])
        return cls(len(us), float(median), float(p90), float(p99), float(us.min()), float(us.max()))

    def line(self, label: str) -> str:
        """One aligned report line: label, n, median, p90, p99 (µs)."""
        return (
            f"{label:<34} n={self.n:<6d} median {self.median_us:8.1f} us   p90 {self.p90_us:8.1f} us   "
            f"p99 {self.p99_us:8.1f} us"
        )


# -------------------------------------------------------------------------------------------- ptys


@dataclass
class PtyPair:
    """A raw-mode pty pair. The slave fd stays open until :meth:`close` so the master never sees EIO early."""

    master: int
    slave: int
    slave_path: str

    @classmethod
    def open(cls) -> PtyPair:
        master, slave = pty.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        return cls(master, slave, os.ttyname(slave))

    def close_slave(self) -> None:
        """Close our slave fd; once every slave opener is gone, reads on the master fail with EIO."""
        if self.slave >= 0:
            with contextlib.suppress(OSError):
                os.close(self.slave)
            self.slave = -1

    def close(self) -> None:
        self.close_slave()
        if self.master >= 0:
            with contextlib.suppress(OSError):
                os.close(self.master)
            self.master = -1


# ------------------------------------------------------------------------------------------- peers


def echo_loop(master: int) -> None:
    """Echo every byte read on ``master`` straight back, until the slave side is gone (EIO)."""
    read, write = os.read, os.write
    while True:
        try:
            data = read(master, 4096)
        except OSError:
            return
        if not data:
            return
        try:
            write(master, data)
        except OSError:
            return


def modbus_crc16(data: bytes) -> int:
    """Modbus CRC-16 (reflected polynomial 0xA001, initial value 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _MODBUS_TABLE[(crc ^ byte) & 0xFF]
    return crc


def _modbus_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_MODBUS_TABLE = _modbus_table()


def modbus_frame(pdu_with_unit: bytes) -> bytes:
    """Append the Modbus CRC (low byte first) to ``unit | function | data``."""
    crc = modbus_crc16(pdu_with_unit)
    return pdu_with_unit + bytes((crc & 0xFF, crc >> 8))


def modbus_read_holding_reply(request: bytes) -> bytes | None:
    """The RTU reply to one 8-byte read-holding-registers request, or None if it is not one of ours.

    Register ``a`` holds the value ``a & 0xFFFF``. A request with a bad CRC, another unit or another
    function gets no answer (as on a real RTU bus).
    """
    if len(request) != 8 or request[0] != MODBUS_UNIT or request[1] != MODBUS_READ_HOLDING:
        return None
    if modbus_crc16(request) != 0:  # CRC over a frame including its own CRC is zero
        return None
    address = int.from_bytes(request[2:4], "big")
    count = int.from_bytes(request[4:6], "big")
    if not 1 <= count <= 125:
        return None
    data = b"".join(((address + i) & 0xFFFF).to_bytes(2, "big") for i in range(count))
    return modbus_frame(bytes((MODBUS_UNIT, MODBUS_READ_HOLDING, 2 * count)) + data)


def modbus_responder_loop(master: int) -> None:
    """Answer read-holding-registers requests on ``master`` as fast as possible, until EIO.

    Replies are cached per request frame (a responder answering as fast as it can), so the steady state
    is one read and one write per request.
    """
    read, write = os.read, os.write
    cache: dict[bytes, bytes | None] = {}
    buffer = b""
    while True:
        try:
            data = read(master, 4096)
        except OSError:
            return
        if not data:
            return
        buffer += data
        while len(buffer) >= 8:
            request = buffer[:8]
            reply = cache.get(request)
            if reply is None and request not in cache:
                reply = cache[request] = modbus_read_holding_reply(request)
            if reply is None:
                buffer = buffer[1:]  # not a frame start: resynchronise byte by byte
                continue
            buffer = buffer[8:]
            try:
                write(master, reply)
            except OSError:
                return


class Peer:
    """Runs ``loop(master_fd)`` on a pty pair's master, in a thread or a forked child process.

    :meth:`stop` closes the slave side so the loop sees EIO and returns, then reaps it.
    """

    def __init__(self, pair: PtyPair, loop: Callable[[int], None], kind: str = "thread") -> None:
        if kind not in ("thread", "process"):
            raise ValueError(f"peer kind = {kind!r}: must be 'thread' or 'process'")
        self.pair = pair
        self.kind = kind
        self._thread: threading.Thread | None = None
        self._pid = 0
        if kind == "thread":
            self._thread = threading.Thread(target=loop, args=(pair.master,), daemon=True, name="bench-peer")
            self._thread.start()
        else:
            pid = os.fork()
            if pid == 0:  # child: keep only the master, serve, exit without running any parent cleanup
                code = 0
                try:
                    os.close(pair.slave)
                    loop(pair.master)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            self._pid = pid

    def stop(self) -> None:
        self.pair.close_slave()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._pid:
            with contextlib.suppress(ChildProcessError):
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    pid, _ = os.waitpid(self._pid, os.WNOHANG)
                    if pid:
                        break
                    time.sleep(0.01)
                else:
                    os.kill(self._pid, 9)
                    os.waitpid(self._pid, 0)
            self._pid = 0
        self.pair.close()


# ----------------------------------------------------------------------------------------- clients


def time_calls(call: Callable[[], object], n: int) -> list[int]:
    """Call ``call()`` ``n`` times; the duration of each call in nanoseconds."""
    clock = time.perf_counter_ns
    out: list[int] = []
    for _ in range(n):
        t0 = clock()
        call()
        out.append(clock() - t0)
    return out


class RoundTripCase(ABC):
    """One measured thing: ``measure(n)`` returns ``n`` round-trip times in nanoseconds."""

    label = ""

    @abstractmethod
    def measure(self, n: int) -> list[int]: ...

    @abstractmethod
    def close(self) -> None:
        """Release ports, peers and processes."""


class RawEchoCase(RoundTripCase):
    """(a) 16 bytes written to the slave fd with ``os.write``, read back with ``os.read``."""

    label = "raw-fd echo (16 B)"

    def __init__(self, peer_kind: str) -> None:
        self.pair = PtyPair.open()
        self.peer = Peer(self.pair, echo_loop, peer_kind)
        self.message = bytes(range(1, ECHO_BYTES + 1))

    def measure(self, n: int) -> list[int]:
        fd, msg, size = self.pair.slave, self.message, len(self.message)
        clock, read, write = time.perf_counter_ns, os.read, os.write
        out: list[int] = []
        for _ in range(n):
            t0 = clock()
            write(fd, msg)
            got = read(fd, size)
            while len(got) < size:
                got += read(fd, size - len(got))
            out.append(clock() - t0)
        if got != msg:
            raise RuntimeError(f"echo mismatch: sent {msg.hex()}, got {got.hex()}")
        return out

    def close(self) -> None:
        self.peer.stop()


class PyserialEchoCase(RoundTripCase):
    """(b) the same echo, with the client side a ``serial.Serial`` opened on the slave path."""

    label = "pyserial echo (16 B)"

    def __init__(self, peer_kind: str) -> None:
        import serial

        self.pair = PtyPair.open()
        self.peer = Peer(self.pair, echo_loop, peer_kind)
        self.port = serial.Serial(self.pair.slave_path, baudrate=115_200, timeout=1.0)
        self.message = bytes(range(1, ECHO_BYTES + 1))

    def measure(self, n: int) -> list[int]:
        port, msg, size = self.port, self.message, len(self.message)
        clock = time.perf_counter_ns
        out: list[int] = []
        got = b""
        for _ in range(n):
            t0 = clock()
            port.write(msg)
            got = port.read(size)
            out.append(clock() - t0)
        if got != msg:
            raise RuntimeError(f"echo mismatch: sent {msg.hex()}, got {got.hex()}")
        return out

    def close(self) -> None:
        self.port.close()
        self.peer.stop()


class ModbusAsyncCase(RoundTripCase):
    """(c) pymodbus ``AsyncModbusSerialClient`` (RTU) reading holding registers from our responder."""

    label = "pymodbus async RTU (read 0x03)"

    def __init__(self, peer_kind: str, registers: int) -> None:
        from pymodbus.client import AsyncModbusSerialClient
        from pymodbus.framer import FramerType

        self.registers = registers
        self.pair = PtyPair.open()
        self.peer = Peer(self.pair, modbus_responder_loop, peer_kind)
        self.loop = asyncio.new_event_loop()

        async def connect() -> tuple[AsyncModbusSerialClient, bool]:
            # pymodbus binds the client to the running loop, so it must be made inside it.
            client = AsyncModbusSerialClient(
                self.pair.slave_path,
                framer=FramerType.RTU,
                baudrate=115_200,
                timeout=1.0,
                retries=0,
                reconnect_delay=0,
            )
            return client, await client.connect()

        self.client, connected = self.loop.run_until_complete(connect())
        if not connected:
            raise RuntimeError(f"pymodbus async client could not connect to {self.pair.slave_path}")

    async def _batch(self, n: int) -> list[int]:
        clock, client, count = time.perf_counter_ns, self.client, self.registers
        out: list[int] = []
        reply: Any = None
        for _ in range(n):
            t0 = clock()
            reply = await client.read_holding_registers(0, count=count, device_id=MODBUS_UNIT)
            out.append(clock() - t0)
        if reply is None or reply.isError() or list(reply.registers) != list(range(count)):
            raise RuntimeError(f"pymodbus async: unexpected reply {reply!r}")
        return out

    def measure(self, n: int) -> list[int]:
        return self.loop.run_until_complete(self._batch(n))

    def close(self) -> None:
        self.client.close()
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()
        self.peer.stop()


class ModbusSyncCase(RoundTripCase):
    """(c') pymodbus's synchronous ``ModbusSerialClient`` (RTU), same responder."""

    label = "pymodbus sync RTU (read 0x03)"

    def __init__(self, peer_kind: str, registers: int) -> None:
        from pymodbus.client import ModbusSerialClient
        from pymodbus.framer import FramerType

        self.registers = registers
        self.pair = PtyPair.open()
        self.peer = Peer(self.pair, modbus_responder_loop, peer_kind)
        self.client = ModbusSerialClient(
            self.pair.slave_path, framer=FramerType.RTU, baudrate=115_200, timeout=1.0, retries=0
        )
        if not self.client.connect():
            raise RuntimeError(f"pymodbus sync client could not connect to {self.pair.slave_path}")

    def measure(self, n: int) -> list[int]:
        clock, client, count = time.perf_counter_ns, self.client, self.registers
        out: list[int] = []
        reply: Any = None
        for _ in range(n):
            t0 = clock()
            reply = client.read_holding_registers(0, count=count, device_id=MODBUS_UNIT)
            out.append(clock() - t0)
        if reply is None or reply.isError() or list(reply.registers) != list(range(count)):
            raise RuntimeError(f"pymodbus sync: unexpected reply {reply!r}")
        return out

    def close(self) -> None:
        self.client.close()
        self.peer.stop()


# -------------------------------------------------------------------------------------- simulator


class SimulatorProcess:
    """``python -m firmware_sim --pty ...`` as a child process; :attr:`port` is the pty it serves.

    Raises RuntimeError (with the simulator's stderr) if it does not print ``PORT <path>`` within
    ``start_timeout_s``.
    """

    def __init__(
        self,
        *,
        model: str = "clinic-4",
        speed: float | None = None,
        telemetry_hz: int | None = None,
        extra_args: list[str] | None = None,
        start_timeout_s: float = 20.0,
    ) -> None:
        argv = [sys.executable, "-m", "firmware_sim", "--pty", "--model", model]
        if speed is not None:
            argv += ["--speed", f"{speed:g}"]
        if telemetry_hz is not None:
            argv += ["--telemetry-hz", str(telemetry_hz)]
        argv += extra_args or []
        self.argv = argv
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the process; stop() closes it
        self.proc = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr
        )
        assert self.proc.stdout is not None
        self.port = self._read_port(start_timeout_s)
        # Keep draining stdout so a chatty simulator never blocks on a full pipe.
        self._drain = threading.Thread(target=self._drain_stdout, daemon=True, name="bench-sim-stdout")
        self._drain.start()

    def _read_port(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                break
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1)
            if not chunk:
                break
            line += chunk
        text = line.decode(errors="replace").strip()
        if not text.startswith("PORT "):
            self.stop()
            raise RuntimeError(
                f"simulator {' '.join(self.argv)!r} did not print 'PORT <path>' "
                f"(got {text!r}); stderr:\n{self.stderr_tail()}"
            )
        return text.split(None, 1)[1]

    def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with contextlib.suppress(OSError, ValueError):
            while os.read(fd, 4096):
                pass

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the simulator has used so far (Linux /proc), or None if unavailable."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of stat)

    def stderr_tail(self, limit: int = 4000) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-limit:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        drain = getattr(self, "_drain", None)
        if drain is not None:
            drain.join(timeout=2.0)  # ends at EOF, once the simulator has exited
        if self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()
        self._stderr.close()


class SimFloorCase(RoundTripCase):
    """(e) the simulator's own floor: ``GetStatus`` frames written to its pty by one thread with raw fds.

    The same request and reply frames as the driver, the same protocol codec, no threads, no pyserial,
    against a second simulator process: no host client can beat this, so ``ours / sim floor`` is the
    driver's own overhead and ``sim floor / pyserial echo`` is what the simulator costs.
    """

    label = "raw-fd GetStatus (sim floor)"

    def __init__(self, model: str, speed: float | None, sim_args: list[str]) -> None:
        from iontodrive.protocol import ConfigureTelemetry, Decoder, GetStatus, encode

        self.sim = SimulatorProcess(model=model, speed=speed, extra_args=sim_args)
        try:
            self.fd = os.open(self.sim.port, os.O_RDWR | os.O_NOCTTY)
            tty.setraw(self.fd)
        except OSError:
            self.sim.stop()
            raise
        self._decoder = Decoder()
        self._encode = encode
        self._request = GetStatus()
        self._seq = 0
        self._round_trip(self._encode(ConfigureTelemetry(0), self._next_seq()))  # only replies from now on

    def _next_seq(self) -> int:
        self._seq = self._seq % 0xFFFF + 1
        return self._seq

    def _round_trip(self, frame: bytes) -> None:
        seq = self._seq
        os.write(self.fd, frame)
        while True:
            for item in self._decoder.feed(os.read(self.fd, 4096)):
                if getattr(item, "seq", None) == seq:
                    return

    def measure(self, n: int) -> list[int]:
        clock, encode, request, round_trip = (
            time.perf_counter_ns,
            self._encode,
            self._request,
            self._round_trip,
        )
        out: list[int] = []
        for _ in range(n):
            t0 = clock()
            round_trip(encode(request, self._next_seq()))
            out.append(clock() - t0)
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.sim.stop()


class StimulatorCase(RoundTripCase):
    """``Stimulator.status()`` round trips to ``python -m firmware_sim --pty`` (one simulator per case).

    ``caller_reads`` is passed to ``Stimulator.open`` (False: the reader thread reads every reply).
    """

    def __init__(
        self,
        label: str,
        *,
        model: str = "clinic-4",
        speed: float | None = None,
        sim_args: list[str] | None = None,
        caller_reads: bool = True,
    ) -> None:
        from iontodrive import Stimulator

        self.label = label
        self.sim = SimulatorProcess(model=model, speed=speed, extra_args=sim_args)
        try:
            self.stim = Stimulator.open(self.sim.port, telemetry_hz=0, caller_reads=caller_reads)
        except BaseException:
            print(f"simulator stderr:\n{self.sim.stderr_tail()}", file=sys.stderr)
            self.sim.stop()
            raise

    def measure(self, n: int) -> list[int]:
        return time_calls(self.stim.status, n)

    def close(self) -> None:
        try:
            self.stim.close()
        finally:
            self.sim.stop()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
