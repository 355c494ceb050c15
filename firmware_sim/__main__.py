"""Command line: serve a simulated stimulator on a pty or a TCP port.

``python -m firmware_sim --pty --speed 50 --trace /tmp/trace.csv`` prints ``PORT /dev/pts/N`` as its
first line of output and serves until SIGINT/SIGTERM (exit status 0, trace flushed). ``--tcp HOST:PORT``
serves ``socket://`` clients instead (port 0 picks a free port; the printed line has the real one).
``main(argv)`` is importable so that ``iontodrive sim ...`` can delegate to it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from . import discovery
from .options import MODEL_NAMES, SimOptions
from .runner import DeviceRunner, Transport

log = logging.getLogger("firmware_sim")


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port = {number} is out of range: must be in [0, 65535]")
    return host, number


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iontodrive-sim",
        description="Simulated iontophoresis stimulator (firmware + skin load) on a pty or TCP port.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--pty", action="store_true", help="serve on a new pseudo-terminal (default on POSIX)")
    where.add_argument(
        "--tcp", type=_host_port, metavar="HOST:PORT", help="serve socket:// clients (port 0 = free)"
    )
    p.add_argument("--model", default="clinic-4", choices=MODEL_NAMES, help="device model (default clinic-4)")
    p.add_argument("--speed", type=float, default=1.0, help="session-time acceleration; link time stays real")
    p.add_argument("--seed", type=int, default=0, help="seed of noise and link faults (default 0)")
    p.add_argument("--trace", metavar="PATH", help="write the ground-truth CSV trace here")
    p.add_argument(
        "--trace-rate", type=float, metavar="HZ", help="trace rows per device second (default: every step)"
    )
    p.add_argument("--physics-step-ms", type=float, default=1.0, help="physics step in ms (default 1)")
    p.add_argument("--telemetry-hz", type=int, help="telemetry rate at power-up (default 2)")
    p.add_argument("--skin-kohm", type=float, help="resting skin resistance in kilo-ohm (default: model's)")
    faults = p.add_argument_group("plant faults (simulator seconds; repeatable)")
    faults.add_argument(
        "--lift-at", type=float, action="append", default=[], metavar="S", help="electrode lift"
    )
    faults.add_argument("--contact-return-at", type=float, action="append", default=[], metavar="S")
    faults.add_argument("--impedance-rise-at", type=float, action="append", default=[], metavar="S")
    faults.add_argument("--short-at", type=float, action="append", default=[], metavar="S")
    faults.add_argument("--overcurrent-at", type=float, action="append", default=[], metavar="S")
    link = p.add_argument_group("link faults")
    link.add_argument("--drop-rate", type=float, default=0.0, metavar="P", help="byte loss probability")
    link.add_argument(
        "--corrupt-rate", type=float, default=0.0, metavar="P", help="byte corruption probability"
    )
    link.add_argument(
        "--junk-rate", type=float, default=0.0, metavar="P", help="junk between frames, per frame"
    )
    link.add_argument("--split", action="store_true", help="hand out output in small random pieces")
    link.add_argument("--latency-ms", type=float, default=0.0, metavar="MS", help="added delay (wall time)")
    link.add_argument("--silent-at", type=float, metavar="S", help="ignore the host from S (simulator s) on")
    p.add_argument("--run-for", type=float, metavar="SECONDS", help="exit after this many wall seconds")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def options_from_args(args: argparse.Namespace) -> SimOptions:
    return SimOptions(
        model=args.model,
        speed=args.speed,
        seed=args.seed,
        trace=args.trace,
        trace_rate_hz=args.trace_rate,
        physics_step_ms=args.physics_step_ms,
        telemetry_hz=args.telemetry_hz,
        skin_kohm=args.skin_kohm,
        lift_at_s=list(args.lift_at),
        contact_return_at_s=list(args.contact_return_at),
        impedance_rise_at_s=list(args.impedance_rise_at),
        short_at_s=list(args.short_at),
        overcurrent_at_s=list(args.overcurrent_at),
        drop_rate=args.drop_rate,
        corrupt_rate=args.corrupt_rate,
        junk_rate=args.junk_rate,
        split=args.split,
        latency_ms=args.latency_ms,
        silent_at_s=args.silent_at,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator; returns the exit status (0 after SIGINT/SIGTERM, 2 for bad options)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    opts = options_from_args(args)
    try:
        opts.validate()
    except ValueError as exc:
        parser.error(str(exc))
    transport: Transport
    try:
        if args.tcp is not None:
            from .bridge_tcp import TcpTransport

            tcp = TcpTransport(*args.tcp)
            transport, port_text = tcp, tcp.url
        else:
            from .bridge_pty import PtyTransport

            pty = PtyTransport()
            transport, port_text = pty, pty.path
    except (OSError, ImportError) as exc:
        print(f"iontodrive-sim: cannot create the port: {exc}", file=sys.stderr)
        return 1
    device = opts.build_device()
    runner = DeviceRunner(device, transport, speed=opts.speed)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        runner.request_stop()

    previous = {}
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    timer = None
    if args.run_for is not None:
        timer = threading.Timer(args.run_for, runner.request_stop)
        timer.daemon = True
        timer.start()
    sys.stdout.write(f"PORT {port_text}\n")
    sys.stdout.flush()
    try:
        announcement = discovery.announce(port_text, opts.model, os.getpid())
    except OSError as exc:
        log.warning("cannot announce the simulator for `iontodrive ports`: %s", exc)
        announcement = None
    log.info("serving %s on %s at speed %g", opts.model, port_text, opts.speed)
    started = time.monotonic()
    status = 0
    try:
        runner.run()
    except RuntimeError:
        log.exception("simulator failed")
        status = 1
    finally:
        if timer is not None:
            timer.cancel()
        discovery.withdraw(announcement)
        device.close()
        transport.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info(
        "stopped after %.1f s wall, %.1f s device time", time.monotonic() - started, device.session_time_s
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
