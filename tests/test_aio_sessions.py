"""One behaviour suite over both APIs: the threaded ``Stimulator`` and the asyncio ``AsyncStimulator``
(both on the one session engine). Every S16 exit path, each checked on the simulator's ground-truth trace
(output ramped to zero, never faster than the prescription's ramps) and in the record's summary; plus the
paths only asyncio has (a cancelled task, a closed loop)."""

from __future__ import annotations

import _thread
import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_session import LONG, QUICK, assert_ramped_to_zero, settle_trace, sim_url
from trace_tools import wait_for_trace

import firmware_sim
from iontodrive import Stimulator
from iontodrive.aio import AsyncStimulator
from iontodrive.errors import LinkClosedError, SessionInterrupted
from iontodrive.protocol import DeviceState
from iontodrive.record import SessionRecord

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture(scope="module", autouse=True)
def _register() -> None:
    firmware_sim.register_url_handler()


UP_RATE = 2000 / 5  # LONG: 2 mA, 5 s up, 10 s down (uA/s); ended at HOLD by each exit path
DOWN_RATE = 2000 / 10
QUICK_RATE = 1000 / 5  # QUICK (the normal end, run to completion): 1 mA, 5 s ramps


def prescription_for(how: str) -> Any:
    return QUICK if how == "normal" else LONG


class Boom(Exception):
    pass


def when_holding(progress: Any) -> bool:
    return progress is not None and progress.state is DeviceState.HOLD


def run_threaded(url: str, record: Path, how: str) -> BaseException | SessionRecord:
    """Deliver LONG with the threaded API and end it by ``how``; what came out."""
    with Stimulator.open(url) as stim:
        fired = threading.Event()

        def on_progress(progress: Any) -> None:
            if not when_holding(progress) or fired.is_set():
                return
            fired.set()
            if how == "callback":
                raise Boom("a callback failed")
            threading.Thread(target=act, daemon=True).start()

        def act() -> None:
            if how == "interrupt":
                _thread.interrupt_main()
            elif how == "sigterm":
                _thread.interrupt_main(signal.SIGTERM)  # as a SIGTERM reaches the main thread
            elif how == "stop":
                session.stop()
            elif how == "abort":
                session.abort()

        try:
            if how in ("stop", "abort"):
                session = stim.start(prescription_for(how), record_path=record, on_progress=on_progress)
                return session.wait()
            session = None  # type: ignore[assignment]
            return stim.deliver(prescription_for(how), on_progress=on_progress, record_path=record)
        except (Boom, SessionInterrupted, KeyboardInterrupt) as exc:
            return exc


def run_async(url: str, record: Path, how: str) -> BaseException | SessionRecord:
    """Deliver LONG with the asyncio API and end it by ``how``; what came out."""

    async def main() -> SessionRecord:
        loop = asyncio.get_running_loop()
        async with AsyncStimulator.open(url) as stim:
            holding = asyncio.Event()
            fired: list[bool] = []

            def on_progress(progress: Any) -> None:  # called on the loop
                if not when_holding(progress) or fired:
                    return
                fired.append(True)
                if how == "callback":
                    raise Boom("a callback failed")
                loop.call_soon_threadsafe(holding.set)

            if how in ("stop", "abort"):
                session = await stim.start(prescription_for(how), record_path=record, on_progress=on_progress)
                await holding.wait()
                await (session.stop() if how == "stop" else session.abort())
                return await session.wait()
            task = asyncio.create_task(
                stim.deliver(prescription_for(how), on_progress=on_progress, record_path=record)
            )

            async def act() -> None:
                await holding.wait()
                if how == "cancel":
                    task.cancel()
                elif how == "interrupt":
                    signal.raise_signal(signal.SIGINT)  # asyncio.run cancels the main task
                elif how == "sigterm":
                    signal.raise_signal(signal.SIGTERM)

            actor = asyncio.create_task(act())
            try:
                return await task
            finally:
                actor.cancel()

    try:
        return asyncio.run(main())
    except (Boom, SessionInterrupted, KeyboardInterrupt, asyncio.CancelledError) as exc:
        return exc


RUNNERS: dict[str, Callable[[str, Path, str], BaseException | SessionRecord]] = {
    "threads": run_threaded,
    "asyncio": run_async,
}
EXPECTED: dict[str, tuple[str, Any]] = {  # how -> (end_reason in the record, what the caller gets)
    "normal": ("completed", SessionRecord),
    "stop": ("stopped", SessionRecord),
    "abort": ("aborted", SessionRecord),
    "callback": ("callback_error", Boom),
    "interrupt": ("interrupted", (SessionInterrupted, KeyboardInterrupt, asyncio.CancelledError)),
    "sigterm": ("interrupted", (SessionInterrupted, asyncio.CancelledError)),
}


@pytest.mark.parametrize("how", list(EXPECTED))
@pytest.mark.parametrize("api", list(RUNNERS))
def test_every_exit_path_ramps_down_and_is_recorded(api: str, how: str, tmp_path: Path) -> None:
    trace_path, record_path = tmp_path / "trace.csv", tmp_path / "r.jsonl"
    out = RUNNERS[api](sim_url(trace_path, speed=50), record_path, how)
    reason, kind = EXPECTED[how]
    assert isinstance(out, kind), repr(out)
    record = SessionRecord.load(record_path)
    assert record.complete and record.summary is not None
    assert record.summary["end_reason"] == reason
    if how == "abort":  # an abort ramps at the hard slew limit
        assert_ramped_to_zero(settle_trace(trace_path), 5000)
    elif how == "normal":
        assert_ramped_to_zero(settle_trace(trace_path), QUICK_RATE, QUICK_RATE)
    else:
        assert_ramped_to_zero(settle_trace(trace_path), UP_RATE, DOWN_RATE)


