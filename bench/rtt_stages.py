"""Where the time of one ``stim.status()`` round trip goes, stage by stage, on both sides of the pty.

Diagnostic companion of ``bench/rtt.py`` (it sets no target). The simulator runs as a child process with
timestamps patched into its pty transport and device; the client side is patched the same way. Every
timestamp is ``time.perf_counter_ns()`` (CLOCK_MONOTONIC, comparable across processes on Linux); the two
sides are paired by the request's sequence number. Printed: median and mean of each stage in µs, in the
order a request travels, and their sum against the measured round trip. The patches add about a
microsecond per timestamp (and the client reader one extra ``select``), so the total runs a little above
``bench/rtt.py``'s figure.

Stages (client = bench process, sim = simulator process):

  client: status() -> write      encode, sequence number, pending-reply registration
  client: os.write               the request frame into the pty
  wake: client write -> sim      until the simulator's poll returns (kernel + scheduler)
  sim: os.read                   from the end of its poll to the request read
  sim: read -> frame             link-time update, lock, protocol decoder
  sim: handle                    at-most-once cache, firmware handler, reply encoding
  sim: frame -> write            draining the device's output
  sim: os.write                  the reply frame into the pty
  wake: sim write -> reading     until the thread reading the client's link returns from poll (the
                                 calling thread itself by default; the reader thread with --reader-thread)
  client: read+decode+match      os.read, decoder, matching the reply to the waiting request
  hand-over: reader -> caller    until the calling thread has its reply (0 when it read the reply itself;
                                 a thread switch and GIL hand-over with --reader-thread)
  client: wait -> return         reply checks and return

    .venv/bin/python bench/rtt_stages.py [-n 3000] [--reader-thread] [--sim-arg=ARG ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
STAGES = [
    "client: status() -> write",
    "client: os.write",
    "wake: client write -> sim",
    "sim: os.read",
    "sim: read -> frame",
    "sim: handle",
    "sim: frame -> write",
    "sim: os.write",
    "wake: sim write -> reading",
    "client: read+decode+match",
    "hand-over: reader -> caller",
    "client: wait -> return",
]


class TimedPoll:
    """A ``select.poll`` object that notes in :attr:`woke` when ``poll()`` last returned -- with ``fd``
    ready, if given: the moment the thread polling it woke up (``perf_counter_ns``)."""

    def __init__(self, inner: Any, fd: int | None = None) -> None:
        self._inner = inner
        self._fd = fd
        self.woke = 0

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        events = self._inner.poll(timeout)
        if self._fd is None or any(fd == self._fd for fd, _ in events):
            self.woke = time.perf_counter_ns()
        return events  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:  # register, modify, unregister
        return getattr(self._inner, name)


# ------------------------------------------------------------------------------- simulator side


def run_instrumented_simulator(out_path: str, sim_argv: list[str]) -> int:
    """Run ``firmware_sim`` with timestamps on its request path; write them as JSON at exit."""
    from firmware_sim import __main__ as sim_main
    from firmware_sim.bridge_pty import PtyTransport
    from firmware_sim.device import Device

    clock = time.perf_counter_ns
    records: dict[int, list[int]] = {}  # seq -> [wake, read_end, frame, frame_end, write, write_end]
    last = {"wake": 0, "read_end": 0, "seq": -1}

    original_init = PtyTransport.__init__
    original_read = PtyTransport.read
    original_write = PtyTransport.write
    original_on_frame = Device._on_frame

    def init(self: PtyTransport, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._poll = TimedPoll(self._poll)  # type: ignore[assignment]  (any return is the wake-up)

    def read(self: PtyTransport, timeout: float) -> bytes:
        data = original_read(self, timeout)
        if data:
            last["wake"], last["read_end"] = self._poll.woke, clock()  # type: ignore[attr-defined]
        return data

    def on_frame(self: Device, frame: object) -> None:
        start = clock()
        seq = frame.seq  # type: ignore[attr-defined]
        record = records[seq] = [last["wake"], last["read_end"], start, 0, 0, 0]
        last["seq"] = seq
        original_on_frame(self, frame)  # type: ignore[arg-type]  (the reply may be written in here)
        record[3] = clock()

    def write(self: PtyTransport, data: bytes) -> None:
        start = clock()
        original_write(self, data)
        rec = records.get(last["seq"])
        if rec is not None and not rec[4]:
            rec[4], rec[5] = start, clock()

    PtyTransport.__init__ = init  # type: ignore[method-assign]
    PtyTransport.read = read  # type: ignore[method-assign]
    PtyTransport.write = write  # type: ignore[method-assign]
    Device._on_frame = on_frame  # type: ignore[method-assign]
    status = sim_main.main(sim_argv)
    Path(out_path).write_text(json.dumps({str(k): v for k, v in records.items()}))
    return status


# ---------------------------------------------------------------------------------- client side


def measure(n: int, warmup: int, sim_args: list[str], caller_reads: bool = True) -> None:
    import iontodrive.client as client_mod
    import iontodrive.link as link_mod
    from iontodrive import Stimulator

    clock = time.perf_counter_ns
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sim-stages.json"
        sim = _InstrumentedSimulator(out, sim_args)
        client_side: dict[int, list[int]] = {}
        state = {"seq": -1, "t0": 0}
        cur: list[int] = [0] * 8  # t0, write, write_end, reader_wake, read_end, set, woke, end

        original_send = client_mod.DeviceClient._send
        original_on_reply = client_mod.DeviceClient.on_reply
        original_await = client_mod.DeviceClient._await_reply
        original_write = link_mod.SerialLink.write

        def send(self: object, pending: Any) -> None:
            state["seq"] = pending.seq
            original_send(self, pending)  # type: ignore[arg-type]

        def link_write(self: object, data: bytes) -> None:
            cur[1] = clock()
            original_write(self, data)  # type: ignore[arg-type]
            cur[2] = clock()

        def on_reply(self: object, pending: Any) -> None:
            original_on_reply(self, pending)  # type: ignore[arg-type]
            if pending.seq == state["seq"]:
                cur[4] = clock()  # the reply is matched and its waiter released

        def await_reply(self: object, pending: object, timeout_s: float) -> bool:
            result = original_await(self, pending, timeout_s)  # type: ignore[arg-type]
            cur[5] = clock()
            return result

        client_mod.DeviceClient._send = send  # type: ignore[method-assign]
        link_mod.SerialLink.write = link_write  # type: ignore[method-assign]
        client_mod.DeviceClient.on_reply = on_reply  # type: ignore[method-assign]
        client_mod.DeviceClient._await_reply = await_reply  # type: ignore[method-assign]
        totals: list[int] = []
        try:
            with Stimulator.open(sim.port, telemetry_hz=0, caller_reads=caller_reads) as stim:
                link = stim.link
                poller = link._poller = TimedPoll(link._poller, link.port.fd)  # type: ignore[attr-defined]
                for i in range(warmup + n):
                    t0 = clock()
                    stim.status()
                    end = clock()
                    if i >= warmup:
                        client_side[state["seq"]] = [t0, cur[1], cur[2], poller.woke, cur[4], cur[5], end]
                        totals.append(end - t0)
        finally:
            sim.stop()
        sim_side = {int(k): v for k, v in json.loads(out.read_text()).items()}

    rows = []
    for seq, c in client_side.items():
        s = sim_side.get(seq)
        if s is None or not all(s) or not all(c):
            continue
        t0, w0, w1, rwake, dset, woke, end = c
        wake, rend, f0, f1, sw0, sw1 = s
        f1 = min(f1, sw0)  # the simulator writes the reply as soon as it is encoded, inside the handler
        rows.append(
            [
                w0 - t0,
                w1 - w0,
                wake - w1,
                rend - wake,
                f0 - rend,
                f1 - f0,
                sw0 - f1,
                sw1 - sw0,
                rwake - sw1,
                dset - rwake,
                woke - dset,
                end - woke,
            ]
        )
    data = np.asarray(rows, dtype=np.float64) / 1000.0
    total = np.asarray(totals, dtype=np.float64) / 1000.0
    print(
        f"rtt_stages: python {platform.python_version()}, {os.cpu_count()} cpus, load "
        f"{os.getloadavg()[0]:.2f}; {len(rows)} of {n} requests paired; sim args: {sim_args or 'none'}; "
        f"{'the caller reads its reply' if caller_reads else 'the reader thread reads every reply'}"
    )
    print(f"{'stage':<30} {'median us':>10} {'mean us':>10}")
    for name, column in zip(STAGES, data.T, strict=True):
        print(f"{name:<30} {np.median(column):10.1f} {np.mean(column):10.1f}")
    print(f"{'sum of stage medians':<30} {np.median(data, axis=0).sum():10.1f}")
    print(f"{'round trip (measured)':<30} {np.median(total):10.1f} {np.mean(total):10.1f}")
    sim_total = data[:, 2:9].sum(axis=1)
    print(
        f"share: client {np.median(data[:, [0, 1, 9, 10, 11]].sum(axis=1)):.1f} us, "
        f"wire+simulator {np.median(sim_total):.1f} us (medians of per-request sums)"
    )


class _InstrumentedSimulator:
    """This script in ``--sim-child`` mode as a child process; :attr:`port` is the pty it serves."""

    def __init__(self, out: Path, sim_args: list[str]) -> None:
        argv = [
            sys.executable,
            os.environ.get("RTT_STAGES_CHILD", str(Path(__file__).resolve())),
            "--sim-child",
            str(out),
            "--",
            "--pty",
        ]
        self.proc = subprocess.Popen(
            argv + sim_args, cwd=HERE.parent, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode(errors="replace").strip()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"simulator did not print 'PORT <path>' (got {line!r})")
        self.port = line.split(None, 1)[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--sim-child"]:
        out, rest = argv[1], argv[argv.index("--") + 1 :]
        return run_instrumented_simulator(out, rest)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=3000, help="measured requests (default 3000)")
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured requests first (default 300)")
    parser.add_argument("--sim-arg", action="append", default=[], metavar="ARG", help="extra simulator arg")
    parser.add_argument(
        "--reader-thread",
        action="store_true",
        help="open the client with caller_reads=False (the reader thread reads every reply)",
    )
    args = parser.parse_args(argv)
    measure(args.requests, args.warmup, args.sim_arg, caller_reads=not args.reader_thread)
    return 0


if __name__ == "__main__":
    sys.exit(main())
