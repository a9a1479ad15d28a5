"""Fuzzing: schemathesis on the OpenAPI document, hypothesis on the parsers and routes."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for a fuzz test. CI runs a fixed sample of ``examples``, so that
    it passes or fails the same way each time; KATAR_FUZZ_EXAMPLES=N explores further with N
    fresh random examples."""
    chosen = os.environ.get("KATAR_FUZZ_EXAMPLES")
    return settings(
        max_examples=int(chosen or examples),
        derandomize=chosen is None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
