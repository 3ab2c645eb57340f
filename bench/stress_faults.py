"""Faults: the host killed under load, a forced unload under load, signal storms on blocked readers,
and drivers that raise, sleep for ever or return garbage on every operation.

Each waits with a bound and reports what the callers saw: errnos, how long they took, what hung.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from common import pykld_command
from stress_host import EXAMPLES, Host, gather, process_resources, reap, unmount
from stress_load import UNIT, _unit

KILL_BOUND = 1.0  # seconds within which every caller must hear that the host is gone


def _errname(code: int | None) -> str:
    return errno.errorcode.get(code or 0, str(code))


# -- SIGKILL of the host under load ---------------------------------------------------------------------


def _busy_client(path: str, role: str, out: Any) -> None:
    """Loop on the device until an operation fails; report the errno and when."""
    try:
        fd = os.open(path, os.O_RDWR if role != "reader" else os.O_RDONLY)
    except OSError as exc:
        out.put((role, _errname(exc.errno), time.monotonic(), "open"))
        return
    try:
        while True:
            if role == "writer":
                os.write(fd, _unit(1, 0) * 64)
            else:
                os.read(fd, 4096)  # blocked in the driver most of the time
    except OSError as exc:
        out.put((role, _errname(exc.errno), time.monotonic(), "io"))
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def sigkill(log: Any) -> dict[str, Any]:
    host = Host(str(EXAMPLES / "fifo.py"), "stress-kill").start("fifo")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    roles = ["writer"] * 4 + ["reader"] * 12  # more readers than data: most are blocked
    procs = [ctx.Process(target=_busy_client, args=(host.path("fifo"), role, out)) for role in roles]
    try:
        for proc in procs:
            proc.start()
        time.sleep(1.0)
        killed = time.monotonic()
        host.kill()
        results = gather(out, len(procs), 5)
        hung = reap(procs, 2)
        # The next start on the same devfs clears the dead mount and serves again.
        restarted = time.monotonic()
        again = Host(str(EXAMPLES / "fifo.py"), "stress-kill", dev_dir=host.dev_dir).start("fifo")
        recovered_s = time.monotonic() - restarted
        try:
            fd = os.open(again.path("fifo"), os.O_RDWR)
            os.write(fd, b"back\n")
            recovered = os.read(fd, 16) == b"back\n"
            os.close(fd)
        finally:
            again.stop()
    finally:
        host.stop()
    delays = [t - killed for _, _, t, _ in results]
    figures = {
        "callers": len(procs), "errnos": dict(sorted({e: sum(1 for r in results if r[1] == e) for _, e, _, _ in
                                                      results}.items())),
        "slowest_s": round(max(delays), 3) if delays else None, "within_bound": sum(d <= KILL_BOUND for d in delays),
        "unanswered": len(procs) - len(results), "hung": hung, "restart_s": round(recovered_s, 2),
        "recovered": recovered,
    }
    log(f"sigkill: {figures}")
    return figures


# -- kldunload -f under load -------------------------------------------------------------------------


class Daemon:
    """`pykld daemon` over FUSE with a runtime directory of its own, driven by `pykld` commands."""

    def __init__(self) -> None:
        self.run_dir = tempfile.mkdtemp(prefix="pykld-stress-")
        self.env = dict(os.environ, PYKLD_RUN_DIR=self.run_dir)

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*pykld_command(), *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env, check=False)

    @property
    def pid(self) -> int:
        return int(Path(self.run_dir, "daemon.pid").read_text().strip())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self("shutdown", timeout=90)
        with contextlib.suppress(Exception):
            os.kill(self.pid, signal.SIGKILL)
        unmount(os.path.join(self.run_dir, "dev"))
        subprocess.run(["rm", "-rf", self.run_dir], check=False)


def forced_unload(log: Any) -> dict[str, Any]:
    daemon = Daemon()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    try:
        started = daemon("daemon", "--transport", "fuse", "--no-bind")
        if started.returncode != 0:
            raise RuntimeError(f"pykld daemon: {started.stdout}{started.stderr}")
        before = process_resources(daemon.pid)
        for module in ("fifo", "membuf"):
            loaded = daemon("load", str(EXAMPLES / f"{module}.py"), "--no-bind")
            if loaded.returncode != 0:
                raise RuntimeError(f"pykld load: {loaded.stdout}{loaded.stderr}")
        dev = os.path.join(daemon.run_dir, "dev")
        roles = [("fifo", "writer")] * 2 + [("fifo", "reader")] * 6 + [("membuf", "writer")] * 4
        procs = [ctx.Process(target=_busy_client, args=(os.path.join(dev, name), role, out)) for name, role in roles]
        for proc in procs:
            proc.start()
        time.sleep(1.0)
        during = process_resources(daemon.pid)
        unloads = {m: daemon("unload", "-f", m).returncode for m in ("fifo", "membuf")}
        results = gather(out, len(procs), 10)
        hung = reap(procs, 5)
        time.sleep(1.0)  # idle session threads park or leave
        after = process_resources(daemon.pid)
        stat = json.loads(daemon("stat", "--json").stdout or "{}")
    finally:
        daemon.stop()
    figures = {
        "callers": len(procs), "unload_exit": unloads,
        "errnos": dict(sorted({e: sum(1 for r in results if r[1] == e) for _, e, _, _ in results}.items())),
        "closed_ok": len(results), "hung": hung, "modules_left": len(stat.get("modules", [])),
        "threads": {"before": before["threads"], "under_load": during["threads"], "after": after["threads"]},
        "fds": {"before": before["fds"], "after": after["fds"]},
    }
    log(f"forced unload: {figures}")
    return figures


# -- signal storms on blocked readers ----------------------------------------------------------------


def _storm_reader(path: str, index: int, units: int, out: Any) -> None:
    """Read through libc (ctypes), so that EINTR reaches us instead of Python retrying it."""
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    buf = ctypes.create_string_buffer(UNIT.size * 32)
    got = bytearray()
    eintr = other = 0
    while len(got) < units * UNIT.size:
        n = libc.read(fd, buf, UNIT.size * 32)
        if n < 0:
            code = ctypes.get_errno()
            if code == errno.EINTR:
                eintr += 1
                continue
            other += 1
            break
        got += buf.raw[:n]
    os.close(fd)
    seqs = [seq for _, seq, _ in UNIT.iter_unpack(bytes(got[: len(got) - len(got) % UNIT.size]))]
    out.put((index, {"eintr": eintr, "other_errors": other, "seqs": seqs}))


def signal_storm(readers: int, units_each: int, signals: int, log: Any) -> dict[str, Any]:
    """`readers` processes block in read on an empty fifo; `signals` SIGUSR1s rain on them while a
    writer trickles units in; every unit must arrive exactly once."""
    host = Host(str(EXAMPLES / "fifo.py"), "stress-storm").start("fifo")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_storm_reader, args=(host.path("fifo"), i, units_each, out)) for i in range(readers)]
    sent = 0
    try:
        for proc in procs:
            proc.start()
        time.sleep(0.5)
        total = readers * units_each
        fd = os.open(host.path("fifo"), os.O_WRONLY)
        stop = threading.Event()

        def storm() -> None:
            nonlocal sent
            while not stop.is_set() and sent < signals:
                for proc in procs:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGUSR1)  # type: ignore[arg-type]
                        sent += 1
                time.sleep(0.001)

        stormer = threading.Thread(target=storm, daemon=True)
        stormer.start()
        for seq in range(0, total, 4):
            os.write(fd, b"".join(_unit(0, s) for s in range(seq, min(seq + 4, total))))
            if seq % 64 == 0:
                time.sleep(0.002)  # let the readers block again between bursts
        results = dict(gather(out, readers, 30))
        stop.set()
        stormer.join(5)
        os.close(fd)
        hung = reap(procs, 5)
    finally:
        host.stop()
    seqs = sorted(s for r in results.values() for s in r["seqs"])
    figures = {
        "readers": readers, "signals_sent": sent, "eintr": sum(r["eintr"] for r in results.values()),
        "other_errors": sum(r["other_errors"] for r in results.values()), "units": total,
        "units_lost": len(set(range(total)) - set(seqs)), "units_duplicated": len(seqs) - len(set(seqs)),
        "hung": hung,
    }
    log(f"signal storm: {figures}")
    return figures


# -- drivers that misbehave on every operation -------------------------------------------------------------

BAD_DRIVERS = textwrap.dedent("""
    import time
    from pykld import CharacterDevice, Module, make_dev, sleep

    class Raises(CharacterDevice):
        def read(self, file, uio): raise RuntimeError("raises on read")
        def write(self, file, uio): raise RuntimeError("raises on write")
        def ioctl(self, file, cmd, data): raise RuntimeError("raises on ioctl")
        def poll(self, file, events): raise RuntimeError("raises on poll")

    class Garbage(CharacterDevice):
        def read(self, file, uio): return 42
        def write(self, file, uio): return object()
        def ioctl(self, file, cmd, data): return "a string"
        def poll(self, file, events): return ["a", "list"]

    class SleepsForever(CharacterDevice):
        def read(self, file, uio): sleep(self)  # never woken: interruptible, EINTR on a signal
        def write(self, file, uio): sleep(self)

    class Hangs(CharacterDevice):
        def read(self, file, uio): time.sleep(3600)  # no cooperation at all: the session monitor's case

    class Good(CharacterDevice):
        def read(self, file, uio): uio.move_out(b"good\\n")

    class Bad(Module):
        name = "bad"
        def load(self):
            self.cdevs = [make_dev(Raises(), "raises", mode=0o666), make_dev(Garbage(), "garbage", mode=0o666),
                          make_dev(SleepsForever(), "sleeps", mode=0o666), make_dev(Hangs(), "hangs", mode=0o666),
                          make_dev(Good(), "good", mode=0o666)]
