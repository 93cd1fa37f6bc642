"""Shared test settings: hypothesis profiles ("dev" is the fast default; HYPOTHESIS_PROFILE=ci is thorough).

Under CI (the CI environment variable set, as `.ci/run` runs) the examples are derandomized: the gate is the
same run every time, while local runs keep exploring new examples (and keep the failures they find in
`.hypothesis/`, which is how the counterexamples fixed so far were found)."""

import os

from hypothesis import HealthCheck, settings

_DERANDOMIZE = bool(os.environ.get("CI"))
settings.register_profile(
    "dev",
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=_DERANDOMIZE,
)
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=_DERANDOMIZE,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
