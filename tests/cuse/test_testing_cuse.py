"""The testing toolkit over CUSE, in the VM: fault points seen by real system calls on a
true character device, the pytest plugin's pykld_host picking CUSE, and record/replay."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from transport import test_fail_fuse as on_fuse
from transport import test_record_replay_fuse as on_fuse_trace
from transport.conftest import EXAMPLES, require

from pykld import Kernel
from pykld.transport.cuse import CuseTransport, cuse_available

pytest_plugins = ["pytester"]


@pytest.fixture
def membuf() -> Iterator[tuple[Kernel, str]]:
    require("CUSE", os.geteuid() == 0 and cuse_available(), "no CUSE here (root and /dev/cuse needed)")
    kernel = Kernel()
    transport = CuseTransport(kernel)
    transport.start()
    try:
        yield on_fuse.load_membuf(kernel, transport.device_path("membuf"))
    finally:
        kernel.shutdown()
        transport.stop()


def test_every_operation_fails_as_its_rule_says(membuf: tuple[Kernel, str]) -> None:
    on_fuse.test_every_operation_fails_as_its_rule_says(membuf)


def test_short_transfers_and_corruption_reach_the_program(membuf: tuple[Kernel, str]) -> None:
    on_fuse.test_short_transfers_and_corruption_reach_the_program(membuf)


def test_a_signal_ends_an_injected_delay_with_eintr(membuf: tuple[Kernel, str]) -> None:
    on_fuse.test_a_signal_ends_an_injected_delay_with_eintr(membuf)


# An inner pytest session under the VM's software emulation takes tens of seconds to start
# (imports, assertion rewriting): 30 s was not enough in a fresh root's CI run.
@pytest.mark.timeout(180)
def test_pykld_host_picks_cuse_first(pytester: pytest.Pytester) -> None:
    require("CUSE", os.geteuid() == 0 and cuse_available(), "no CUSE here (root and /dev/cuse needed)")
    pytester.makepyfile(test_user=f"""
import os, stat
def test_sensor_is_a_character_device(pykld_host):
    assert pykld_host.name == "cuse"
    [sensor] = pykld_host.load({str(EXAMPLES / "thermo.py")!r})
    assert sensor == "/dev/thermo0" and stat.S_ISCHR(os.stat(sensor).st_mode)
    with open(sensor, "rb", buffering=0) as f:
        assert f.read(32) == b"23500\\n"
""")
    pytester.runpytest().assert_outcomes(passed=1)


def test_record_and_replay_give_dd_the_same_bytes_over_cuse(tmp_path: Path) -> None:
    require("CUSE", os.geteuid() == 0 and cuse_available(), "no CUSE here (root and /dev/cuse needed)")
    running: list[on_fuse_trace.Served] = []
    try:
        on_fuse_trace.test_a_replay_gives_dd_the_bytes_urandom_gave(running, tmp_path, transport="cuse")
    finally:
        for one in running:
            if one.proc.poll() is None:
                one.stop()
