"""Load fixtures: control of the electrical load, for the rules that need the load to misbehave.

A bare port lets the suite talk to the device, not change what is connected to its electrodes. The rules
that check what a device does when the load changes -- a contact check that fails (§6 ``CONTACT_*``), the
resistance limit (S5), an electrode lift (S6), a latched trip and the FAULT row of the request x state
table (S9, §7.5) -- need something that can switch the load: a :class:`Fixture`. Without one they are
reported NOT_RUN ("needs a load fixture: --fixture ...", ``docs/conformance.md`` §3.1), as the rules that
need a load are without one.

The interface is small on purpose, so that a firmware team can wire it to a bench (a relay-switched
resistor ladder, a programmable decade resistance or an electronic load in constant-resistance mode):

* :attr:`Fixture.nominal_ohm` -- the resistance of the load after :meth:`Fixture.restore` (Ω);
* :meth:`Fixture.set_load_ohm` -- connect a resistance of about that many ohms, at once;
* :meth:`Fixture.open_circuit` -- disconnect one electrode (an electrode lifted off the skin);
* :meth:`Fixture.restore` -- the nominal load, contact closed, any trip injection ended;
* :meth:`Fixture.trip` -- make the output current exceed the device's over-current trip (optional).

A method the fixture cannot carry out raises :class:`FixtureUnsupported`; the rule is then NOT_RUN with
that reason. Every method returns as soon as the change is made (a relay has settled: milliseconds; the
suite sends no heartbeat meanwhile, so within a second at most) and must not raise for anything else but
a broken fixture (then :class:`FixtureError`, which stops the run: the load is in an unknown state).

Two implementations come with the suite, both over the simulator's bench-instrument control API
(:mod:`firmware_sim.control`): :class:`SimFixture` drives any object with ``act(name, params)`` and
``snapshot()`` -- the in-process simulator behind a ``sim://`` port (``port.control``) or a test's
:class:`firmware_sim.control.DeviceControl` -- and :class:`HttpSimControl` gives it the simulator's HTTP
API (``python -m firmware_sim --control HOST:PORT``). :func:`open_fixture` turns the command line's
``--fixture`` value into one.
"""

from __future__ import annotations

import importlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Protocol

#: Seconds an HTTP request to the simulator's control API may take before the fixture is broken.
HTTP_TIMEOUT_S = 5.0
#: Simulator seconds over which the simulator's fixture lifts or puts back an electrode (a relay: at once).
SIM_CONTACT_CHANGE_S = 0.005
#: The over-current the simulator's fixture injects: the regulator's gain (S9 trips at set-point + 10 %;
#: at the test current x 1.3 the current stays below the suite's own ceiling, which would abort) ...
SIM_TRIP_GAIN = 1.3
#: ... reached over this many simulator seconds, and held for this long (the trip fires well within it).
SIM_TRIP_RISE_S = 0.02
SIM_TRIP_HOLD_S = 0.1
#: Wall seconds the simulator's fixture waits for a load change to reach the plant (the simulator's loop
#: applies it at its next tick, at most 50 ms later), polling every SIM_APPLY_POLL_S.
SIM_APPLY_TIMEOUT_S = 2.0
SIM_APPLY_POLL_S = 0.005


class FixtureUnsupported(Exception):
    """The fixture cannot do what a rule asked (the rule is then NOT_RUN with this reason)."""


class FixtureError(Exception):
    """The fixture failed (no answer, a refusal): the load is in an unknown state and the run stops."""


