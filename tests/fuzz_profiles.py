"""Hypothesis profiles for the fuzz tests.

``ci`` (the default, used by ``make test``): derandomized (a fixed seed, the same examples every
run), bounded example counts, no example database written to the checkout. ``long``: random seeds
and many more examples, for a local hunt: ``HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest
tests/test_fuzz_*.py``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
"""No 'explain' phase: it slows failing runs down a lot and adds nothing to these tests."""

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    phases=PHASES,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    derandomize=False,
    database=None,
    phases=PHASES,
    deadline=None,
    max_examples=20_000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"


def examples(ci: int) -> int:
    """``ci`` examples in make test; the long profile's count otherwise."""
    return settings().max_examples if LONG else ci
