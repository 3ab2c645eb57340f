"""A machine without kmod or fuse3: pykld picks what is really there and says why.

A fresh Debian machine has no modprobe (package kmod) and may have no
fusermount3 (fuse3); the machines pykld is developed on have both.  These tests
run the real commands with a PATH that holds the interpreter (and, where the
test says so, sh and cat) and nothing else, so they see what a newcomer sees:
a transport picked with the reason the better ones could not run, never a
traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import EXAMPLES, REPO, require_fuse, require_root

PYKLD = [sys.executable, "-m", "pykld"]
HELLO = str(EXAMPLES / "hello.py")
TIMEOUT = 60


@pytest.fixture
def bare_path(tmp_path: Path) -> Callable[..., dict[str, str]]:
    """bare_path("sh", "cat") -> an environment whose PATH holds python3 and only the named programs."""

    def environment(*programs: str) -> dict[str, str]:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        os.chmod(tmp_path, 0o755)
        os.chmod(bin_dir, 0o755)
        for name, target in [("python3", sys.executable), *((p, _which(p)) for p in programs)]:
            link = bin_dir / name
            if not link.exists():
                link.symlink_to(target)
        env = dict(os.environ, PATH=str(bin_dir), PYTHONPATH=str(REPO / "src"))
        return env

    return environment


def _which(name: str) -> str:
    for directory in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if os.access(os.path.join(directory, name), os.X_OK):
            return os.path.join(directory, name)
    raise AssertionError(f"{name} is needed to build the test's PATH")


def _fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK)


def _expected_transport() -> str:
    """What is really here for this user with neither modprobe nor fusermount3: CUSE only
    where /dev/cuse exists already, FUSE only as root (others mount through fusermount3)."""
    if os.geteuid() == 0 and os.path.exists("/dev/cuse"):
        return "cuse"
    if os.geteuid() == 0 and _fuse_usable():
        return "fuse"
    return "sim"


def _assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


_SURVEY = ("import json; from pykld.transport import registry; "
           "print(json.dumps({'pick': registry.pick(None), 'survey': registry.survey()}))")


def test_the_picker_says_what_is_missing_and_picks_what_is_there(bare_path: Callable[..., dict[str, str]]) -> None:
    done = subprocess.run([sys.executable, "-c", _SURVEY], env=bare_path(), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    _assert_no_traceback(done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    picked, how = result["pick"]
    why_not = dict(result["survey"])
    assert picked == _expected_transport(), result
    if os.geteuid() == 0 and not os.path.exists("/dev/cuse"):
        assert why_not["cuse"] == "no /dev/cuse, and modprobe is not installed (not on PATH); Debian package kmod"
        assert f"cuse: {why_not['cuse']}" in how  # the pick says what it passed over
    assert why_not["sim"] is None


@pytest.mark.usefixtures("fuse_for_other_users")
def test_another_user_without_fusermount3_is_told_and_gets_sim(bare_path: Callable[..., dict[str, str]]) -> None:
    env = bare_path()
    done = subprocess.run(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-c", _SURVEY], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False, cwd="/")
    _assert_no_traceback(done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    why_not = dict(result["survey"])
    assert why_not["fuse"] == "fusermount3 is not installed (not on PATH); Debian package fuse3"
    assert why_not["cuse"] == "needs root"
    assert result["pick"][0] == "sim"


def _run_demo(env: dict[str, str], dev_dir: str) -> tuple[int, str, str]:
    """`pykld run examples/hello.py --demo`: its output up to the demo's read-back, then SIGINT."""
    proc = subprocess.Popen([*PYKLD, "run", HELLO, "--demo", "--dev-dir", dev_dir, "--no-bind"], env=env,
                            cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("pykld: serving") or "Traceback" in line:
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(seen) + rest, err


@pytest.mark.parametrize("programs", [("sh", "cat"), ()], ids=["with-sh-and-cat", "interpreter-only"])
def test_make_run_demo_without_kmod_or_fuse3(bare_path: Callable[..., dict[str, str]], dev_dir: str,
                                             programs: tuple[str, ...]) -> None:
    require_root()
    require_fuse()
    status, out, err = _run_demo(bare_path(*programs), dev_dir)
    _assert_no_traceback(out, err)
    assert status == 0, out + err
    expected = _expected_transport()
    assert f"pykld: transport {expected} (picked: best available" in out
    if expected == "fuse":
        assert "modprobe is not installed (not on PATH); Debian package kmod" in out
    assert f"$ cat {dev_dir}/rustmodule\nhi rust\n" in out or (
        not programs and "from pykld itself\nhi rust\n" in out), out
    if not programs:
        assert "sh is not installed (not on PATH); Debian package dash" in out


def test_the_daemon_started_by_load_without_kmod(bare_path: Callable[..., dict[str, str]], dev_dir: str,
                                                 run_dir: str) -> None:
    require_root()
    require_fuse()
    env = dict(bare_path(), PYKLD_RUN_DIR=run_dir)

    def pykld(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PYKLD, *args], env=env, cwd=str(REPO), capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)

    loaded = pykld("load", HELLO, "--dev-dir", dev_dir, "--no-bind")
    _assert_no_traceback(loaded.stdout, loaded.stderr)
    assert loaded.returncode == 0, loaded.stderr
    expected = _expected_transport()
    assert f"transport {expected};" in loaded.stderr
    assert f"Loaded hello, id=1: {dev_dir}/rustmodule" in loaded.stdout
    with open(f"{dev_dir}/rustmodule") as device:
        assert device.read() == "Default hello message\n"
    log = Path(run_dir, "daemon.log").read_text()
    if expected == "fuse":
        assert "modprobe is not installed (not on PATH); Debian package kmod" in log
    shut = pykld("shutdown")
    assert shut.returncode == 0, shut.stderr
    _assert_no_traceback(log, shut.stderr)