class Fixture(ABC):
    """What the suite needs of a load it can change (see the module docstring).

    Subclass it for a bench: implement the four abstract members (and :meth:`trip` if the bench can
    inject an over-current), and pass ``--fixture MODULE:NAME`` (``NAME()`` must return the fixture).
    """

    #: A short name for the report header ("relay ladder on /dev/ttyUSB1").
    name: str = "fixture"

    @property
    @abstractmethod
    def nominal_ohm(self) -> int:
        """The load's resistance after :meth:`restore` (Ω): the 1 kΩ of ``docs/conformance.md`` §3."""

    @abstractmethod
    def set_load_ohm(self, load_ohm: int) -> None:
        """Connect a load of about ``load_ohm`` Ω at once (within 10 %; a fixture with few resistors picks
        the nearest on the same side of :attr:`nominal_ohm`). The suite changes the load with output on
        only upwards in steps of at most :data:`~iontodrive.conformance.rules.plant.LOAD_STEP` (never a
        lift, S6) or back down to the nominal load.

        Raises:
            FixtureUnsupported: no such load can be connected.
            FixtureError: the fixture failed.
        """

    @abstractmethod
    def open_circuit(self) -> None:
        """Disconnect the load (an electrode lifted off the skin). Raises as :meth:`set_load_ohm`."""

    @abstractmethod
    def restore(self) -> None:
        """Connect the nominal load again, close the circuit and end any trip injection. Called after every
        rule that used the fixture, whatever it did; must be idempotent. Raises FixtureError if it fails."""

    def trip(self) -> None:
        """Make the output current exceed the device's over-current trip (S9: set-point + 10 %), for a
        moment, while output flows at the suite's test current: e.g. a second current source of a few
        hundred µA switched in parallel by a relay. The default cannot.

        Raises:
            FixtureUnsupported: the fixture cannot provoke a trip.
        """
        raise FixtureUnsupported(f"{self.name} cannot provoke an over-current trip")


class SimControl(Protocol):
    """The simulator's control API as the fixture uses it (:class:`firmware_sim.control.SimController`,
    :class:`firmware_sim.control.DeviceControl`, :class:`HttpSimControl`)."""

    def act(self, name: str, params: Mapping[str, Any] | None = None) -> Any: ...

    def snapshot(self) -> Mapping[str, Any]: ...


class SimFixture(Fixture):
    """A fixture made of the simulator's control API: the load is its electrode-skin model, scaled.

    ``set_load_ohm(R)`` scales the model's series and skin resistance (the ``skin`` action) so that its
    resting impedance is R (while current flows, the skin's conditioning lowers it by up to a quarter, as
    skin does) and returns once the simulator's status shows it; ``open_circuit`` is an
    ``electrode_lift`` over :data:`SIM_CONTACT_CHANGE_S`; ``trip`` an ``overcurrent`` of gain
    :data:`SIM_TRIP_GAIN`; ``restore`` puts back the load it found and the contact.

    Raises:
        FixtureError: the control API does not answer or does not describe its load.
    """

    name = "simulator control API"

    def __init__(self, control: SimControl, name: str | None = None) -> None:
        self.control = control
        if name is not None:
            self.name = name
        load = _call(lambda: control.snapshot()).get("load")
        if not isinstance(load, Mapping) or not {"r_series_ohm", "r_skin_ohm"} <= set(load):
            raise FixtureError(
                "the simulator's status does not describe its load (a simulator before issue 14?)"
            )
        self._series_ohm = float(load["r_series_ohm"])
        self._skin_ohm = float(load["r_skin_ohm"])
        self._scale = 1.0
        self._open = False

    @property
    def nominal_ohm(self) -> int:
        return round(self._series_ohm + self._skin_ohm)

    def set_load_ohm(self, load_ohm: int) -> None:
        if load_ohm <= 0:
            raise FixtureUnsupported(f"a load of {load_ohm} ohm (use open_circuit or a short)")
        self._apply(load_ohm / (self._series_ohm + self._skin_ohm))

    def open_circuit(self) -> None:
        _call(lambda: self.control.act("electrode_lift", {"duration_s": SIM_CONTACT_CHANGE_S}))
        self._open = True

    def restore(self) -> None:
        if self._open:
            _call(lambda: self.control.act("contact_return", {"duration_s": SIM_CONTACT_CHANGE_S}))
            self._open = False
        if self._scale != 1.0:
            self._apply(1.0)

    def trip(self) -> None:
        params = {"gain": SIM_TRIP_GAIN, "rise_s": SIM_TRIP_RISE_S, "duration_s": SIM_TRIP_HOLD_S}
        _call(lambda: self.control.act("overcurrent", params))

    def _apply(self, scale: float) -> None:
        params = {"r_series_ohm": self._series_ohm * scale, "r_skin_kohm": self._skin_ohm * scale / 1000.0}
        _call(lambda: self.control.act("skin", params))
        self._scale = scale
        wanted = (self._series_ohm + self._skin_ohm) * scale
        deadline = time.monotonic() + SIM_APPLY_TIMEOUT_S
        while abs(self._resting_ohm() - wanted) > 1e-6 * wanted:
            if time.monotonic() > deadline:
                raise FixtureError(f"the simulator did not apply the load of {wanted:.0f} ohm")
            time.sleep(SIM_APPLY_POLL_S)

    def _resting_ohm(self) -> float:
        load = _call(lambda: self.control.snapshot()).get("load")
        return float(load["resting_impedance_ohm"]) if isinstance(load, Mapping) else float("nan")


