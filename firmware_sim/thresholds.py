"""The firmware's judgement thresholds and sizes (``docs/simulator.md`` §Firmware gives the reason for each).

Numbers marked (j) in the guide are judgements; every one of them is here and nowhere else.
"""

from __future__ import annotations

from typing import Final

from iontodrive.protocol import MAX_PROBE_CURRENT_UA

EVENT_RING_SIZE: Final = 256  # events FetchEvents can replay
EVENT_LOG_SIZE: Final = 65_536  # the simulator's own log of every event (introspection, not on the wire)

CONTACT_LOW_OHM: Final = 200  # S3 short-circuit limit (j)
CONTACT_HIGH_MAX_OHM: Final = 10_000  # S3 absolute high limit (j)
CONTACT_HIGH_FRACTION: Final = 0.8  # S3: high limit = 0.8 x V_compliance / I_target
PROBE_MAX_UA: Final = MAX_PROBE_CURRENT_UA  # S3 probe current
CONTACT_WINDOW_S: Final = 0.2  # length of the CONTACT_CHECK state of Start and Resume
CONTACT_STABILITY: Final = 0.2  # impedance of the two halves of the window must agree within 20 %
COMPLIANCE_HIGH: Final = 0.95  # S5: voltage >= 95 % of compliance ...
COMPLIANCE_RUN_S: Final = 2.0  # ... for >= 2 s
COMPLIANCE_CLEAR: Final = 0.80  # resistance limit cleared after 2 s below 80 %
LIFT_RISE: Final = 1.5  # S6: impedance rising > 50 % ...
LIFT_WINDOW_S: Final = 1.0  # ... within 1 s
SHORT_RUN_S: Final = 0.02  # impedance below the low limit for 20 ms = short
OVERCURRENT_FRACTION: Final = 1.10  # S9: trip at set-point + 10 %
DOSE_AIM_CAP_FRACTION: Final = 0.999  # the planned ramp-down aims at most at 99.9 % of the dose cap
MEAN_WINDOW_STEPS: Final = 10  # impedance is computed from 10-step means of V and I
PULSE_ON_FRACTION: Final = 0.05  # a step more than 5 % on counts as in a pulse's on-phase

# Blocks of at most this many steps take the scalar path (:func:`firmware_sim.stepping.step_small`): in real
# time the runner advances a few steps per control tick, where numpy's set-up cost dominates. Both paths
# give the same run (tests/test_sim_fastpath.py, tests/test_sim_equivalence.py).
SMALL_BLOCK_STEPS: Final = 8
