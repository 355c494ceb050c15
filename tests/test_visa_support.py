"""Shared helpers for the VISA tests (imported by the other ``test_visa_*`` modules), and checks of the
simulated bench itself.

Every test gets its own copy of ``tests/visa_sim`` (pyvisa caches one simulated library per file path, so a
fresh path means fresh instruments: output off, 0 A, defaults). ``open_bench`` opens one instrument of that
bench in virtual time with a :class:`CommandLog` recording every command the driver sends.
"""

from __future__ import annotations

import itertools
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pyvisa

from iontodrive.visa import CommandLog, SimulatedLoad, VirtualClock, VisaSource
from iontodrive.visa.instrument import CommandEntry

SIM_DIR = Path(__file__).parent / "visa_sim"
K2400 = "GPIB0::24::INSTR"
K2450 = "USB0::0x05E6::0x2450::04096331::INSTR"
B2902A = "TCPIP0::192.168.0.42::inst0::INSTR"
UNSUPPORTED = "GPIB0::12::INSTR"
MODELS = {"2400": K2400, "2450": K2450, "B2902A": B2902A}

LEVEL_WRITE = re.compile(r"^:SOUR\d?:CURR (-?\d+\.\d+E-3)$")
LEVEL_QUERY = re.compile(r"^:SOUR\d?:CURR\?$")
OUTPUT_ON = re.compile(r"^:OUTP\d? ON$")
OUTPUT_OFF = re.compile(r"^:OUTP\d? OFF$")
COMPLIANCE_WRITE = re.compile(r"^(:SENS\d?:VOLT:PROT|:SOUR:CURR:VLIM) \d+\.\d+$")
FUNCTION_WRITE = re.compile(r"^:SOUR\d?:FUNC(:MODE)? CURR$")
RANGE_WRITE = re.compile(r"^:SOUR\d?:CURR:RANG \d+\.\d+E-3$")
FORMAT_TOLERANCE_A = 2e-9  # currents are sent with 1 nA resolution


@dataclass
class Bench:
    source: VisaSource
    log: CommandLog
    clock: VirtualClock
    load: SimulatedLoad
    library: str


def copy_bench(directory: Path) -> str:
    """Copy the YAML definitions into ``directory``; return the pyvisa library string for them."""
    target = directory / "visa_sim"
    shutil.copytree(SIM_DIR, target)
    return f"{target / 'bench.yaml'}@sim"


def open_bench(library: str, resource: str, **options: Any) -> Bench:
    """Open ``resource`` on the simulated bench in virtual time, with a command log."""
    log = CommandLog()
    clock = VirtualClock()
    source = VisaSource.open(resource, visa_library=library, clock=clock, recorder=log, **options)
    load = source.instrument.resource
    assert isinstance(load, SimulatedLoad)
    return Bench(source, log, clock, load, library)


def raw_resource(library: str, resource: str) -> Any:
    """A second, unrecorded handle on a simulated instrument (to play 'someone else at the bench')."""
    handle = pyvisa.ResourceManager(library).open_resource(resource)
    handle.read_termination = handle.write_termination = "\n"
    return handle


def level_writes(entries: list[CommandEntry]) -> list[tuple[int, float, float]]:
    """(index in the log, time, amperes) of every source-level write."""
    out = []
    for index, entry in enumerate(entries):
        match = LEVEL_WRITE.match(entry.command) if entry.kind == "write" else None
        if match:
            out.append((index, entry.t_s, float(match.group(1))))
    return out


def first_index(entries: list[CommandEntry], pattern: re.Pattern[str]) -> int:
    return next(i for i, e in enumerate(entries) if pattern.match(e.command))


def assert_safe_command_log(
    entries: list[CommandEntry], *, slew_ua_per_s: float, rate_hz: float, max_current_ua: float
) -> list[tuple[int, float, float]]:
    """The order and ramp rules every session must keep, checked on the commands actually sent.

    * function, range and compliance are set before the output is switched on;
    * the level is read back before the first non-zero set-point;
    * no two successive set-points differ by more than slew/rate, are closer than 1/rate in time, or
      imply a slope above the slew limit; none exceeds the maximum current;
    * the output is switched off only when the last set-point was 0 and a read-back said 0.
    Returns the level writes for further checks.
    """
    on = [i for i, e in enumerate(entries) if OUTPUT_ON.match(e.command)]
    if on:
        for pattern in (FUNCTION_WRITE, RANGE_WRITE, COMPLIANCE_WRITE):
            assert first_index(entries, pattern) < on[0], f"{pattern.pattern} not before output on"
    writes = level_writes(entries)
    first_nonzero = next((i for i, _t, a in writes if a != 0.0), None)
    if first_nonzero is not None:
        assert any(LEVEL_QUERY.match(e.command) for e in entries[:first_nonzero]), (
            "no read-back before the first ramp"
        )
    step_limit_a = slew_ua_per_s / rate_hz * 1e-6 + FORMAT_TOLERANCE_A
    for (_i0, t0, a0), (_i1, t1, a1) in itertools.pairwise(writes):
        assert abs(a1 - a0) <= step_limit_a, f"step {a0} -> {a1} A exceeds {step_limit_a} A"
        assert t1 - t0 >= 1.0 / rate_hz - 1e-9, f"set-points {t1 - t0} s apart"
        assert abs(a1 - a0) <= slew_ua_per_s * 1e-6 * (t1 - t0) + FORMAT_TOLERANCE_A
    assert all(abs(a) <= max_current_ua * 1e-6 + FORMAT_TOLERANCE_A for _i, _t, a in writes)
    for index, entry in enumerate(entries):
        if OUTPUT_OFF.match(entry.command):
            before = [w for w in writes if w[0] < index]
            if before:
                assert before[-1][2] == 0.0, "output switched off away from zero"
            last_readback = next(
                e for e in reversed(entries[:index]) if LEVEL_QUERY.match(e.command) and e.kind == "query"
            )
            assert last_readback.reply is not None and float(last_readback.reply) == 0.0
    return writes


# ------------------------------------------------------------------------------- checks of the bench


@pytest.mark.parametrize("resource", [K2400, K2450, B2902A, UNSUPPORTED])
def test_bench_yaml_defines_every_instrument(tmp_path: Path, resource: str) -> None:
    manager = pyvisa.ResourceManager(copy_bench(tmp_path))
    handle = manager.open_resource(resource)
    handle.read_termination = handle.write_termination = "\n"
    idn = handle.query("*IDN?")
    assert idn.count(",") >= 3
    handle.write(":NOT:A:COMMAND")
    code = int(float(handle.query(":SYST:ERR?").split(",")[0]))
    assert code < 0, "unknown commands must land in the error queue"
    assert int(float(handle.query(":SYST:ERR?").split(",")[0])) == 0