def _call(action: Any) -> Any:
    """Run one control call; a ValueError (the API's ControlError) or OSError becomes FixtureError."""
    try:
        return action()
    except FixtureError:
        raise
    except (ValueError, OSError) as exc:
        raise FixtureError(f"the simulator's control API refused or failed: {exc}") from exc


class HttpSimControl:
    """The simulator's control API over HTTP (``firmware_sim.control_http``; ``--control HOST:PORT``).

    ``url`` is the server's base URL as ``python -m firmware_sim`` prints it after ``CONTROL``, optionally
    with ``?token=T`` (sent as ``Authorization: Bearer T``).

    Raises (from each call):
        FixtureError: the server does not answer within :data:`HTTP_TIMEOUT_S`, or answers an error.
    """

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{url!r} is not an http:// URL of the simulator's control API")
        token = urllib.parse.parse_qs(parts.query).get("token", [""])[-1]
        self.base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def snapshot(self) -> Mapping[str, Any]:
        result = self._request("GET", "/api/status", None)
        if not isinstance(result, Mapping):
            raise FixtureError(f"GET {self.base}/api/status answered {result!r}")
        return result

    def act(self, name: str, params: Mapping[str, Any] | None = None) -> Any:
        return self._request("POST", f"/api/act/{urllib.parse.quote(name)}", dict(params or {}))

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                return json.loads(response.read().decode() or "null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise FixtureError(f"{method} {self.base}{path}: HTTP {exc.code} {detail}") from exc
        except (OSError, ValueError) as exc:
            raise FixtureError(f"{method} {self.base}{path} failed: {exc}") from exc


FIXTURE_FORMS = (
    "sim (the in-process simulator of a sim:// PORT), http://HOST:PORT/[?token=T] (the simulator's "
    "control API), or MODULE:NAME (a bench fixture: NAME() returns an iontodrive.conformance.Fixture)"
)


def open_fixture(spec: str, port: object = None) -> Fixture:
    """The fixture the command line's ``--fixture SPEC`` names (forms: :data:`FIXTURE_FORMS`).

    ``port`` is the opened port (``sim`` takes its ``control``).

    Raises:
        ValueError: an unknown form, ``sim`` without a simulator port, or ``NAME()`` not a Fixture.
        ImportError: MODULE cannot be imported.
        FixtureError: the simulator's control API does not answer.
    """
    if spec == "sim":
        control = getattr(port, "control", None)
        if control is None or not callable(getattr(control, "act", None)):
            raise ValueError("--fixture sim needs a sim:// PORT (its in-process simulator is the fixture)")
        return SimFixture(control, "the in-process simulator")
    if spec.startswith(("http://", "https://")):
        return SimFixture(HttpSimControl(spec), f"simulator control API at {spec.split('?')[0]}")
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--fixture {spec!r}: must be {FIXTURE_FORMS}")
    factory = getattr(importlib.import_module(module_name), attr, None)
    if factory is None:
        raise ValueError(f"--fixture {spec!r}: {module_name} has no {attr}")
    made = factory() if callable(factory) else factory
    if not isinstance(made, Fixture):
        raise ValueError(f"--fixture {spec!r}: {attr}() gave a {type(made).__name__}, not a Fixture")
    return made


__all__ = [
    "FIXTURE_FORMS",
    "Fixture",
    "FixtureError",
    "FixtureUnsupported",
    "HttpSimControl",
    "SimControl",
    "SimFixture",
    "open_fixture",
]
