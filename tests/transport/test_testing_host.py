"""The pytest plugin's pykld_host fixture on a real transport, as a user's own test file
(no conftest) uses it under pytester: the README's worked example, and a failing test
that still leaves nothing mounted."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from .conftest import EXAMPLES, require_fuse

pytest_plugins = ["pytester"]

# The README's "Testing with pykld" example, word for word but for the paths.
README_EXAMPLE = """
import subprocess, sys

def tempalarm(sensor):
    return subprocess.run([sys.executable, "examples/programs/tempalarm.py", sensor],
                          capture_output=True, text=True)

def test_a_normal_temperature_is_fine(pykld_host):
    [sensor] = pykld_host.load("examples/thermo.py")
    done = tempalarm(sensor)
    assert (done.returncode, done.stdout) == (0, "ok 23.5 C\\n")

def test_too_hot_raises_the_alarm(pykld_host):
    [sensor] = pykld_host.load("examples/thermo.py")
    subprocess.run(["sh", "-c", f"echo 31000 > {sensor}"], check=True)
    done = tempalarm(sensor)
    assert (done.returncode, done.stdout) == (2, "ALARM 31.0 C\\n")

def test_a_broken_sensor_is_reported(pykld_host, pykld_fail):
    [sensor] = pykld_host.load("examples/thermo.py")
    pykld_fail("thermo0 read error EIO")
    done = tempalarm(sensor)
    assert done.returncode == 1 and "Input/output error" in done.stderr
"""


def readme_text() -> str:
    return (Path(__file__).resolve().parents[2] / "README.md").read_text()


def fuse_mounts() -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if "pykld-dev-" in line]


@pytest.fixture
def user_dir(pytester: pytest.Pytester) -> pytest.Pytester:
    """The user's project: the example driver and program where the README's test expects them."""
    require_fuse()
    (pytester.path / "examples" / "programs").mkdir(parents=True)
    for name in ("thermo.py", "programs/tempalarm.py"):
        (pytester.path / "examples" / name).write_text((EXAMPLES / name).read_text())
    return pytester


def test_the_readme_example_passes_on_fuse(user_dir: pytest.Pytester) -> None:
    assert README_EXAMPLE.strip() in readme_text()
    user_dir.makepyfile(test_tempalarm=README_EXAMPLE)
    result = user_dir.runpytest("-v")
    result.assert_outcomes(passed=3)
    assert fuse_mounts() == []


def test_a_failing_test_is_torn_down_all_the_same(user_dir: pytest.Pytester) -> None:
    user_dir.makepyfile(test_fails=textwrap.dedent("""
        import os
        def test_fails_with_the_device_open(pykld_host):
            [sensor] = pykld_host.load("examples/thermo.py")
            fd = os.open(sensor, os.O_RDONLY)
            open("fd", "w").write(str(fd))  # for the outer test to close
            assert os.path.ismount(os.path.dirname(sensor))
            raise AssertionError("the program under test misbehaved")
    """))
    result = user_dir.runpytest()
    os.close(int((user_dir.path / "fd").read_text()))
    result.assert_outcomes(failed=1, errors=1)  # the failure, and the file it left open
    result.stdout.fnmatch_lines(["*ERROR at teardown*", "*open files: /dev/thermo0: 1 still open*",
                                 "*the program under test misbehaved*"])
    assert fuse_mounts() == []


@pytest.mark.pykld_transport("fuse")
def test_the_marker_picks_the_transport(pykld_host) -> None:  # type: ignore[no-untyped-def]
    assert (pykld_host.name, pykld_host.how) == ("fuse", "asked for")
    assert pykld_host.load(str(EXAMPLES / "thermo.py")) == [pykld_host.path("thermo0")]
    with open(pykld_host.path("thermo0"), "rb", buffering=0) as sensor:
        assert sensor.read(32) == b"23500\n"
