"""Random operation sequences on hello, membuf and fifo, in process (tests/stateful_models.py).

A smoke run of a few hundred sequences; `make stress` runs 10,000 and more.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from stateful_models import SimBackend, machines

from pykld import Kernel

SMOKE = settings(max_examples=100, stateful_step_count=25, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.mark.parametrize("machine", machines(SimBackend(Kernel())), ids=lambda m: m.__name__)
def test_random_sequences_match_the_model(machine: type) -> None:
    run_state_machine_as_test(machine, settings=SMOKE)
