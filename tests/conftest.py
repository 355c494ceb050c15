"""Hypothesis profiles for the test suite.

* ``default``: fast (100 examples per property), used by ``make test``.
* ``thorough`` (alias ``ci``): 2000 examples per property, for a deeper run:
  ``HYPOTHESIS_PROFILE=thorough .venv/bin/pytest tests``.

No deadlines: the machine may be shared, and a slow example is not a failure.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
