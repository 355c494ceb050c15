"""``iontodrive demo``: simulator + accelerated dose + summary + figure, in well under a minute."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from iontodrive.cli import exitcodes

DEFAULT_OUTDIR = Path("demo-output")
DEFAULT_SPEED = 100.0
DEFAULT_PRESET = "dexamethasone-40"
DEMO_TIMEOUT_S = 1.0
DEMO_TELEMETRY_HZ = 2  # per device second: 200 samples per wall second at 100x is plenty for display and plot
# Trace rows per second of device time: 5 Hz keeps the 10.5-minute session's ground truth near 200 kB (at
# 100 Hz it was 4 MB); --trace-rate raises it, --no-trace leaves it out.
TRACE_RATE_HZ = 5


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="start the simulator, deliver a short accelerated dose, print the summary, write the plot",
        description=(
            "Start the firmware simulator as a child process (clinic-4 over socket://127.0.0.1, running "
            "--speed times faster than real time, writing its ground-truth trace), deliver the preset "
            f"{DEFAULT_PRESET!r} (40 mA·min at 4 mA from the cathode, ramps 30 s) with the live display, "
            "print the session summary, write the record and the figure into the output directory, and stop "
            "the simulator. Takes about 10 s at the default speed."
        ),
    )
    parser.add_argument(
        "--outdir",
        default=str(DEFAULT_OUTDIR),
        metavar="DIR",
        help=f"default ./{DEFAULT_OUTDIR}: where the record, figure, trace and simulator log go",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=DEFAULT_SPEED,
        metavar="X",
        help=f"simulator speed factor: device time runs X times faster (default: {DEFAULT_SPEED:g})",
    )
    parser.add_argument(
        "--trace-rate",
        type=int,
        default=TRACE_RATE_HZ,
        metavar="HZ",
        help="rows per second of device time in the simulator's ground-truth trace "
        f"(default: {TRACE_RATE_HZ})",
    )
    parser.add_argument(
        "--no-trace", action="store_true", help="do not write the simulator's ground-truth trace"
    )
    parser.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        metavar="NAME",
        help=f"preset to deliver (default: {DEFAULT_PRESET})",
    )
    parser.set_defaults(func=run)


def _fresh(path: Path) -> Path:
    """``path`` if it does not exist, else ``path`` with ``-2``, ``-3``... before the suffix."""
    if not path.exists():
        return path
    n = 2
    while True:
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists():
            return candidate
        n += 1


def run(args: argparse.Namespace) -> int:
    from iontodrive.cli import deliver, report
    from iontodrive.cli.simproc import SimulatorProcess
    from iontodrive.plotting import plot_record
    from iontodrive.presets import get_preset
    from iontodrive.record import SessionRecord

    if args.speed <= 0:
        raise exitcodes.UsageError(f"--speed {args.speed:g} refused: allowed more than 0 (e.g. 100)")
    if args.trace_rate < 1:
        raise exitcodes.UsageError(f"--trace-rate {args.trace_rate} Hz refused: allowed at least 1 Hz")
    preset = get_preset(args.preset)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    record_path = _fresh(outdir / "session.jsonl")
    plot_path = record_path.with_suffix(".png")
    trace_path = None if args.no_trace else _fresh(outdir / "trace.csv")
    log_path = _fresh(outdir / "simulator.log")
    model = preset.model or "clinic-4"
    t_start = time.monotonic()
    print(f"starting the simulator ({model}, {args.speed:g}x real time) ...", flush=True)
    # INFO: the simulator's own story (serving, host connected and gone, its summary at exit); at its default
    # level (WARNING) a demo without faults leaves the log empty.
    sim_args = ["--tcp", "127.0.0.1:0", "--model", model, "--speed", f"{args.speed:g}", "--log-level", "INFO"]
    if trace_path is not None:
        sim_args += ["--trace", str(trace_path), "--trace-rate", str(args.trace_rate)]
    with SimulatorProcess(*sim_args, log_path=log_path) as sim:
        print(f"simulator serving {sim.url}", flush=True)
        deliver_args = argparse.Namespace(
            port=sim.url,
            preset=preset.name,
            current_ma=None,
            dose_ma_min=None,
            duration_s=None,
            ramp_up_s=None,
            ramp_down_s=None,
            polarity=None,
            waveform=None,
            pulse_hz=None,
            duty=None,
            area_cm2=None,
            record=str(record_path),
            label=["sample=demo", f"note=iontodrive demo, simulator at {args.speed:g}x"],
            json=False,
            interval_s=1.0,
            telemetry_hz=DEMO_TELEMETRY_HZ,
            quiet=False,
            debug=getattr(args, "debug", False),
            frame_trace=getattr(args, "frame_trace", None),
            # The simulator shares this machine's CPU: allow it a generous reply deadline unless told.
            timeout_s=getattr(args, "timeout_s", None) or DEMO_TIMEOUT_S,
            retries=getattr(args, "retries", None),
        )
        code = deliver.run(deliver_args)
    if not record_path.exists():
        return code
    record = SessionRecord.load(record_path)
    print()
    for line in report.summary_lines(report.summarize(record), events=True):
        print(line)
    try:
        plot_record(record, plot_path)
        plot_note = str(plot_path)
    except ImportError as exc:
        plot_note = f"not written ({exc})"
    elapsed = time.monotonic() - t_start
    print()
    print(f"demo finished in {elapsed:.1f} s; files in {outdir.resolve()}:")
    print(f"  record (JSON Lines)       {record_path}")
    print(f"  figure                    {plot_note}")
    print(f"  simulator trace (CSV)     {trace_path or 'not written (--no-trace)'}")
    print(f"  simulator log             {log_path}")
    print(f"open the figure: xdg-open {plot_path}   (macOS: open {plot_path})")
    sys.stdout.flush()
    return code