@pytest.fixture
def run_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="fresh-", dir="/run" if os.geteuid() == 0 else None)
    try:
        yield path
    finally:
        subprocess.run([*PYKLD, "shutdown"], env=dict(os.environ, PYKLD_RUN_DIR=path), capture_output=True,
                       timeout=TIMEOUT, check=False)
        subprocess.run(["rm", "-rf", path], check=False)


_WITHOUT_MTAB = """
set -u
# This mount namespace only: /etc as it is, less /etc/mtab, which fusermount3 -u reads.
mkdir "$SCRATCH/etc" && cp -a /etc/. "$SCRATCH/etc/" && rm -f "$SCRATCH/etc/mtab"
mount --bind "$SCRATCH/etc" /etc
cd /
$AS $PYKLD daemon --foreground --transport fuse >"$SCRATCH/daemon.out" 2>&1 &
for _ in $(seq 100); do [ -S "$PYKLD_RUN_DIR/control.sock" ] && break; sleep 0.05; done
$AS $PYKLD load "$HELLO" --transport fuse
$AS $PYKLD shutdown 2>"$SCRATCH/shutdown.err"; echo "shutdown=$?"
wait
grep -c " $PYKLD_RUN_DIR/dev " /proc/self/mountinfo
umount -l "$PYKLD_RUN_DIR/dev"
"""


@pytest.mark.usefixtures("fuse_for_other_users")
def test_a_mount_fusermount3_cannot_remove_is_reported_not_leaked_silently(tmp_path: Path) -> None:
    """Another user's daemon unmounts with fusermount3 -u, which refuses without /etc/mtab:
    shutdown fails and says so, in the daemon's log and to the command."""
    require_root()
    scratch = tempfile.mkdtemp(prefix="mtab-", dir="/run")
    os.chmod(scratch, 0o777)
    console = Path(sys.executable).with_name("pykld")
    env = dict(os.environ, SCRATCH=scratch, PYKLD_RUN_DIR=f"{scratch}/run", HELLO=HELLO,
               PYKLD=str(console) if console.exists() else f"{sys.executable} -m pykld",
               AS="setpriv --reuid=65534 --regid=65534 --clear-groups", PYTHONPATH=str(REPO / "src"))
    try:
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", _WITHOUT_MTAB],
                              env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        daemon_out = Path(scratch, "daemon.out").read_text()
        shutdown_err = Path(scratch, "shutdown.err").read_text()
    finally:
        subprocess.run(["rm", "-rf", scratch], check=False)
    assert "Loaded hello" in done.stdout, done.stdout + done.stderr + daemon_out
    assert "shutdown=1\n1\n" in done.stdout, done.stdout + shutdown_err  # refused, and the mount is there
    said = "is still mounted: fusermount3 -u -z -- "
    assert said in daemon_out and "failed to open /etc/mtab" in daemon_out, daemon_out
    assert "pykld: can't shut down: Device busy" in shutdown_err, shutdown_err
    assert said in shutdown_err and "failed to open /etc/mtab" in shutdown_err, shutdown_err
    _assert_no_traceback(daemon_out, shutdown_err)