""")


def _latencies(path: str, count: int) -> list[float]:
    fd = os.open(path, os.O_RDONLY)
    times = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            os.pread(fd, 64, 0)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
    return times


def _bad_caller(path: str, op: str, out: Any) -> None:
    import fcntl
    import select

    signal.signal(signal.SIGALRM, lambda signum, frame: None)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDWR)
    try:
        if op == "read":
            signal.setitimer(signal.ITIMER_REAL, 1.0)  # the sleepers get a signal after 1 s
            buf = ctypes.create_string_buffer(64)
            n = libc.read(fd, buf, 64)
            out.put((path, op, _errname(ctypes.get_errno()) if n < 0 else f"returned {n}"))
        elif op == "write":
            signal.setitimer(signal.ITIMER_REAL, 1.0)
            n = libc.write(fd, b"x", 1)
            out.put((path, op, _errname(ctypes.get_errno()) if n < 0 else f"returned {n}"))
        elif op == "ioctl":
            try:
                fcntl.ioctl(fd, 0x4509, 0)
                out.put((path, op, "returned"))
            except OSError as exc:
                out.put((path, op, _errname(exc.errno)))
        else:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            out.put((path, op, f"revents {poller.poll(1000)}"))
    finally:
        os.close(fd)


def bad_drivers(log: Any) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="pykld-stress-bad-"))
    module = workdir / "bad.py"
    module.write_text(BAD_DRIVERS)
    host = Host(str(module), "stress-bad").start("good")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    try:
        baseline = _latencies(host.path("good"), 2000)
        calls = [(name, op) for name in ("raises", "garbage") for op in ("read", "write", "ioctl", "poll")]
        calls += [("sleeps", "read"), ("sleeps", "write")]
        procs = [ctx.Process(target=_bad_caller, args=(host.path(name), op, out)) for name, op in calls]
        hang = ctx.Process(target=_latencies, args=(host.path("hangs"), 1))  # stays stuck in the driver
        hang.start()
        for proc in procs:
            proc.start()
        during = _latencies(host.path("good"), 2000)
        results = gather(out, len(procs), 15)
        hung = reap(procs, 5)
        reap([hang], 0)  # stuck in the driver, as it should be
        alive = host.daemon.proc is not None and host.daemon.proc.poll() is None
    finally:
        host.stop()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)

    def ms(values: list[float], q: float) -> float:
        return round(statistics.quantiles(values, n=100)[int(q) - 1] * 1000, 3)

    figures = {
        "outcomes": {f"{Path(p).name} {op}": what for p, op, what in sorted(results)},
        "good_device_ms": {"p50_before": ms(baseline, 50), "p50_during": ms(during, 50),
                           "p99_before": ms(baseline, 99), "p99_during": ms(during, 99)},
        "p50_ratio": round(statistics.median(during) / statistics.median(baseline), 2),
        "unanswered": len(calls) - len(results), "hung": hung, "host_alive": alive,
    }
    log(f"bad drivers: {figures}")
    return figures


def run(log: Any, storm_signals: int = 5000) -> dict[str, Any]:
    return {"sigkill": sigkill(log), "forced_unload": forced_unload(log),
            "signal_storm": signal_storm(8, 400, storm_signals, log), "bad_drivers": bad_drivers(log)}
