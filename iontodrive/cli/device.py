"""``info``, ``check`` and ``monitor``: looking at a device without starting a session."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
from enum import Enum
from typing import Any

from iontodrive.cli import exitcodes, fmt
from iontodrive.cli.ports_open import open_for

PORT_HELP = "serial path, pty, socket://HOST:PORT, sim://MODEL?speed=N, or a VISA resource string"
PROBE_DEFAULT_UA = 50


def as_dict(obj: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a protocol report (enumerations by name)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _enum_name(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _enum_name(v) for k, v in obj.items()}
    return {"value": repr(obj)}


def _enum_name(value: Any) -> Any:
    if isinstance(value, Enum):
        name: str | None = value.name  # None for a combination of flags
        return str(value) if name is None else name
    return value


def add_parser(subparsers: Any) -> None:
    info = subparsers.add_parser(
        "info",
        help="identity, firmware and protocol versions, hard limits and present status",
        description=(
            "Connect, identify and print the device's identity, firmware and protocol versions, its hard "
            "limits (maximum current, compliance voltage, dose cap, slew limit, ramp and duration range, "
            "trip current, waveforms, telemetry and watchdog range) and its present status. Read-only: "
            "nothing on the device changes, except that the host watchdog is set to 2 s while connected."
        ),
    )
    info.add_argument("port", metavar="PORT", help=PORT_HELP)
    info.add_argument("--json", action="store_true", help="print one JSON object (wire units: uA, mV, ms)")
    info.set_defaults(func=run_info)

    check = subparsers.add_parser(
        "check",
        help="contact check: electrode-skin impedance with a verdict",
        description=(
            "Measure the electrode-skin impedance with a small probe current (output must be at zero) and "
            "judge it twice: by the device against its compliance, and by the driver's S3 limits "
            "(200 ohm .. min(10 kohm, 0.8 x compliance / target current)). Exit code 0 if both pass, 3 if "
            "not (a session would be refused)."
        ),
    )
    check.add_argument("port", metavar="PORT", help=PORT_HELP)
    check.add_argument(
        "--current-ma",
        type=float,
        metavar="MA",
        help="the current you intend to deliver, in mA; the impedance limit depends on it "
        "(default: the model's maximum current, the strictest verdict)",
    )
    check.add_argument(
        "--probe-ua",
        type=int,
        default=PROBE_DEFAULT_UA,
        metavar="UA",
        help=f"probe current in microampere, at most 50 (default: {PROBE_DEFAULT_UA})",
    )
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(func=run_check)

    monitor = subparsers.add_parser(
        "monitor",
        help="live telemetry and events without starting anything",
        description=(
            "Print the device's telemetry (state, set-point, measured current, voltage, impedance, dose) "
            "and events as they arrive, without starting or changing a session. Stop with Ctrl-C (exit "
            "code 0) or --duration-s."
        ),
    )
    monitor.add_argument("port", metavar="PORT", help=PORT_HELP)
    monitor.add_argument(
        "--csv",
        action="store_true",
        help="stream CSV (one header line, one row per sample; units in the column names) instead of text",
    )
    monitor.add_argument(
        "--duration-s",
        type=float,
        metavar="S",
        help="stop after this many seconds of wall time (default: run until Ctrl-C)",
    )
    monitor.add_argument(
        "--rate-hz",
        type=int,
        metavar="HZ",
        help="set the device's telemetry rate in Hz (default: leave it; 2 Hz if telemetry is off)",
    )
    monitor.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="N",
        help="in text mode print every Nth sample (default: 1, every sample); CSV always has every sample",
    )
    monitor.set_defaults(func=run_monitor)


# ------------------------------------------------------------------------------------------------ info


def identity_lines(identity: Any) -> list[str]:
    """The identity report as human lines in user units."""
    d = as_dict(identity)
    get = d.get
    lines = [
        f"model              {get('model')}",
        f"serial number      {get('serial_number')}",
        f"firmware           {get('firmware_major')}.{get('firmware_minor')}.{get('firmware_patch')}",
        f"protocol version   {get('protocol_version')}",
    ]
    if "max_current_ua" in d:
        lines += [
            "hard limits (set by the device; cannot be raised over the protocol):",
            f"  max current      {d['max_current_ua'] / 1000:g} mA",
            f"  compliance       {d['compliance_mv'] / 1000:g} V",
            f"  dose cap         {d['dose_cap_uas'] / 60000:g} mA·min",
            f"  slew limit       {d['slew_limit_ua_per_s'] / 1000:g} mA/s",
            f"  ramp time        {d['min_ramp_ms'] / 1000:g} .. {d['max_ramp_ms'] / 1000:g} s",
            f"  max duration     {d['max_duration_ms'] / 60000:g} min",
            f"  trip current     {d['trip_current_ua'] / 1000:g} mA",
            f"  waveforms        {get('waveforms')}",
            f"  telemetry        up to {get('max_telemetry_hz')} Hz",
            "  pulse frequency  "
            + (
                f"{get('min_pulse_frequency_hz')} .. {get('max_pulse_frequency_hz')} Hz"
                if get("max_pulse_frequency_hz")
                else "n/a (no pulsed DC)"
            ),
            "  watchdog         "
            + (
                f"{d['min_watchdog_ms'] / 1000:g} .. {d['max_watchdog_ms'] / 1000:g} s"
                if d["max_watchdog_ms"]
                else "NONE: output stays on if this host dies (see docs/visa.md)"
            ),
        ]
    else:
        lines += [f"{k:<18} {v}" for k, v in d.items() if not k.startswith("firmware") and k != "model"]
    return lines


def status_lines(status: Any) -> list[str]:
    """A status report as human lines in user units."""
    d = as_dict(status)
    return [
        f"state              {d.get('state')}  (flags {d.get('flags')})",
        f"polarity           {d.get('polarity')}",
        f"set-point          {d.get('setpoint_ua', 0) / 1000:.3f} mA "
        f"(target {d.get('target_current_ua', 0) / 1000:.3f} mA)",
        f"measured current   {d.get('measured_ua', 0) / 1000:.3f} mA",
        f"voltage            {d.get('voltage_mv', 0) / 1000:.2f} V",
        f"impedance          {fmt.ohm(d.get('impedance_ohm')) if d.get('impedance_ohm') else 'not measured'}",
        f"delivered          {d.get('charge_uas', 0) / 60000:.3f} mA·min "
        f"(target {d.get('target_charge_uas', 0) / 60000:.3f} mA·min)",
        f"remaining          {fmt.duration(d.get('remaining_ms', 0) / 1000)}",
        f"session id         {d.get('session_id')}   last event no {d.get('last_event_no')}",
        f"watchdog           {d.get('watchdog_ms', 0) / 1000:g} s   telemetry {d.get('telemetry_hz')} Hz",
        f"device time        {d.get('device_time_ms', 0) / 1000:.1f} s",
    ]


def _require_stimulator(stim: Any, command: str) -> None:
    if not stim.has_device_status:
        raise exitcodes.UsageError(
            f"{command} needs a stimulator (the framed protocol); {type(stim).__name__} is a bench source"
        )


def run_info(args: argparse.Namespace) -> int:
    with open_for(args) as stim:
        identity = stim.identity
        status = stim.status() if stim.has_device_status else None
        url = stim.url or args.port
    if args.json:
        body = {
            "port": url,
            "identity": as_dict(identity),
            "status": None if status is None else as_dict(status),
        }
        print(json.dumps(body, indent=2))
        return exitcodes.OK
    print(f"port               {url}")
    for line in identity_lines(identity):
        print(line)
    if status is None:
        print("status:            (a bench source-meter: no device status; the host ramps it)")
        return exitcodes.OK
    print("status:")
    for line in status_lines(status):
        print("  " + line)
    return exitcodes.OK


# ----------------------------------------------------------------------------------------------- check


def run_check(args: argparse.Namespace) -> int:
    from iontodrive.prescription import contact_limits_ohm
    from iontodrive.protocol import OPEN_CIRCUIT_OHM, ContactVerdict

    if not 1 <= args.probe_ua <= PROBE_DEFAULT_UA:
        raise exitcodes.UsageError(f"--probe-ua {args.probe_ua} is outside [1, {PROBE_DEFAULT_UA}] uA (S3)")
    with open_for(args) as stim:
        _require_stimulator(stim, "check")
        identity = stim.identity
        if args.current_ma is None:
            target_ua = int(identity.max_current_ua)
        else:
            if not 0 < args.current_ma * 1000 <= identity.max_current_ua:
                raise exitcodes.UsageError(
                    f"--current-ma {args.current_ma:g} is outside (0, {identity.max_current_ua / 1000:g}] mA "
                    f"for this {identity.model}"
                )
            target_ua = round(args.current_ma * 1000)
        report = stim.check_contact(target_ua, args.probe_ua)
    low, high = contact_limits_ohm(identity, target_ua)
    device_ok = report.verdict is ContactVerdict.OK
    open_circuit = report.impedance_ohm == OPEN_CIRCUIT_OHM
    driver_ok = not open_circuit and low <= report.impedance_ohm <= high
    ok = device_ok and driver_ok
    if open_circuit:
        advice = "no contact: electrode off the skin or a lead disconnected"
    elif report.impedance_ohm > high:
        advice = "impedance too high: wet the pads, press the electrodes on, or lower the current"
    elif report.impedance_ohm < low:
        advice = "impedance too low: the electrodes may be touching (short circuit)"
    else:
        advice = "contact good: a session at this current may start"
    if args.json:
        print(
            json.dumps(
                {
                    "ok": ok,
                    "impedance_ohm": None if open_circuit else report.impedance_ohm,
                    "open_circuit": open_circuit,
                    "device_verdict": report.verdict.name,
                    "device_limits_ohm": [report.low_limit_ohm, report.high_limit_ohm],
                    "driver_limits_ohm": [low, high],
                    "target_current_ma": target_ua / 1000,
                    "probe_current_ua": report.probe_current_ua,
                    "advice": advice,
                },
                indent=2,
            )
        )
    else:
        print(f"impedance          {fmt.ohm(None if open_circuit else report.impedance_ohm)}")
        print(f"target current     {target_ua / 1000:g} mA   (probe {report.probe_current_ua} uA)")
        print(
            f"device verdict     {report.verdict.name}   "
            f"(accepts {fmt.ohm(report.low_limit_ohm)} .. {fmt.ohm(report.high_limit_ohm)})"
        )
        print(
            f"driver verdict     {'OK' if driver_ok else 'REFUSE'}   "
            f"(accepts {fmt.ohm(low)} .. {fmt.ohm(high)})"
        )
        print(f"verdict            {'PASS' if ok else 'FAIL'}: {advice}")
    return exitcodes.OK if ok else exitcodes.REFUSED


# --------------------------------------------------------------------------------------------- monitor

CSV_COLUMNS = (
    "host_time_s",
    "sample_no",
    "device_time_s",
    "state",
    "flags",
    "polarity",
    "setpoint_ma",
    "current_ma",
    "voltage_v",
    "impedance_ohm",
    "dose_ma_min",
)


def telemetry_row(sample: Any, t0: float) -> list[Any]:
    """One CSV row in user units; impedance empty when the circuit is open."""
    from iontodrive.protocol import OPEN_CIRCUIT_OHM

    return [
        f"{time.monotonic() - t0:.3f}",
        sample.sample_no,
        f"{sample.device_time_ms / 1000:.3f}",
        sample.state.name,
        int(sample.flags),
        sample.polarity.name,
        f"{sample.setpoint_ua / 1000:.3f}",
        f"{sample.measured_ua / 1000:.3f}",
        f"{sample.voltage_mv / 1000:.3f}",
        "" if sample.impedance_ohm == OPEN_CIRCUIT_OHM else sample.impedance_ohm,
        f"{sample.charge_uas / 60000:.4f}",
    ]


def run_monitor(args: argparse.Namespace) -> int:
    if args.duration_s is not None and not (math.isfinite(args.duration_s) and args.duration_s > 0):
        raise exitcodes.UsageError(
            f"--duration-s = {args.duration_s} is out of range: must be a finite number of seconds > 0"
        )
    if args.every < 1:
        raise exitcodes.UsageError("--every must be >= 1")
    out = sys.stdout
    writer = csv.writer(out, lineterminator="\n") if args.csv else None
    t0 = time.monotonic()
    deadline = None if args.duration_s is None else t0 + args.duration_s
    count = 0
    with open_for(args) as stim:
        _require_stimulator(stim, "monitor")
        status = stim.status()
        if args.rate_hz is not None:
            top = stim.identity.max_telemetry_hz
            if not 0 <= args.rate_hz <= top:  # checked before anything is sent
                raise exitcodes.UsageError(
                    f"--rate-hz = {args.rate_hz} is out of range: must be in [0, {top}]"
                )
            stim.configure_telemetry(args.rate_hz)
        elif status.telemetry_hz == 0:
            stim.configure_telemetry(2)

        def on_event(event: Any) -> None:
            text = fmt.describe_event(event.code, event.value, event.state)
            line = f"[{fmt.duration(event.device_time_ms / 1000)}] event #{event.event_no}: {text}"
            print(line, file=sys.stderr if writer else out, flush=True)

        remove = stim.add_event_listener(on_event)
        subscription = stim.subscribe_telemetry()
        try:
            if writer is not None:
                writer.writerow(CSV_COLUMNS)
                out.flush()
            else:
                print(f"monitoring {stim.identity.model} on {stim.url}; Ctrl-C to stop")
            while deadline is None or time.monotonic() < deadline:
                wait = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
                sample = subscription.get(timeout=wait)
                if sample is None:
                    if stim.closed or stim.failure is not None:
                        stim.status()  # raises the link error
                    continue
                count += 1
                if writer is not None:
                    writer.writerow(telemetry_row(sample, t0))
                    out.flush()
                elif (count - 1) % args.every == 0:
                    print(
                        f"[{fmt.duration(sample.device_time_ms / 1000)}] {sample.state.name:<10} "
                        f"I {sample.measured_ua / 1000:6.3f} mA (set {sample.setpoint_ua / 1000:.3f})  "
                        f"U {sample.voltage_mv / 1000:5.1f} V  Z {fmt.ohm(sample.impedance_ohm)}  "
                        f"dose {sample.charge_uas / 60000:.3f} mA·min",
                        flush=True,
                    )
        except KeyboardInterrupt:
            pass  # Ctrl-C is the normal way to end monitoring
        finally:
            remove()
            subscription.close()
    if writer is None:
        print(f"{count} samples")
    return exitcodes.OK
