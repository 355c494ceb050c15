"""The web console in a real headless browser (Debian's Chromium driven by Selenium through chromedriver).

It opens the page, watches the chart move during a session, clicks "electrode lift", and checks in the
simulator's own trace that the output ramped to zero within 1 s and the session paused. Where no browser
can be had the test says so in one line. ``CONSOLE_SCREENSHOT=path.png`` also saves a screenshot (the one
in ``docs/simulator.md`` was made so).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hostile import wait_for

from firmware_sim import Device, DeviceRunner, TraceRecorder
from firmware_sim.control import SimController
from firmware_sim.streams import MemoryTransport
from firmware_sim.wired import WiredTransport
from iontodrive.protocol import DeviceState, Polarity, SetWatchdog, Start, encode

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install '.[browser]')"
    )
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("no browser: chromium and chromedriver are not installed (`make test` installs them)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="h19-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as exc:  # no display libraries, a broken package...
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"no browser: chromium could not be started ({type(exc).__name__}: {exc})")
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_console_charts_a_session_and_its_lift_button_pauses_it_within_a_second(browser: Any) -> None:
    pytest.importorskip("aiohttp", reason="the console needs aiohttp (pip install '.[sim]')")
    from selenium.webdriver.common.by import By

    from firmware_sim.control_http import ControlServer

    recorder = TraceRecorder()
    device = Device("clinic-4", seed=4, trace=recorder)
    transport = WiredTransport(MemoryTransport())
    runner = DeviceRunner(device, transport, speed=4.0).start()
    control = SimController(runner, transport)
    with ControlServer(control, "127.0.0.1", 0) as server:
        try:
            runner.call(lambda d: d.receive(encode(SetWatchdog(10_000), 1)))  # no host feeds it here
            runner.call(lambda d: d.receive(encode(Start(2000, 0, 900_000, 5000, 5000, Polarity.CATHODE), 2)))
            browser.get(server.url)
            state = browser.find_element(By.ID, "state")

            def console(key: str) -> Any:
                return browser.execute_script(f"return window.consoleState.{key}")

            wait_for(lambda: console("lastT"), timeout_s=20, what="a frame")
            first = console("lastT")
            wait_for(lambda: state.text == "HOLD", timeout_s=20, what="HOLD shown")
            # the chart moves with device time (a loaded host may show the first frame late, in HOLD)
            wait_for(lambda: console("points") > 10 and console("lastT") > first, 20, "the chart")
            assert browser.find_elements(By.CSS_SELECTOR, "#chart-current canvas")
            assert float(browser.find_element(By.ID, "i").text) == pytest.approx(2.0, abs=0.05)
            if os.environ.get("CONSOLE_SCREENSHOT"):
                time.sleep(1.5)
                browser.save_screenshot(os.environ["CONSOLE_SCREENSHOT"] + ".hold.png")
            browser.find_element(By.ID, "act-electrode_lift").click()
            wait_for(lambda: state.text == "PAUSED", timeout_s=20, what="PAUSED shown")
            assert "ELECTRODE_LIFT" in browser.find_element(By.ID, "alarms").text
            assert "ELECTRODE_LIFT" in browser.find_element(By.ID, "events").text
            if os.environ.get("CONSOLE_SCREENSHOT"):
                time.sleep(1.0)
                browser.save_screenshot(os.environ["CONSOLE_SCREENSHOT"])
        finally:
            runner.stop()
            device.close()
    lift = next(entry for entry in control.log if entry["action"] == "electrode_lift")
    assert device.state is DeviceState.PAUSED
    t = recorder.columns["t_s"]
    output = recorder.columns["output_ua"]
    after = t >= lift["at_s"]
    assert output[after][0] > 1900  # flowing when the button was pressed
    zero_at = t[after][np.argmax(output[after] < 1.0)]
    assert zero_at - lift["at_s"] <= 1.0, zero_at - lift["at_s"]
    assert np.all(output[t >= zero_at] < 1.0)  # and it stayed there
