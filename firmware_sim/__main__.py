"""Command line: serve a simulated stimulator on a pty, a TCP port or an existing serial port.

``python -m firmware_sim --pty --speed 50 --trace /tmp/trace.csv`` prints ``PORT /dev/pts/N`` as its
first line of output and serves until SIGINT/SIGTERM (exit status 0, trace flushed). ``--tcp HOST:PORT``
serves ``socket://`` clients instead (port 0 picks a free port; the printed line has the real one);
``--serial PORT`` serves on an existing port. ``--baud`` puts the wire model in front of any of them.
``--control HOST:PORT`` also serves the control API and web console and prints ``CONTROL <url>`` as the
second line. ``main(argv)`` is importable so that ``iontodrive sim ...`` can delegate to it.
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

from iontodrive.protocol.budget import Framing

from . import discovery
from .options import MODEL_NAMES, SimOptions
from .runner import DeviceRunner, Transport
from .wire import DEFAULT_TX_BUFFER_BYTES, FTDI_LATENCY_TIMER_MS, WireSettings
from .wired import WiredTransport

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
    where.add_argument(
        "--serial", metavar="PORT", help="serve on an existing serial port or pyserial URL (null-modem)"
    )
    wire = p.add_argument_group("wire model (serial timing)")
    wire.add_argument(
        "--baud", type=int, help="model a serial line at this baud rate (default with --serial: 115200)"
    )
    wire.add_argument("--framing", default="8N1", help="character framing (default 8N1)")
    wire.add_argument(
        "--latency-timer",
        type=float,
        nargs="?",
        const=FTDI_LATENCY_TIMER_MS,
        metavar="MS",
        help=f"model a USB-serial chip's latency timer (default {FTDI_LATENCY_TIMER_MS:g} ms when given)",
    )
    wire.add_argument(
        "--tx-buffer-bytes", type=int, default=DEFAULT_TX_BUFFER_BYTES, help="firmware transmit buffer"
    )
    wire.add_argument("--no-wire", action="store_true", help="with --serial: no wire model (a real UART)")
    access = p.add_argument_group("port, control and access")
    access.add_argument(
        "--link", metavar="PATH", help="keep a stable symlink to the pty here (survives unplug/replug)"
    )
    access.add_argument(
        "--control", type=_host_port, metavar="HOST:PORT", help="serve the control API and web console"
    )
    access.add_argument(
        "--token",
        default=os.environ.get("IONTODRIVE_SIM_TOKEN"),
        help="access token (env IONTODRIVE_SIM_TOKEN): needed beyond loopback, then asked of every client",
    )
    access.add_argument(
        "--allow-remote", action="store_true", help="allow --tcp/--control beyond loopback (needs --token)"
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


def wire_settings(args: argparse.Namespace) -> WireSettings | None:
    """The wire model the options ask for: ``--baud`` on any transport, on by default with ``--serial``
    (115,200 baud) unless ``--no-wire``. Raises ValueError for a setting out of range."""
    framing = Framing.parse(args.framing)
    wanted = args.baud is not None or args.latency_timer is not None or args.serial is not None
    if not wanted or (args.serial is not None and args.no_wire):
        return None
    return WireSettings(
        baud=args.baud if args.baud is not None else 115_200,
        framing=framing,
        latency_timer_ms=args.latency_timer,
        tx_buffer_bytes=args.tx_buffer_bytes,
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
    try:
        wire = wire_settings(args)
    except ValueError as exc:
        parser.error(str(exc))
    inner: Transport
    try:
        if args.tcp is not None:
            from .bridge_tcp import TcpTransport

            tcp = TcpTransport(*args.tcp, token=args.token, allow_remote=args.allow_remote)
            inner, port_text = tcp, tcp.url
        elif args.serial is not None:
            from .bridge_serial import SerialTransport

            baud = args.baud if args.baud is not None else 115_200
            ser = SerialTransport(args.serial, baud, Framing.parse(args.framing))
            inner, port_text = ser, ser.path
        else:
            from .bridge_pty import PtyTransport

            pty = PtyTransport(link_path=args.link)
            inner, port_text = pty, pty.stable_path
    except ValueError as exc:  # a refused listen address
        print(f"iontodrive-sim: {exc}", file=sys.stderr)
        return 2
    except (OSError, ImportError) as exc:
        print(f"iontodrive-sim: cannot create the port: {exc}", file=sys.stderr)
        return 1
    transport = WiredTransport(inner, wire, seed=opts.seed)
    device = opts.build_device()
    runner = DeviceRunner(device, transport, speed=opts.speed)
    control_server = None
    if args.control is not None:
        from .control import SimController

        try:
            from .control_http import ControlServer
        except ImportError as exc:
            print(f"iontodrive-sim: --control needs aiohttp (pip install '.[sim]'): {exc}", file=sys.stderr)
            transport.close()
            device.close()
            return 1
        try:
            control_server = ControlServer(
                SimController(runner, transport),
                *args.control,
                token=args.token,
                allow_remote=args.allow_remote,
            ).start()
        except (ValueError, OSError) as exc:
            print(f"iontodrive-sim: cannot serve the control API: {exc}", file=sys.stderr)
            transport.close()
            device.close()
            return 2 if isinstance(exc, ValueError) else 1

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
    if control_server is not None:
        sys.stdout.write(f"CONTROL {control_server.url}\n")
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
        if control_server is not None:
            control_server.stop()
        device.close()
        transport.close()
        counters = {k: v for k, v in transport.counters().items() if v}
        losses = {k: v for k, v in counters.items() if "shed" in k or "refused" in k or "telemetry" in k}
        if losses:  # frames the line could not carry, clients turned away: the tester should know
            log.warning("link counters: %s", counters)
        elif counters:
            log.info("link counters: %s", counters)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info(
        "stopped after %.1f s wall, %.1f s device time", time.monotonic() - started, device.session_time_s
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
