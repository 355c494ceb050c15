"""The driver's telemetry-rate check against the link budget (iontodrive.telemetry_budget)."""

from __future__ import annotations

import logging
import os
import pty

import pytest
import serial

from iontodrive.errors import SafetyRefusal
from iontodrive.protocol.budget import link_budget
from iontodrive.telemetry_budget import check_telemetry_rate, paced_baud


def test_a_rate_the_line_cannot_carry_is_refused_with_the_rate_that_fits() -> None:
    with pytest.raises(SafetyRefusal) as refused:
        check_telemetry_rate(1000, 115_200)
    assert refused.value.field == "rate_hz" and refused.value.maximum == link_budget(115_200).max_telemetry_hz
    assert "115,200-baud" in str(refused.value) and "288" in str(refused.value)


def test_a_tight_rate_is_warned_about_and_a_fitting_one_passes(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="iontodrive.telemetry_budget"):
        check_telemetry_rate(200, 115_200)
        assert not caplog.records
        check_telemetry_rate(260, 115_200)
    assert "260 Hz" in caplog.text
    check_telemetry_rate(5000, None)  # no budget known: nothing to check
    check_telemetry_rate(0, 9600)


def test_ptys_and_urls_have_no_budget_but_a_paced_port_would() -> None:
    master, slave = pty.openpty()
    try:
        port = serial.Serial(os.ttyname(slave), 9600)
        assert paced_baud(port) is None  # a pty carries bytes as fast as the machine does
        port.close()
    finally:
        os.close(master)
        os.close(slave)
    assert paced_baud(serial.serial_for_url("loop://", baudrate=9600)) is None

    class FakeUart:
        baudrate = 9600
        fd = os.open("/dev/null", os.O_RDONLY)  # a character device that is not a pty

    try:
        assert paced_baud(FakeUart()) == 9600
    finally:
        os.close(FakeUart.fd)
