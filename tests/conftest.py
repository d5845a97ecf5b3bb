"""Shared test settings: a bounded hypothesis profile (the suite must stay fast on 2 cores)
and a fixture that runs a test once per native kernel variant the CPU supports."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from npuquant import _native

settings.register_profile(
    "npuquant",
    max_examples=int(os.environ.get("NPUQUANT_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("npuquant")

torch.manual_seed(0)


@pytest.fixture(params=_native.supported_isas() or ["none"])
def isa(request: pytest.FixtureRequest):
    """Runs the test under each kernel variant: scalar, avx2, avx512 (as far as the CPU goes)."""
    if request.param == "none":
        pytest.skip(f"native library not available: {_native.load_error}")
    with _native.isa_limit(request.param):
        yield request.param


@pytest.fixture(params=[1, 2, 3])
def threads(request: pytest.FixtureRequest):
    """Runs the test with 1, 2 and 3 threads (3 > cores here: uneven splits)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)
