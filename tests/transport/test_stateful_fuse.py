"""Random operation sequences on hello, membuf and fifo over a real FUSE mount (tests/stateful_models.py).

The same machines as tests/test_stateful.py, through os.open/os.read/... on the devfs this process
serves.  A smoke run; `make stress` runs thousands.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from stateful_models import FuseBackend, machines

from pykld import Kernel
from pykld.transport.fuse import FuseTransport

SMOKE = settings(max_examples=40, stateful_step_count=20, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.mark.parametrize("driver", ["hello", "membuf", "fifo"])
def test_random_sequences_match_the_model_over_fuse(fuse: tuple[Kernel, FuseTransport], driver: str) -> None:
    kernel, transport = fuse
    machine = next(m for m in machines(FuseBackend(kernel, transport)) if m.driver == driver)
    run_state_machine_as_test(machine, settings=SMOKE)
