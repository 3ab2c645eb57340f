"""What the bench scripts share, so that the FUSE and the CUSE benchmarks measure and report alike.

Imported by name (`from common import ...`): the scripts are run as files (`python bench/x.py`),
which puts bench/ first on sys.path, on the host and inside the VM alike (tools/vm-run shares the
tree).  Only the standard library is imported here at load time: cuse_bench.py runs this inside
the VM, and hotpath.py / cuse_hotpath.py need none of the daemon machinery's packages.

Sections: logging and stop signals; set-up (Debian and pip packages, gcc); the daemons under test
and the C clients; statistics and machine facts; charts; the in-process hot-path timings.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
LIBFUSE_EXAMPLES = Path("/usr/share/doc/libfuse3-dev/examples")  # fioc (ioctl.c), cuse.c, ioctl.h
APT_NEED = ROOT / "tools" / "apt-need"

CLK_TCK = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT = 10.0  # seconds for a daemon to exit after SIGTERM, and again after SIGKILL


# -- logging and stop signals -------------------------------------------------------------------------


class StderrLog:
    """Progress and failures go to stderr, each line prefixed with the script's name: stdout carries
    only the result table, and in the VM's interleaved output one can tell who said what."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, text: str) -> None:
        print(f"{self.prefix}: {text}", file=sys.stderr, flush=True)

    def exit(self, text: str) -> NoReturn:
        """Give up before anything was started (exit status 1)."""
        sys.exit(f"{self.prefix}: {text}")


class Interrupted(Exception):
    """SIGTERM or SIGHUP: leave through the finally blocks that stop the daemons (and unmount)."""


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def interrupt_on_stop_signals(sigint: bool = True) -> None:
    """Make SIGTERM and SIGHUP raise Interrupted, and (sigint) Ctrl-C raise KeyboardInterrupt even when
    the script was started with SIGINT ignored, so that every way of stopping a run cleans up."""
    if sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)


def ignore_stop_signals() -> None:
    """For the clean-up itself: a second Ctrl-C or SIGTERM must not cut it short (mounts, VM left over)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def interrupted_exit_status(exc: BaseException, log: Callable[[str], None]) -> int:
    """The exit status of a run stopped by Ctrl-C (130) or by SIGTERM/SIGHUP (143), as a shell reports."""
    if isinstance(exc, KeyboardInterrupt):
        log("interrupted")
        return 130
    log(f"stopped by {exc}")
    return 143


# -- set-up: Debian packages, pip packages, gcc ---------------------------------------------------------


def have_fuse3_toolchain() -> bool:
    """gcc, pkg-config and libfuse3-dev, what building the libfuse examples and the clients takes."""
    if not (shutil.which("gcc") and shutil.which("pkg-config")):
        return False
    try:
        return subprocess.run(["pkg-config", "--exists", "fuse3"], timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def apt_need(*packages: str) -> None:
    """Install Debian packages through the repo's tools/apt-need (it installs only what is missing)."""
    subprocess.run([str(APT_NEED), *packages], check=True, timeout=900)


def pip_install_missing(needs: dict[str, str], log: Callable[[str], None], without: str) -> set[str]:
    """pip-install into this interpreter's venv the packages (needs: module -> package) whose module does
    not import; returns the modules that import afterwards.  A failed install is logged (`without`
    says what the run goes on without), not fatal: it costs a contender or the chart, not the run."""
    missing = [pkg for module, pkg in needs.items() if importlib.util.find_spec(module) is None]
    if missing:
        log(f"pip install {' '.join(missing)}")
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], timeout=1200)
        if proc.returncode != 0:
            log(f"pip install failed (exit {proc.returncode}); {without}")
        importlib.invalidate_caches()
    return {module for module in needs if importlib.util.find_spec(module) is not None}


def fuse3_build_flags() -> list[str]:
    """pkg-config's compiler and linker flags for libfuse 3."""
    return subprocess.run(["pkg-config", "fuse3", "--cflags", "--libs"], check=True, capture_output=True,
                          text=True, timeout=30).stdout.split()


def fuse3_version() -> str:
    """libfuse 3's version as pkg-config knows it ("" when it does not)."""
    return subprocess.run(["pkg-config", "--modversion", "fuse3"], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def copy_libfuse_examples(workdir: Path, names: Iterable[str], log: StderrLog) -> None:
    """Copy libfuse's example sources into `workdir`: they are built from there, never in /usr."""
    for name in names:
        src = LIBFUSE_EXAMPLES / name
        if not src.exists():
            log.exit(f"{src} missing (Debian package libfuse3-dev)")
        shutil.copy(src, workdir / name)


def gcc(output: Path, *args: str) -> None:
    """Compile with the flags every contender and client gets (-O2 -Wall), so that the C side is built
    the same way on every machine and at every run."""
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(output), *args], check=True, timeout=120)


def pykld_command() -> list[str]:
    """How to start pykld: the venv's entry point, or this interpreter's `-m pykld` without one."""
    pykld = ROOT / ".venv" / "bin" / "pykld"
    return [str(pykld)] if pykld.exists() else [sys.executable, "-m", "pykld"]


# -- the daemons under test, and the C clients -----------------------------------------------------------


