"""The kld commands through the real `pykld` executable: load, unload, stat, dmesg, shutdown, daemon.

Each test gets a runtime directory of its own (PYKLD_RUN_DIR), so its daemon,
socket and FUSE devfs never meet a user's daemon or another test's.  Only the
/dev/NAME bind mounts are global; the tests that need them use names no one
else publishes, except the seed's session, which must use /dev/rustmodule.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transport.conftest import fuse_for_other_users, require, require_fuse, require_root  # noqa: F401 - a fixture

from pykld.transport import mount

REPO = Path(__file__).resolve().parents[1]
HELLO = "examples/hello.py"
CONSOLE_SCRIPT = Path(sys.executable).with_name("pykld")
PYKLD = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "pykld"]
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
NOBODY = 65534
TIMEOUT = 60  # seconds for any one command; every wait in this file is bounded


class Pykld:
    """Runs `pykld` against one runtime directory, as root or as nobody."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.dev_dir = os.path.join(run_dir, "dev")
        self.env = dict(os.environ, PYKLD_RUN_DIR=run_dir)

    def __call__(self, *args: str, as_nobody: bool = False, timeout: float = TIMEOUT,
                 cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
        command = [*(AS_NOBODY if as_nobody else []), *PYKLD, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=self.env, cwd=cwd,
                              check=False)

    def ok(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        done = self(*args, **kw)
        assert done.returncode == 0, f"pykld {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}"
        return done

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*PYKLD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env, cwd=REPO)

    @property
    def socket_path(self) -> str:
        return os.path.join(self.run_dir, "control.sock")

    def daemon_pid(self) -> int | None:
        try:
            text = Path(self.run_dir, "daemon.pid").read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def stat_json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.ok("stat", "--json").stdout)
        return result

    def device(self, name: str) -> str:
        return os.path.join(self.dev_dir, name)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as st:
            return st.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _is_our_daemon(pid: int) -> bool:
    try:
        return b"pykld" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture
def pykld() -> Iterator[Pykld]:
    """A runtime directory of the test's own; afterwards its daemon is shut down (killed
    if it will not go) and whatever a killed daemon left is cleared."""
    if os.geteuid() == 0:
        os.makedirs("/run/pykld-test", mode=0o755, exist_ok=True)
        os.chmod("/run/pykld-test", 0o755)  # nobody must reach the socket to be refused by it
        base = "/run/pykld-test"
    else:
        base = None
    run_dir = tempfile.mkdtemp(prefix="cli-", dir=base)
    os.chmod(run_dir, 0o755)
    tool = Pykld(run_dir)
    try:
        yield tool
    finally:
        pid = tool.daemon_pid()
        with contextlib.suppress(subprocess.TimeoutExpired):
            tool("shutdown", timeout=30)
        if pid is not None and not _wait_gone(pid, 10) and _is_our_daemon(pid):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)
        if os.geteuid() == 0:
            mount.clear_stale(tool.dev_dir)
        with contextlib.suppress(OSError):
            print(Path(run_dir, "daemon.log").read_text())  # shown when the test failed
        subprocess.run(["umount", "-l", tool.dev_dir], capture_output=True, check=False)
        shutil.rmtree(run_dir, ignore_errors=True)