def test_a_cancelled_task_ramps_down_as_ctrl_c_does(tmp_path: Path) -> None:
    trace_path, record_path = tmp_path / "trace.csv", tmp_path / "r.jsonl"
    out = run_async(sim_url(trace_path, speed=50), record_path, "cancel")
    assert isinstance(out, asyncio.CancelledError), repr(out)
    record = SessionRecord.load(record_path)
    assert record.complete and record.summary is not None and record.summary["end_reason"] == "interrupted"
    assert_ramped_to_zero(settle_trace(trace_path), UP_RATE, DOWN_RATE)


def test_a_loop_that_stops_stops_the_heartbeats_and_the_device_ramps_down(tmp_path: Path) -> None:
    """The loop is closed while a session runs: the heartbeats (sent from the loop) stop with it, the
    device's watchdog pauses the output (S10); the engine's calls then fail as a dead link, at once."""
    trace_path = tmp_path / "trace.csv"
    loop = asyncio.new_event_loop()
    stim = loop.run_until_complete(AsyncStimulator.open(sim_url(trace_path, speed=1), watchdog_ms=500))
    session = loop.run_until_complete(stim.start(QUICK, record_path=tmp_path / "r.jsonl"))
    assert session.handle is not None
    requests_before = stim.client.stats.requests
    loop.close()  # no aclose, no stop: the loop is simply gone
    # nothing is sent from here on (a request would feed the watchdog too): the trace tells
    trace = wait_for_trace(trace_path, lambda t: t.state[-1] == "PAUSED" and t.output_ua[-1] == 0)
    assert stim.client.stats.requests == requests_before
    assert_ramped_to_zero(trace, 1000 / 5)
    with pytest.raises(LinkClosedError, match="event loop is closed"):
        stim.client.status()
    stim.stimulator.close()  # returns: nothing left to close, the device ramped down by itself
    assert stim.client.closed


def test_leaving_async_with_during_a_session_ramps_down(tmp_path: Path) -> None:
    trace_path, record_path = tmp_path / "trace.csv", tmp_path / "r.jsonl"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with AsyncStimulator.open(sim_url(trace_path, speed=50)) as stim:
            holding = asyncio.Event()

            def on_progress(progress: Any) -> None:
                if when_holding(progress):
                    loop.call_soon_threadsafe(holding.set)

            await stim.start(LONG, record_path=record_path, on_progress=on_progress)
            await holding.wait()
        # the block is left with the session running: closing ramps it down (S16)

    asyncio.run(main())
    record = SessionRecord.load(record_path)
    assert record.complete and record.summary is not None
    assert record.summary["end_reason"] in ("stopped", "interrupted")
    assert_ramped_to_zero(settle_trace(trace_path), UP_RATE, DOWN_RATE)


def test_callbacks_run_on_the_loop_and_a_coroutine_callback_that_raises_ramps_down(tmp_path: Path) -> None:
    """Progress reaches plain callbacks on the loop's own thread; a coroutine callback runs as a task, and
    one that raises ends the session exactly as a plain one does (ramped down, ``callback_error``)."""
    trace_path, record_path = tmp_path / "trace.csv", tmp_path / "r.jsonl"
    threads: set[int] = set()
    awaited: list[float] = []

    async def main() -> BaseException | None:
        loop_thread = threading.get_ident()
        async with AsyncStimulator.open(sim_url(trace_path, speed=50)) as stim:

            def plain(progress: Any) -> None:
                threads.add(threading.get_ident())

            session = await stim.start(QUICK, record_path=tmp_path / "plain.jsonl", on_progress=plain)
            await session.wait()
            assert threads == {loop_thread}

            async def failing(progress: Any) -> None:
                await asyncio.sleep(0)
                awaited.append(progress.fraction)
                if when_holding(progress):
                    raise Boom("a coroutine callback failed")

            try:
                await stim.deliver(LONG, record_path=record_path, on_progress=failing)
            except Boom as exc:
                return exc
        return None

    out = asyncio.run(main())
    assert isinstance(out, Boom), repr(out)
    assert awaited  # the coroutines ran
    record = SessionRecord.load(record_path)
    assert record.summary is not None and record.summary["end_reason"] == "callback_error"
    assert_ramped_to_zero(settle_trace(trace_path), UP_RATE, DOWN_RATE)


def test_a_blocking_engine_call_on_the_loop_is_refused_not_deadlocked(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncStimulator.open(sim_url(tmp_path / "trace.csv", speed=50)) as stim:
            with pytest.raises(RuntimeError, match="would block the event loop"):
                stim.stimulator.status()  # the blocking API, called from the loop's own thread
            assert (await stim.status()).state is DeviceState.IDLE  # the loop was never held

    asyncio.run(main())


def test_a_whole_session_never_blocks_the_loop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """asyncio's debug mode with the client suite's slow-callback threshold, over a whole session on the
    engine (the safety tier, records, progress and the end all touch the loop): no callback or task step
    holds it that long."""
    from test_aio_client import SLOW_CALLBACK_S

    async def main() -> None:
        asyncio.get_running_loop().slow_callback_duration = SLOW_CALLBACK_S
        async with AsyncStimulator.open(sim_url(tmp_path / "trace.csv", speed=50)) as stim:
            fractions: list[float] = []
            record = await stim.deliver(
                QUICK, record_path=tmp_path / "r.jsonl", on_progress=lambda p: fractions.append(p.fraction)
            )
            assert record.summary is not None and record.summary["end_reason"] == "completed"
            assert fractions and fractions[-1] == 1.0

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        asyncio.run(main(), debug=True)
    slow = [r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()]
    assert not slow, f"the loop was blocked: {slow}"