def process_cpu_ns(pid: int) -> int:
    """CPU time of a process so far, all its threads, exited ones included (ns, to a clock tick).
    OSError when the process is gone."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": the name may hold spaces
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) * 1_000_000_000 // CLK_TCK


@dataclass
class DaemonProcess:
    """A daemon under test: its output goes to a log file (shown when it fails), it counts as serving
    once it printed `ready_line` (None: no such line) and its device is up, and it is stopped
    whatever happens."""

    name: str
    argv: list[str]
    ready_line: str | None
    logfile: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    launched: float = field(default=0.0, init=False)  # time.monotonic() at spawn

    def spawn(self, own_session: bool) -> None:
        """Start it, in the repo.  In its own session (setsid) the daemon gets its own scheduler
        autogroup, as a daemon started elsewhere would; else (own process group) it shares the
        client's.  Either way a SIGKILL to its process group reaches all of it."""
        group: dict[str, Any] = {"start_new_session": True} if own_session else {"process_group": 0}
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **self.env}, cwd=ROOT, **group)
        self.launched = time.monotonic()

    def wait_serving(self, device_up: Callable[[], bool], timeout: float, not_up: str) -> float:
        """Wait until it serves: the ready line printed and device_up(); returns the seconds since
        spawn.  Raises with its output when it exits first or after `timeout` seconds (the message
        starts with `not_up`)."""
        assert self.proc is not None
        deadline = self.launched + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before serving:\n{self.output()}")
            if (self.ready_line is None or self.ready_line in self.output()) and device_up():
                return time.monotonic() - self.launched
            if time.monotonic() > deadline:
                raise RuntimeError(f"{not_up} within {timeout:.0f} s:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def cpu_ns(self) -> int:
        """The daemon's CPU time so far (process_cpu_ns); 0 before it started or once it is gone."""
        if self.proc is None:
            return 0
        try:
            return process_cpu_ns(self.proc.pid)
        except OSError:
            return 0

    def died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def terminate(self, log: Callable[[str], None]) -> None:
        """SIGTERM, so that it cleans up as it would when stopped for real; SIGKILL to its whole process
        group if it has not exited STOP_TIMEOUT seconds later."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log(f"{self.name}: no exit {STOP_TIMEOUT:.0f} s after SIGTERM; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT)


def run_client(client: Path, target: str, op: str, *args: str, timeout: float) -> dict[str, Any]:
    """Run a C client (client.c, cuse_client.c) once: `client TARGET OP ARGS...`.  Its result is the JSON
    object on the last line of its stdout; a failed run raises, so no figure of a broken run is kept."""
    proc = subprocess.run([str(client), target, op, *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"client {op} on {target}: exit {proc.returncode}: {proc.stderr.strip()}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# -- statistics and machine facts ---------------------------------------------------------------------------


def median_and_quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3).  The quartiles show the spread of the rounds; with one value all three are it."""
    med = statistics.median(values)
    if len(values) < 2:
        return med, med, med
    q = statistics.quantiles(values, n=4)
    return q[0], med, q[2]


def utc_timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" when it has none, as on some virtual machines)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def sched_autogroup_enabled() -> str:
    """"1" when the scheduler groups processes by session, which changes how a daemon and the client share
    the CPUs (bench/README.md); "" when the kernel does not say."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return ""


# -- charts -----------------------------------------------------------------------------------------------


def use_file_backend() -> None:
    """Select matplotlib's Agg backend before pyplot is imported: charts go to files only, and no display
    (there is none on a server, nor in the VM) is ever looked for."""
    import matplotlib

    matplotlib.use("Agg")


def save_figure(fig: Figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_chart(chart: Callable[[Path], None], path: Path, log: Callable[[str], None]) -> list[Path]:
    """chart(path); returns [path] when it was written, [] when it failed.  A failure is logged, not
    raised: the numbers are printed and saved before, and a plotting problem must not hide them."""
    try:
        chart(path)
    except Exception as exc:
        log(f"chart failed: {exc!r}")
        return []
    return [path]


# -- in-process hot-path timings (hotpath.py, cuse_hotpath.py) --------------------------------------------

# The kernel's FUSE/CUSE request structures (linux/fuse.h), to build the requests the kernel would send.
IN_HEADER = struct.Struct("<IIQQIIIHH")  # fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, ...
OPEN_IN = struct.Struct("<II")  # fuse_open_in: flags, open_flags
RELEASE_IN = struct.Struct("<QIIQ")  # fuse_release_in: fh, flags, release_flags, lock_owner
RW_IN = struct.Struct("<QQIIQI4x")  # fuse_read_in / fuse_write_in: fh, offset, size, flags, lock_owner, flags


def fuse_message(opcode: int, nodeid: int, body: bytes, unique: int = 7) -> bytearray:
    """One request as read from /dev/fuse or /dev/cuse: the header (from this process) and `body`."""
    return bytearray(IN_HEADER.pack(IN_HEADER.size + len(body), opcode, unique, nodeid, 0, 0, os.getpid(), 0, 0)
                     + body)


def per_call(fn: Callable[[], object], n: int, repeat: int) -> float:
    """Microseconds per call of fn, best of `repeat` runs of n calls (the machine's noise only adds)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t)
    return best / n * 1e6


def membuf_behind_null_channel() -> tuple[Any, Any, Any, Any]:
    """examples/membuf.py in a Kernel, the FUSE devfs handler serving it, and a Session built as
    FuseTransport builds it (with its compiled entries) whose replies go to /dev/null: nothing is
    mounted.  Returns (kernel, handler, cdev, session), the sink being session.fd; the caller has
    put ROOT/src on sys.path."""
    from pykld.fuse import abi
    from pykld.kernel.kernel import Kernel
    from pykld.transport.fuse import DevfsHandler
    from pykld.transport.session import Session

    kernel = Kernel()
    handler = DevfsHandler(kernel)
    kernel.devfs.subscribe(handler.track)
    kernel.kldload(str(ROOT / "examples" / "membuf.py"))
    cdev = kernel.devfs.lookup("membuf")
    assert cdev is not None
    sink = os.open("/dev/null", os.O_WRONLY)
    session = Session(sink, handler.handlers(), abi.read_buffer_size(1 << 20, 256),
                      entries=handler.compiled_entries())
    handler.attach(session)
    return kernel, handler, cdev, session