def sh(script: str, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    command = [*(AS_NOBODY if as_nobody else []), "sh", "-c", script]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def write_driver(directory: str, name: str, source: str) -> str:
    path = os.path.join(directory, f"{name}.py")
    Path(path).write_text(textwrap.dedent(source))
    os.chmod(path, 0o644)
    return path


def unique_name(prefix: str) -> str:
    """A device name no other pykld on this machine publishes (/dev binds are global)."""
    return f"{prefix}{os.getpid()}x{time.monotonic_ns() % 10**6}"


def require_free(dev_path: str) -> None:
    """/dev/NAME binds are global: another pykld holding this one would answer instead of ours."""
    deadline = time.monotonic() + 20
    while os.path.lexists(dev_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.lexists(dev_path), f"{dev_path} is held by another process; stop it and rerun"


# -- the seed's session ---------------------------------------------------------------------

def test_four_line_session_as_root_over_fuse(pykld: Pykld) -> None:
    require_root()
    require_fuse()
    require_free("/dev/rustmodule")
    loaded = pykld.ok("load", HELLO, "--transport", "fuse")
    assert "Loaded hello, id=1: /dev/rustmodule" in loaded.stdout
    assert "started the daemon" in loaded.stderr

    done = sh('echo "hi rust" > /dev/rustmodule; cat /dev/rustmodule')
    assert (done.returncode, done.stdout) == (0, "hi rust\n"), done.stderr

    table = pykld.ok("stat").stdout.splitlines()
    assert table[0].split() == ["Id", "Refs", "Transport", "Name", "Devices", "Path"]
    assert table[1].split() == ["1", "0", "fuse", "hello", "/dev/rustmodule", str(REPO / HELLO)]

    pykld.ok("unload", "hello")
    assert not os.path.lexists("/dev/rustmodule")
    assert pykld.stat_json()["modules"] == []


def test_shutdown_unloads_unmounts_and_exits(pykld: Pykld) -> None:
    require_fuse()
    pykld.ok("load", HELLO, "--transport", "fuse", "--no-bind")
    pid = pykld.daemon_pid()
    assert pid is not None and os.path.ismount(pykld.dev_dir)
    pykld.ok("shutdown")
    # the reply came after the teardown: nothing is left, and the process ends
    assert not os.path.ismount(pykld.dev_dir)
    assert not os.path.exists(pykld.socket_path)
    assert _wait_gone(pid)
    log = Path(pykld.run_dir, "daemon.log").read_text()
    assert "stopped" in log
    gone = pykld("stat")
    assert gone.returncode == 1 and "no pykld daemon is running" in gone.stderr


def test_sigterm_is_a_shutdown(pykld: Pykld) -> None:
    require_fuse()
    pykld.ok("daemon", "--transport", "fuse", "--no-bind")
    pykld.ok("load", HELLO)
    pid = pykld.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    assert _wait_gone(pid)
    assert not os.path.ismount(pykld.dev_dir)
    assert not os.path.exists(pykld.socket_path)


# -- errors a FreeBSD user recognises ---------------------------------------------------------

def test_busy_unload_then_forced_unload(pykld: Pykld) -> None:
    require_fuse()
    pykld.ok("load", HELLO, "--transport", "fuse", "--no-bind")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import os, sys
            fd = os.open(sys.argv[1], os.O_RDONLY)
            print("open", flush=True)
            sys.stdin.readline()
            try:
                os.read(fd, 10)
                print("read ok", flush=True)
            except OSError as exc:
                print("read", exc.errno, flush=True)
            os.close(fd)
            print("closed", flush=True)
        """), pykld.device("rustmodule")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == "open\n"
        busy = pykld("unload", "hello")
        assert busy.returncode == 1
        assert busy.stderr.splitlines()[0] == "pykld: can't unload hello: Device busy"
        assert pykld.stat_json()["modules"][0]["refs"] == 1

        pykld.ok("unload", "-f", "hello")
        out, _ = holder.communicate("\n", timeout=TIMEOUT)
        assert out.splitlines() == [f"read {errno.ENXIO}", "closed"]  # ENXIO, and close still works
        assert holder.returncode == 0
    finally:
        holder.kill()
        holder.wait(TIMEOUT)
    assert pykld.stat_json()["modules"] == []
    assert not os.path.exists(pykld.device("rustmodule"))


def test_second_load_is_file_exists(pykld: Pykld) -> None:
    pykld.ok("load", HELLO, "--transport", "sim")
    again = pykld("load", HELLO)
    assert again.returncode == 1
    assert again.stderr.splitlines()[0] == "pykld: can't load examples/hello.py: File exists"
    by_name = pykld("load", "hello")  # found in ./examples, the same module
    assert by_name.returncode == 1 and "File exists" in by_name.stderr


def test_unknown_module_is_no_such_file(pykld: Pykld) -> None:
    pykld.ok("daemon", "--transport", "sim")
    for args, message in [
        (("load", "nosuchmodule"), "pykld: can't load nosuchmodule: No such file or directory"),
        (("load", "/nonexistent/x.py"), "pykld: can't load /nonexistent/x.py: No such file or directory"),
        (("unload", "nosuchmodule"), "pykld: can't unload nosuchmodule: No such file or directory"),
    ]:
        done = pykld(*args)
        assert (done.returncode, done.stderr.splitlines()[0]) == (1, message)


def test_a_module_file_others_could_have_written_is_refused(pykld: Pykld) -> None:
    """sshd's StrictModes rule: the file and every directory above it only root's or the daemon's."""
    pykld.ok("daemon", "--transport", "sim")
    drivers = tempfile.mkdtemp(dir=pykld.run_dir)
    module = write_driver(drivers, "lax", """
        from pykld import Module
        class Lax(Module):
            name = "lax"
    """)
    for loosen, culprit in [(lambda: os.chmod(module, 0o666), module), (lambda: os.chmod(drivers, 0o777), drivers)]:
        loosen()
        refused = pykld("load", module)
        assert refused.returncode == 1
        first, second = refused.stderr.splitlines()[:2]
        assert first == f"pykld: can't load {module}: Operation not permitted"
        assert f"{culprit} is writable by everyone" in second and "StrictModes" in second
        os.chmod(module, 0o644)
        os.chmod(drivers, 0o700)
    pykld.ok("load", module)


def test_failing_load_shows_the_driver_exception_and_leaves_nothing(pykld: Pykld) -> None:
    require_fuse()
    drivers = tempfile.mkdtemp(dir=pykld.run_dir)
    failing = write_driver(drivers, "flaky", """
        from pykld import CharacterDevice, Module, make_dev
        class Flaky(Module):
            name = "flaky"
            def load(self):
                make_dev(CharacterDevice(), "flaky0", mode=0o666)
                raise RuntimeError("no hardware behind flaky0")
    """)
    refused = pykld("load", failing, "--transport", "fuse", "--no-bind")
    assert refused.returncode == 1
    lines = refused.stderr.splitlines()
    assert f"pykld: can't load {failing}: Input/output error" in lines
    assert "RuntimeError('no hardware behind flaky0')" in refused.stderr
    assert pykld.stat_json()["modules"] == []
    assert not os.path.exists(pykld.device("flaky0"))
    assert "Traceback" in pykld.ok("dmesg").stdout
    # nothing left behind: the name and the device are free again
    Path(failing).write_text(Path(failing).read_text().replace("raise RuntimeError", "print"))
    pykld.ok("load", failing)
    assert os.path.exists(pykld.device("flaky0"))


def test_the_daemon_survives_crashing_drivers(pykld: Pykld) -> None:
    require_fuse()
    drivers = tempfile.mkdtemp(dir=pykld.run_dir)
    exits = write_driver(drivers, "exits", """
        import sys
        from pykld import Module
        class Exits(Module):
            name = "exits"
            def load(self):
                sys.exit("a driver calling sys.exit")
    """)
    stubborn = write_driver(drivers, "stubborn", """
        from pykld import CharacterDevice, Module, make_dev
        class Crashy(CharacterDevice):
            def read(self, file, uio):
                raise ZeroDivisionError("driver bug")
        class Stubborn(Module):
            name = "stubborn"
            def load(self):
                make_dev(Crashy(), "crashy", mode=0o666)
            def unload(self):
                raise KeyError("will not unload")
    """)
    pykld.ok("daemon", "--transport", "fuse", "--no-bind")
    assert pykld("load", exits).returncode == 1
    pykld.ok("load", stubborn)
    crashed = sh(f"cat {pykld.device('crashy')}")
    assert crashed.returncode != 0 and "Input/output error" in crashed.stderr
    refused = pykld("unload", "stubborn")
    assert refused.returncode == 1 and "Input/output error" in refused.stderr
    pykld.ok("unload", "-f", "stubborn")
    pykld.ok("load", HELLO)
    assert sh(f"cat {pykld.device('rustmodule')}").stdout == "Default hello message\n"


def test_sim_transport_says_the_devices_stay_in_the_daemon(pykld: Pykld) -> None:
    loaded = pykld.ok("load", HELLO, "--transport", "sim")
    assert "exist only inside the daemon" in loaded.stderr
    assert pykld.stat_json()["transport"] == "sim"
    other = pykld("load", "examples/membuf.py", "--transport", "fuse")
    assert other.returncode == 1
    assert "the daemon publishes over sim, not fuse" in other.stderr


# -- sysctl -----------------------------------------------------------------------------------

def test_sysctl_reads_sets_and_refuses_as_sysctl8_does(pykld: Pykld) -> None:
    drivers = tempfile.mkdtemp(dir=pykld.run_dir)
    sensor = write_driver(drivers, "gauge", """
        from pykld import Module
        from pykld.kpi import sysctl_add
        class Gauge(Module):
            name = "gauge"
            def load(self):
                self.level = 7
                sysctl_add("dev.gauge.level", "int", lambda: self.level, lambda v: setattr(self, "level", v),
                           "fill level in percent")
                sysctl_add("dev.gauge.model", "str", lambda: "G-1")
                sysctl_add("dev.gauge.broken", "int", lambda: None)
    """)
    pykld.ok("load", sensor, "--transport", "sim")
    assert pykld.ok("sysctl", "dev.gauge.level").stdout == "dev.gauge.level: 7\n"
    assert pykld.ok("sysctl", "dev.gauge.level=42").stdout == "dev.gauge.level: 7 -> 42\n"
    assert pykld.ok("sysctl", "-n", "dev.gauge.level").stdout == "42\n"
    assert pykld.ok("sysctl", "-d", "dev.gauge.level").stdout == "dev.gauge.level: fill level in percent\n"
    listing = pykld("sysctl", "-a")
    assert "dev.gauge.level: 42\ndev.gauge.model: G-1\n" in listing.stdout
    assert listing.returncode == 1 and "dev.gauge.broken: Input/output error" in listing.stderr
    for args, words in ((["dev.gauge.model=G-2"], "read only"), (["dev.gauge.level=lots"], "not a valid int"),
                        (["dev.nothing"], "unknown oid 'dev.nothing'"), ([], "usage")):
        refused = pykld("sysctl", *args)
        assert refused.returncode == 1 and words in refused.stderr, (args, refused.stderr)
    assert pykld.ok("sysctl", "dev.gauge.level").stdout == "dev.gauge.level: 42\n"
    assert pykld("sysctl", "-a", as_nobody=True).returncode == 1  # the daemon's user and root only
    pykld.ok("unload", "gauge")
    assert pykld("sysctl", "dev.gauge").returncode == 1


# -- stat and dmesg ---------------------------------------------------------------------------

def test_stat_json_and_verbose_counters(pykld: Pykld) -> None:
    require_fuse()
    pykld.ok("load", HELLO, "--transport", "fuse", "--no-bind")
    pykld.ok("load", "examples/membuf.py")
    assert sh(f'echo "hi rust" > {pykld.device("rustmodule")}; cat {pykld.device("rustmodule")}').returncode == 0
    membuf = pykld.device("membuf")
    assert sh(f"head -c 5000 /dev/zero | dd of={membuf} bs=5000 status=none").returncode == 0

    status = pykld.stat_json()
    assert status["transport"] == "fuse" and status["pid"] == pykld.daemon_pid()
    modules = {m["name"]: m for m in status["modules"]}
    assert modules["hello"]["id"] == 1 and modules["membuf"]["id"] == 2
    assert modules["hello"]["devices"] == [{"name": "rustmodule", "path": pykld.device("rustmodule"),
                                            "transport": "fuse", "open": 0}]
    assert "malloc" not in modules["membuf"]

    verbose = json.loads(pykld.ok("stat", "-v", "--json").stdout)
    hello = verbose["modules"][0]
    counters = hello["devices"][0]["stats"]
    assert counters["writes"] == 1 and counters["bytes_written"] == len("hi rust\n")
    assert counters["bytes_read"] == len("hi rust\n") and counters["opens"] == 2
    [m_membuf] = verbose["modules"][1]["malloc"]
    assert m_membuf["name"] == "membuf" and m_membuf["inuse"] == 5000

    text = pykld.ok("stat", "-v").stdout
    assert "BytesWritten" in text and "MemUse" in text
    lines = [line.split() for line in text.splitlines()]
    malloc_row = lines[lines.index(["Type", "InUse", "MemUse", "HighUse", "Requests", "Failures", "Limit"]) + 1]
    assert malloc_row[:3] == ["membuf", "1", "5000"]  # InUse (allocations), MemUse (bytes)


def test_dmesg_and_dmesg_follow(pykld: Pykld) -> None:
    require_fuse()
    pykld.ok("load", HELLO, "--transport", "fuse", "--no-bind")
    assert "hello: [module.py] Hello::load" in pykld.ok("dmesg").stdout

    follower = pykld.popen("dmesg", "-f")
    lines: queue.Queue[str] = queue.Queue()
    assert follower.stdout is not None
    output = follower.stdout

    def read_lines() -> None:
        for line in output:
            lines.put(line)

    threading.Thread(target=read_lines, daemon=True).start()

    def wait_for_line(text: str) -> str:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if text in line:
                return line
        raise AssertionError(f"dmesg -f never printed {text!r}")

    try:
        wait_for_line("Hello::load")  # the buffer so far
        sh(f"echo followed > {pykld.device('rustmodule')}")
        wait_for_line("Setting new message to b'followed\\n'")  # and what comes after
        follower.send_signal(signal.SIGINT)
        assert follower.wait(TIMEOUT) == 0
    finally:
        follower.kill()
        follower.wait(TIMEOUT)

    # a follower ends when the daemon does
    follower = pykld.popen("dmesg", "-f")
    try:
        time.sleep(0.5)
        pykld.ok("shutdown")
        assert follower.wait(TIMEOUT) == 0
    finally:
        follower.kill()
        follower.wait(TIMEOUT)


# -- who may do what ----------------------------------------------------------------------------

def test_non_root_user_is_refused_everything(pykld: Pykld) -> None:
    require_root()
    pykld.ok("load", HELLO, "--transport", "sim")
    assert os.stat(pykld.socket_path).st_mode & 0o777 == 0o600
    commands = [("load", "examples/membuf.py"), ("unload", "hello"), ("unload", "-f", "hello"),
                ("shutdown",), ("stat",), ("dmesg",)]
    # First lock: the socket's mode.  nobody cannot even connect.
    for args in commands:
        done = pykld(*args, as_nobody=True)
        assert done.returncode == 1, args
        assert done.stderr.splitlines()[0].endswith(": Permission denied"), (args, done.stderr)
    # Second lock: the daemon checks the peer's uid.  Loosen the socket as a careless admin might.
    os.chmod(pykld.socket_path, 0o666)
    for args in commands:
        done = pykld(*args, as_nobody=True)
        assert done.returncode == 1, args
        assert done.stderr.splitlines()[0].endswith(": Operation not permitted"), (args, done.stderr)
        assert "you are uid 65534" in done.stderr
    # nothing happened: hello is still loaded, only hello, and the daemon still serves root
    assert [m["name"] for m in pykld.stat_json()["modules"]] == ["hello"]


@pytest.mark.usefixtures("fuse_for_other_users")
def test_non_root_user_runs_a_daemon_of_their_own(pykld: Pykld) -> None:
    require("FUSE", shutil.which("fusermount3") is not None, "fusermount3 is not installed (Debian package fuse3)")
    os.chown(pykld.run_dir, NOBODY, NOBODY)
    os.chmod(pykld.run_dir, 0o700)
    # Started in the foreground here rather than by `pykld load`: the daemon that load would
    # start is sys.executable, which nobody may not be able to run (a venv over root's pyenv).
    daemon = subprocess.Popen([*AS_NOBODY, *PYKLD, "daemon", "--foreground", "--transport", "fuse"],
                              env=pykld.env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert daemon.stdout is not None
        first = daemon.stdout.readline()
        assert "pykld daemon: pid" in first, first + daemon.stdout.read()
        _nobody_session(pykld)
    finally:
        daemon.kill()
        daemon.wait(TIMEOUT)


def _nobody_session(pykld: Pykld) -> None:
    loaded = pykld("load", HELLO, "--transport", "fuse", as_nobody=True)
    assert loaded.returncode == 0, loaded.stderr
    assert f"Loaded hello, id=1: {pykld.device('rustmodule')}" in loaded.stdout  # no /dev bind: not root
    done = sh(f'echo "hi nobody" > {pykld.device("rustmodule")}; cat {pykld.device("rustmodule")}', as_nobody=True)
    assert done.stdout == "hi nobody\n", done.stderr
    assert os.stat(pykld.socket_path).st_uid == NOBODY
    pykld.ok("unload", "hello", as_nobody=True)
    pykld.ok("shutdown", as_nobody=True)
    assert pykld.dev_dir not in [m.mount_point for m in mount.mounts()]


# -- crashes and recovery -------------------------------------------------------------------------

def test_sigkill_of_the_daemon_and_recovery_by_the_next_load(pykld: Pykld) -> None:
    require_root()
    require_fuse()
    name = unique_name("kld")
    drivers = tempfile.mkdtemp(dir=pykld.run_dir)
    driver = write_driver(drivers, "echoer", f"""
        from pykld import CharacterDevice, Module, make_dev
        class Echo(CharacterDevice):
            message = b"empty\\n"
            def read(self, file, uio):
                uio.move_out(self.message)
            def write(self, file, uio):
                self.message = uio.move_in()
        class Echoer(Module):
            name = "echoer"
            def load(self):
                make_dev(Echo(), "{name}", mode=0o666)
    """)
    dev_path = f"/dev/{name}"
    pykld.ok("load", driver, "--transport", "fuse")
    assert sh(f"echo before > {dev_path}; cat {dev_path}").stdout == "before\n"
    pid = pykld.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert _wait_gone(pid)

    # what the killed daemon left: a socket nobody answers, a dead devfs, a dead /dev entry
    assert os.path.exists(pykld.socket_path)
    with pytest.raises(OSError) as dead:
        os.statvfs(dev_path)
    assert dead.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    stale = pykld("stat")
    assert stale.returncode == 1 and "no pykld daemon is running" in stale.stderr

    loaded = pykld.ok("load", driver)
    assert "started the daemon" in loaded.stderr
    assert sh(f"cat {dev_path}").stdout == "empty\n"  # a new daemon, a fresh module
    ours = [m for m in mount.mounts() if m.fstype == mount.FSTYPE
            and m.mount_point in (pykld.dev_dir, dev_path)]
    assert sorted(m.mount_point for m in ours) == sorted([pykld.dev_dir, dev_path])  # one of each, both live
    pykld.ok("shutdown")
    assert not os.path.lexists(dev_path)


def test_concurrent_loads_start_one_daemon(pykld: Pykld) -> None:
    first = pykld.popen("load", HELLO, "--transport", "sim")
    second = pykld.popen("load", "examples/membuf.py", "--transport", "sim")
    for proc in (first, second):
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
    assert sorted(m["name"] for m in pykld.stat_json()["modules"]) == ["hello", "membuf"]
    again = pykld("daemon", "--transport", "sim")
    assert again.returncode == 1 and "already running" in again.stderr


# -- the socket under abuse ---------------------------------------------------------------------

def _talk(path: str, payload: bytes, half_close: bool = False,
          expect: int | None = None) -> tuple[list[dict[str, Any]], bool]:
    """Send raw bytes; collect replies until `expect` of them came, the daemon closes,
    or it stays quiet for a while.  Returns (replies, closed)."""
    replies: list[dict[str, Any]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        try:
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered and hung up before reading it all (oversized, too many)
        data = b""
        sock.settimeout(1.5)
        while expect is None or len(replies) < expect:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return replies, True  # it hung up with our bytes unread: that is a close too
            except TimeoutError:
                return replies, False
            if not chunk:
                return replies, True
            data += chunk
            while len(data) >= 4 and len(data) >= 4 + struct.unpack(">I", data[:4])[0]:
                size = struct.unpack(">I", data[:4])[0]
                replies.append(json.loads(data[4:4 + size]))
                data = data[4 + size:]
    return replies, False


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_garbage_truncated_and_oversized_messages(pykld: Pykld) -> None:
    pykld.ok("daemon", "--transport", "sim")
    path = pykld.socket_path
    stat = _frame(b'{"op": "stat"}')
    cases: list[tuple[bytes, int]] = [
        (_frame(b"hello"), errno.EINVAL),  # not JSON
        (_frame(b"\xff\xfe{}"), errno.EINVAL),  # not UTF-8
        (_frame(b"[1, 2]"), errno.EINVAL),  # not an object
        (_frame(b""), errno.EINVAL),
        (_frame(b'{"op": "format-disk"}'), errno.EINVAL),
        (_frame(b'{"op": "unload", "target": "x", "force": "yes"}'), errno.EINVAL),
        (_frame(b'{"op": "unload", "target": true}'), errno.EINVAL),
        (_frame(b'{"op": "load"}'), errno.EINVAL),
        (_frame(b"[" * 100_000), errno.EINVAL),  # nested past the recursion limit
    ]
    for payload, code in cases:
        # each bad request is answered, and the same connection then serves a good one
        replies, _ = _talk(path, payload + stat, expect=2)
        assert [r["ok"] for r in replies] == [False, True], payload[:40]
        assert replies[0]["errno"] == code

    replies, closed = _talk(path, struct.pack(">I", 100) + b"0123456789", half_close=True)
    assert closed and [r["errno"] for r in replies] == [errno.EPROTO]  # truncated

    replies, closed = _talk(path, struct.pack(">I", 2 << 20))
    assert closed and [r["errno"] for r in replies] == [errno.EMSGSIZE]  # refused before its body

    replies, closed = _talk(path, b"GET / HTTP/1.0\r\n\r\n" + os.urandom(256))
    assert closed and [r["errno"] for r in replies] == [errno.EMSGSIZE]

    replies, closed = _talk(path, b"", half_close=True)
    assert closed and replies == []

    # a client that sends half a header and hangs on does not block anyone else
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(path)
        idle.sendall(b"\x00\x00")
        pykld.ok("stat")
    assert pykld.ok("stat", "--json").stdout


def test_too_many_connections_are_refused_not_queued_forever(pykld: Pykld) -> None:
    from pykld.kld.daemon import MAX_CONNECTIONS

    pykld.ok("daemon", "--transport", "sim")
    hogs = []
    try:
        for _ in range(MAX_CONNECTIONS):
            hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            hog.connect(pykld.socket_path)
            hogs.append(hog)
        time.sleep(0.3)
        refused, closed = _talk(pykld.socket_path, _frame(b'{"op": "stat"}'))
        assert closed and [r["errno"] for r in refused] == [errno.EAGAIN]
    finally:
        for hog in hogs:
            hog.close()
    deadline = time.monotonic() + 10
    while pykld("stat").returncode != 0:
        assert time.monotonic() < deadline, "the daemon did not recover its connection slots"
        time.sleep(0.1)


# -- fail(9) through the daemon ------------------------------------------------------------

def test_pykld_fail_sets_lists_counts_and_unload_clears(pykld: Pykld) -> None:
    require_fuse()
    pykld.ok("load", HELLO, "--transport", "fuse", "--no-bind")
    device = pykld.device("rustmodule")
    added = pykld.ok("fail", "rustmodule", "read", "error", "EIO", "--times", "1")
    assert added.stdout == "rule 1: rustmodule read error EIO --times 1  (calls 0, fired 0)\n"
    failed = sh(f"cat {device}")
    assert failed.returncode == 1 and "Input/output error" in failed.stderr
    assert sh(f"cat {device}").stdout == "Default hello message\n"
    # the failed read, then the second cat's read and its read of EOF
    assert pykld.ok("fail", "-l").stdout == "rustmodule read error EIO --times 1  (calls 3, fired 1)\n"

    counters = json.loads(pykld.ok("stat", "-v", "--json").stdout)["modules"][0]["devices"][0]["stats"]
    assert counters["injected"] == 1
    table = [line.split() for line in pykld.ok("stat", "-v").stdout.splitlines()]
    header = next(row for row in table if row[0] == "Device")
    assert header[-1] == "Injected" and table[table.index(header) + 1][-1] == "1"
    assert "fail: /dev/rustmodule read: injected error EIO (rule 1, firing 1)" in pykld.ok("dmesg").stdout

    pykld.ok("fail", device, "write", "short", "3")  # the published path names the device too
    assert pykld.ok("fail", "-c", "rustmodule", "write").stderr == "pykld: cleared 1 rule(s)\n"
    pykld.ok("fail", "/dev/rustmodule", "open", "error", "ENXIO")
    pykld.ok("unload", "hello")
    pykld.ok("load", HELLO)
    assert pykld.ok("fail", "-l").stdout == ""  # the rules went with the device
    assert sh(f"cat {device}").returncode == 0


def test_pykld_fail_refuses_a_bad_rule_saying_why(pykld: Pykld) -> None:
    require_fuse()
    pykld.ok("load", HELLO, "--transport", "fuse", "--no-bind")
    bad = pykld("fail", "rustmodule", "poll", "short", "3")
    assert bad.returncode == 1
    assert bad.stderr == ("pykld: can't set the fault point: Invalid argument\n"
                          "pykld: fail point rustmodule poll: short applies to read, write, not poll\n")
    missing = pykld("fail", "nosuch", "read", "error", "EIO")
    assert missing.returncode == 1 and "No such file or directory" in missing.stderr
