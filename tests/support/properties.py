"""The settings the property tests (Hypothesis) share."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# Reproducible in CI: derandomized, no example database written into the repository.
PROPS = settings(
    deadline=None,
    max_examples=150,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
