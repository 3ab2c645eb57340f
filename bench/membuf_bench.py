"""Benchmark: pykld's membuf device over FUSE against libfuse's C fioc example (3.14 and 3.18) and pyfuse3.

    make bench                                  # or: .venv/bin/python bench/membuf_bench.py [--quick]

Seven daemons serve the same device, a resizable in-memory buffer, as one file of a FUSE mount each:

  pykld          examples/membuf.py under `pykld run --transport fuse`, compiled request loop, classic channel
  pykld-python   the same, pykld's Python request loop
  pykld-uring    the same, compiled loop, FUSE over io_uring
  C-3.14         libfuse 3.14's fioc example (Debian's libfuse3-dev), multithreaded loop
  C-3.18         libfuse 3.18.2's fioc, built here from its tarball, multithreaded loop
  C-3.18-uring   the same with -o io_uring
  pyfuse3        bench/pyfuse3_membuf.py, the same device written directly with pyfuse3

One client, bench/client.c (built now), runs each operation in a tight loop for a fixed time in a
fresh process, the file opened with O_DIRECT so every operation reaches the daemon.  Each contender
runs twice: in its own session (its own scheduler autogroup, as a daemon started elsewhere) and in
the client's.  Rounds alternate the daemons (the order rotates each round); the figure kept is the
median over rounds.  Then the concurrency series: 1, 2, 4 and 8 client processes at once on the
same file, aggregate ops/s.  A contender that cannot run here (no compiled
loop, no io_uring, no meson...) is shown as n/a with the reason.  The io_uring contenders need
fuse.enable_uring = Y: as root the benchmark sets it, says so, and puts back what it found at the end.
bench/README.md says more, and what limits the figures.

Output: markdown tables on stdout, bench/out/results.json, bench/out/membuf_fuse.png (ops/s relative to
C 3.14, both placements) and bench/out/membuf_concurrency.png.  Every mount is undone on exit,
failure or Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    APT_NEED,
    BENCH,
    OUT,
    ROOT,
    DaemonProcess,
    Interrupted,
    StderrLog,
    apt_need,
    copy_libfuse_examples,
    cpu_model,
    draw_chart,
    fuse3_build_flags,
    fuse3_version,
    gcc,
    have_fuse3_toolchain,
    ignore_stop_signals,
    interrupt_on_stop_signals,
    interrupted_exit_status,
    median_and_quartiles,
    pip_install_missing,
    pykld_command,
    run_client,
    sched_autogroup_enabled,
    utc_timestamp,
)
from membuf_report import chart_concurrency, chart_relative, markdown_report
from peers import (
    LIBFUSE_318,
    Unavailable,
    build_fioc_318,
    compiled_loop_missing,
    io_uring_instances,
    mapped_objects,
    read_calls,
    uring_enabled,
    uring_parameter,
)

OPS = ["pread4k", "pwrite4k", "pread1m", "pwrite1m", "openclose"]
OP_LABEL = {
    "pread4k": "pread 4 KiB",
    "pwrite4k": "pwrite 4 KiB",
    "pread1m": "pread 1 MiB",
    "pwrite1m": "pwrite 1 MiB",
    "openclose": "open+close",
}
OP_BYTES = {"pread4k": 4096, "pwrite4k": 4096, "pread1m": 1 << 20, "pwrite1m": 1 << 20, "openclose": 0}
CONTENDERS = {
    "pykld": "pykld, compiled loop, classic /dev/fuse",
    "pykld-python": "pykld, Python loop",
    "pykld-uring": "pykld, compiled loop, FUSE over io_uring",
    "C-3.14": "C fioc, libfuse 3.14 (Debian)",
    "C-3.18": f"C fioc, {LIBFUSE_318}",
    "C-3.18-uring": f"C fioc, {LIBFUSE_318}, -o io_uring",
    "pyfuse3": "pyfuse3 peer (libfuse 3.14)",
}
ALIASES = {"C": "C-3.14"}  # the name before there were two libfuses
PYKLDS = ["pykld", "pykld-python", "pykld-uring"]
RING = {"pykld-uring", "C-3.18-uring"}  # must be served over io_uring, verified
# pykld's environment per contender (names fixed by issue 13): which loop, whether the ring.
PYKLD_ENV = {
    "pykld": {"PYKLD_LOOP": "compiled", "PYKLD_FUSE_URING": "off"},
    "pykld-python": {"PYKLD_LOOP": "python", "PYKLD_FUSE_URING": "off"},
    "pykld-uring": {"PYKLD_LOOP": "compiled", "PYKLD_FUSE_URING": "auto"},
}
BASES = ["C-3.14", "C-3.18-uring"]  # the goal: every pykld/base >= 1.0
GOAL = 1.0
PLACEMENTS = {
    "own": "each in its own session (own scheduler autogroup), as when started elsewhere",
    "shared": "in the client's session (same scheduler autogroup)",
}
LEVELS = [1, 2, 4, 8]  # client processes at once in the concurrency series
CONCURRENCY_OPS = ["pread4k", "pwrite4k"]
APT_318 = ("meson", "ninja-build", "liburing-dev", "libnuma-dev")  # building libfuse 3.18.2 (Makefile: APT_BENCH)
PIP_NEEDS = {"pyfuse3": "pyfuse3", "trio": "trio", "matplotlib": "matplotlib"}

START_TIMEOUT = 30.0  # seconds for a daemon to mount and answer
CLIENT_SLACK = 20.0  # seconds a client run may take beyond its measuring time
PROBE_SECONDS = 0.1  # the pread loop that checks how a daemon is served, after its start

DMESG_LINE = re.compile(r"\[\s*\d+\.\d+\] ")  # a message buffer line as --console echoes it

log = StderrLog("bench")


# -- set-up: Debian packages, pip packages, the C programs ---------------------------------------------


def ensure_system(want_318: bool) -> None:
    """gcc, pkg-config and libfuse3-dev (for fioc 3.14, the client and pyfuse3's build); for libfuse
    3.18.2, meson, ninja and what its io_uring support needs (liburing, libnuma): without those its
    contenders are n/a, the run goes on."""
    if not have_fuse3_toolchain():
        if not APT_NEED.exists():
            log.exit("need gcc, pkg-config and libfuse3-dev (Debian packages)")
        apt_need("libfuse3-dev", "pkg-config", "gcc", "fuse3")
    if want_318 and APT_NEED.exists():
        try:
            apt_need(*APT_318)
        except (OSError, subprocess.SubprocessError) as exc:
            log(f"could not install {' '.join(APT_318)} ({exc}); going on without what is missing")


def ensure_pip() -> set[str]:
    """pyfuse3 (built against libfuse3-dev), trio and matplotlib, into this interpreter's venv.
    Returns the modules that import; a failed install costs its contender or the chart, not the run."""
    return pip_install_missing(PIP_NEEDS, log, "going on without what is missing")


@dataclass
class Builds:
    client: Path
    fioc_314: Path
    fioc_318: Path | None = None
    fioc_318_ring: bool = False  # that libfuse was built with io_uring support
    missing_318: str = ""  # why fioc_318 is None


def build(workdir: Path, out: Path, want_318: bool) -> Builds:
    """The client and libfuse 3.14's fioc into `workdir` (gcc, every run); 3.18.2's fioc into `out`."""
    cflags = fuse3_build_flags()
    copy_libfuse_examples(workdir, ("ioctl.c", "ioctl.h"), log)
    builds = Builds(client=workdir / "client", fioc_314=workdir / "fioc")
    gcc(builds.fioc_314, str(workdir / "ioctl.c"), *cflags)
    gcc(builds.client, str(BENCH / "client.c"))
    if want_318:
        try:
            builds.fioc_318, builds.fioc_318_ring = build_fioc_318(log, out)
        except Unavailable as exc:
            builds.missing_318 = str(exc)
    return builds


# -- the daemons --------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Daemon(DaemonProcess):
    """A daemon serving the membuf device as file `filename` of its FUSE mount at `mountpoint`."""

    mountpoint: Path
    filename: str
    o_direct: bool = True  # the client's O_DIRECT open succeeded
    served: dict[str, Any] = field(default_factory=dict)  # how it serves, as measured after its start

    @property
    def path(self) -> str:
        return str(self.mountpoint / self.filename)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def start(self, client: Path, own_session: bool) -> None:
        """Start (own_session: see DaemonProcess.spawn), wait until mounted, pre-fill, and look at how it
        serves: a short pread loop counts its read(2) calls per request and its io_uring instances."""
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.spawn(own_session)
        self.wait_serving(lambda: is_mounted(self.mountpoint), START_TIMEOUT, f"{self.name} did not mount")
        # Pre-fill 1 MiB of a pattern and read it back: the device works, the file takes O_DIRECT.
        check = run_client(client, self.path, "fill", timeout=CLIENT_SLACK)
        if not check.get("ok"):
            raise RuntimeError(f"{self.name}: fill failed: {check}")
        self.o_direct = bool(check.get("o_direct"))
        if not self.o_direct:
            log(f"{self.name}: O_DIRECT refused; its client opens plain (its file is direct_io anyway)")
        reads = read_calls(self.pid)
        probe = run_client(client, self.path, "pread4k", f"{PROBE_SECONDS}", timeout=CLIENT_SLACK)
        self.served = {
            "read_calls_per_request": (read_calls(self.pid) - reads) / (probe["ops"] + probe["warmup_ops"]),
            "io_uring_instances": io_uring_instances(self.pid),
            "compiled_loop_mapped": mapped_objects(self.pid, "pykld/_loop"),
        }

    def threads(self) -> int:
        with contextlib.suppress(OSError):
            return len(os.listdir(f"/proc/{self.pid}/task"))
        return 0

    def says(self, *words: str) -> list[str]:
        """The lines of its dmesg (pykld's --console: "[  0.005] kernel: ...") that mention any of `words`:
        what pykld said about its loop and its channel."""
        return [line.strip() for line in self.output().splitlines()
                if DMESG_LINE.match(line) and any(w in line.lower() for w in words)][:6]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; and the mount goes whatever the daemon did."""
        self.terminate(log)
        unmount(self.mountpoint)


def make_daemon(name: str, place: str, workdir: Path, builds: Builds, single_threaded: bool) -> Daemon:
    mnt = workdir / "mnt" / place / name
    logfile = workdir / f"{name}-{place}.log"
    py_env = {"PYTHONUNBUFFERED": "1"}
    threads = ["-s"] if single_threaded else []
    if name in PYKLDS:
        argv = [*pykld_command(), "run", str(ROOT / "examples" / "membuf.py"), "--transport", "fuse",
                "--dev-dir", str(mnt), "--no-bind", "--console"]
        return Daemon(name, argv, "pykld: serving", logfile, {**py_env, **PYKLD_ENV[name]},
                      mountpoint=mnt, filename="membuf")
    if name == "pyfuse3":
        return Daemon(name, [sys.executable, str(BENCH / "pyfuse3_membuf.py"), str(mnt)], "pyfuse3: serving",
                      logfile, py_env, mountpoint=mnt, filename="membuf")
    fioc = builds.fioc_314 if name == "C-3.14" else builds.fioc_318
    assert fioc is not None
    ring = ["-o", "io_uring"] if name == "C-3.18-uring" else []
    return Daemon(name, [str(fioc), "-f", *threads, *ring, str(mnt)], None, logfile, mountpoint=mnt,
                  filename="fioc")


def not_serving_as_claimed(name: str, daemon: Daemon) -> str | None:
    """Why `daemon` does not serve the way contender `name` says (None when it does): an io_uring
    contender must hold rings and read next to nothing from /dev/fuse; the compiled pykld must have its
    extension loaded, and pykld's dmesg must not name the other loop."""
    served = daemon.served
    if name in RING and (served["io_uring_instances"] == 0 or served["read_calls_per_request"] > 0.5):
        said = "; ".join(daemon.says("uring", "ring")) or "nothing about io_uring"
        return (f"served over classic /dev/fuse, not io_uring ({served['io_uring_instances']} rings, "
                f"{served['read_calls_per_request']:.2f} read(2) per request; it said: {said})")
    loop_said = " ".join(daemon.says("request loop serves")).lower()  # pykld's dmesg: which loop, and why
    if name in ("pykld", "pykld-uring") and ("python request loop" in loop_said
                                             or not served["compiled_loop_mapped"]):
        said = "; ".join(daemon.says("loop")) or "nothing about its loop"
        return f"not served by the compiled loop (pykld._loop mapped: {bool(served['compiled_loop_mapped'])}; " \
               f"it said: {said})"
    if name == "pykld-python" and "compiled request loop" in loop_said:
        return f"served by the compiled loop despite PYKLD_LOOP=python (it said: {'; '.join(daemon.says('loop'))})"
    return None


def mounted_points() -> set[str]:
    points = set()
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            if len(fields) > 4:
                points.add(fields[4].encode().decode("unicode_escape"))
    return points


def is_mounted(path: Path) -> bool:
    return str(path) in mounted_points()


def unmount(path: Path) -> None:
    for _ in range(3):
        if not is_mounted(path):
            return
        argv = ["umount", "-l", str(path)] if os.geteuid() == 0 else ["fusermount3", "-u", "-z", str(path)]
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(argv, capture_output=True, timeout=10)
    if is_mounted(path):
        log(f"could not unmount {path}")


def static_reasons(names: list[str], usable: set[str], builds: Builds | None, ring_missing: str | None,
                   ) -> dict[str, str]:
    """The contenders that cannot run here, known before any starts: contender -> why."""
    reasons: dict[str, str] = {}
    loop_missing = compiled_loop_missing() if {"pykld", "pykld-uring"} & set(names) else None
    for name in names:
        why = None
        if name in ("pykld", "pykld-uring") and loop_missing:
            why = loop_missing
        elif name == "pyfuse3" and not {"pyfuse3", "trio"} <= usable:
            why = "pyfuse3 or trio does not import (pip install failed)"
        elif name in ("C-3.18", "C-3.18-uring") and builds is not None and builds.fioc_318 is None:
            why = builds.missing_318
        elif name == "C-3.18-uring" and builds is not None and not builds.fioc_318_ring:
            why = f"{LIBFUSE_318} was built without io_uring support (liburing-dev or libnuma-dev missing?)"
        if why is None and name in RING and ring_missing:
            why = ring_missing
        if why:
            reasons[name] = why
    return reasons


# -- measuring ----------------------------------------------------------------------------------------

Key = tuple[str, str]  # (contender, placement)
Sample = dict[str, float]


def run_clients(client: Path, path: str, op: str, n: int, seconds: float) -> list[dict[str, Any]]:
    """n client processes at once on `path`, all timing the same window (client.c's START), which opens
    far enough ahead for all of them to be exec'd and warm."""
    start = time.monotonic() + 0.05 + 0.01 * n  # CLOCK_MONOTONIC, as the client's
    procs = [subprocess.Popen([str(client), path, op, f"{seconds}", f"{start:.6f}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, start + seconds + CLIENT_SLACK - time.monotonic()))
            if proc.returncode != 0:
                raise RuntimeError(f"client {op} x{n} on {path}: exit {proc.returncode}: {err.strip()}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def one_measurement(daemon: Daemon, client: Path, op: str, n: int, seconds: float) -> Sample:
    """One sample: n clients at once for `seconds` (0: one plain client run); the aggregate rate and the
    daemon's CPU and read(2) calls per operation (warm-up included, as the daemon served those too)."""
    cpu0, reads0 = daemon.cpu_ns(), read_calls(daemon.pid)
    if n == 0:
        runs = [run_client(client, daemon.path, op, f"{seconds}", timeout=seconds + CLIENT_SLACK)]
    else:
        runs = run_clients(client, daemon.path, op, n, seconds)
    cpu, reads = daemon.cpu_ns() - cpu0, read_calls(daemon.pid) - reads0
    ops_total = sum(r["ops"] + r["warmup_ops"] for r in runs)
    late = max(r.get("late", 0.0) for r in runs)
    if late > 0.5 * seconds:  # harmless to the sum of rates (all end together), but worth knowing
        log(f"{daemon.name}: a client of {n} started timing {late * 1e3:.0f} ms late")
    return {
        "ops_per_s": sum(r["ops"] / r["seconds"] for r in runs),
        "daemon_cpu_us_per_op": cpu / 1e3 / ops_total if cpu > 0 else float("nan"),
        "daemon_reads_per_op": reads / ops_total,
        "client_cpu_us_per_op": sum(r["cpu_seconds"] for r in runs) * 1e6 / sum(r["ops"] for r in runs),
        "late_s": late,
    }


@dataclass
class Run:
    """The measurement loop's state: samples[key][series] lists, and the contenders that failed."""

    daemons: dict[Key, Daemon]
    client: Path
    failed: dict[str, str] = field(default_factory=dict)
    samples: dict[Key, dict[str, list[Sample]]] = field(default_factory=dict)

    def rounds(self, series: list[tuple[str, int]], rounds: int, seconds: float, title: str) -> None:
        """rounds x series (op, clients at once; 0: the plain single client) x daemons; the daemons' order
        rotates each round.  Samples go under "op" (0) or "op xN".  A daemon whose measurement fails takes
        its contender out of the rest of the run (n/a, with the reason)."""
        order = list(self.daemons)
        for r in range(rounds):
            turn = order[r % len(order):] + order[: r % len(order)]
            for op, n in series:
                for key in turn:
                    if key[0] in self.failed:
                        continue
                    try:
                        sample = one_measurement(self.daemons[key], self.client, op, n, seconds)
                    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                        daemon = self.daemons[key]
                        tail = daemon.output().strip().splitlines()[-5:]
                        self.failed[key[0]] = f"failed during the run ({key[1]}, {op} x{n}): {exc}" + (
                            f"; daemon {'exited ' + str(daemon.proc.returncode) if daemon.died() else 'alive'}"
                            f"; its last lines: {' | '.join(tail)}" if daemon.proc else "")
                        log(f"{key[0]}: {self.failed[key[0]]}")
                        continue
                    self.samples.setdefault(key, {}).setdefault(series_key(op, n), []).append(sample)
            first = series_key(*series[0])
            so_far = ", ".join(f"{name}@{where} {statistics.median(s['ops_per_s'] for s in got[first]):,.0f}"
                               for (name, where), got in self.samples.items()
                               if first in got and name not in self.failed)
            log(f"{title} round {r + 1}/{rounds} ({first} median ops/s so far: {so_far})")


def series_key(op: str, n: int) -> str:
    return op if n == 0 else f"{op} x{n}"


def summarize(samples: list[Sample], op: str) -> dict[str, Any]:
    """One contender, one operation and concurrency: median ops/s (quartiles, every sample), MB/s, CPU."""
    rates = [x["ops_per_s"] for x in samples]
    q1, med, q3 = median_and_quartiles(rates)

    def median_of(what: str) -> float | None:
        values = [x[what] for x in samples if not math.isnan(x[what])]
        return statistics.median(values) if values else None

    return {
        "ops_per_s": med,
        "ops_per_s_q1": q1,
        "ops_per_s_q3": q3,
        "ops_per_s_all": [round(x, 1) for x in rates],
        "mb_per_s": med * OP_BYTES[op] / 1e6 if OP_BYTES[op] >= 1 << 20 else None,
        "daemon_cpu_us_per_op": median_of("daemon_cpu_us_per_op"),
        "daemon_reads_per_op": median_of("daemon_reads_per_op"),
        "client_cpu_us_per_op": median_of("client_cpu_us_per_op"),
    }


def ratio_pairs(names: list[str]) -> list[tuple[str, str]]:
    """The ratios reported: every pykld against each base (the goal), then the C peers against 3.14."""
    pairs = [(p, b) for p in PYKLDS for b in BASES if p in names and b in names]
    pairs += [(c, "C-3.14") for c in ("C-3.18", "C-3.18-uring") if c in names and "C-3.14" in names]
    return pairs


def results_of(run: Run, names: list[str], places: list[str], levels: list[int]) -> dict[str, Any]:
    """Per placement: per operation each contender's summary and the ratios; the concurrency series."""
    ran = [n for n in names if n not in run.failed]
    out: dict[str, Any] = {}
    for place in places:
        operations: dict[str, Any] = {}
        for op in OPS:
            row: dict[str, Any] = {n: summarize(run.samples[n, place][op], op) for n in ran}
            row["ratios"] = {f"{a}/{b}": row[a]["ops_per_s"] / row[b]["ops_per_s"] for a, b in ratio_pairs(ran)}
            operations[op] = row
        concurrency: dict[str, Any] = {}
        for op in CONCURRENCY_OPS:
            per_level: dict[str, Any] = {}
            for n in levels:
                cell: dict[str, Any] = {c: summarize(run.samples[c, place][series_key(op, n)], op) for c in ran}
                cell["ratios"] = {f"{a}/{b}": cell[a]["ops_per_s"] / cell[b]["ops_per_s"]
                                  for a, b in ratio_pairs(ran)}
                per_level[str(n)] = cell
            concurrency[op] = per_level
        out[place] = {"description": PLACEMENTS[place], "operations": operations, "concurrency": concurrency}
    return out


# -- main ---------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    libfuse = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        libfuse = fuse3_version()
    pyfuse3_version = ""
    with contextlib.suppress(Exception):
        from importlib.metadata import version
        pyfuse3_version = version("pyfuse3")
    return {
        "date": utc_timestamp(),
        "kernel": platform.release(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "libfuse": libfuse,
        "libfuse_318": LIBFUSE_318.split("-")[1],
        "pyfuse3": pyfuse3_version,
        "sched_autogroup_enabled": sched_autogroup_enabled(),
        "loadavg_start": os.getloadavg(),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 2 minutes: fewer, shorter rounds")
    parser.add_argument("--rounds", type=int, help="rounds of the operations (default 10, --quick 3)")
    parser.add_argument("--seconds", type=float, help="seconds per measurement (default 0.25, --quick 0.1)")
    parser.add_argument("--concurrency-rounds", type=int, help="rounds of the concurrency series (default 6, "
                        "--quick 2; 0: none)")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)),
                        help="client processes at once in the concurrency series (default 1,2,4,8)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="comma-separated subset of " + ",".join(CONTENDERS))
    parser.add_argument("--placements", default=",".join(PLACEMENTS),
                        help="own: each daemon in its own session, hence its own scheduler autogroup, as a "
                        "daemon started elsewhere is; shared: in the client's session (default: both)")
    parser.add_argument("--fioc-single-threaded", action="store_true",
                        help="run the C daemons with -s (default: libfuse's multithreaded loop, like pykld's pool)")
    parser.add_argument("--out", type=Path, default=OUT,
                        help=f"where results.json, the charts and the {LIBFUSE_318} build go")
    args = parser.parse_args()
    args.rounds = args.rounds or (3 if args.quick else 10)
    args.seconds = args.seconds or (0.1 if args.quick else 0.25)
    if args.concurrency_rounds is None:
        args.concurrency_rounds = 2 if args.quick else 6
    args.names = list(dict.fromkeys(ALIASES.get(n, n) for n in args.contenders.split(",") if n))
    args.places = [p for p in args.placements.split(",") if p]
    try:
        args.levels = sorted({int(n) for n in args.levels.split(",") if n})
    except ValueError:
        parser.error("--levels takes numbers: 1,2,4,8")
    if args.concurrency_rounds == 0:
        args.levels = []
    if not args.names or any(n not in CONTENDERS for n in args.names):
        parser.error(f"contenders are {', '.join(CONTENDERS)}")
    if not args.places or any(p not in PLACEMENTS for p in args.places):
        parser.error(f"placements are {', '.join(PLACEMENTS)}")
    if args.levels and min(args.levels) < 1:
        parser.error("--levels: at least one client")
    return args


def main() -> int:
    args = parse_args()
    names, places = args.names, args.places
    if os.geteuid() != 0 and not shutil.which("fusermount3"):
        log.exit("needs root or fusermount3 (Debian package fuse3)")
    if not os.path.exists("/dev/fuse"):
        log.exit("/dev/fuse is missing")
    want_318 = bool({"C-3.18", "C-3.18-uring"} & set(names))
    ensure_system(want_318)
    usable = ensure_pip()

    interrupt_on_stop_signals()
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="pykld-bench-"))
    daemons: dict[Key, Daemon] = {}
    unavailable: dict[str, str] = {}
    try:
        (workdir / "build").mkdir()
        builds = build(workdir / "build", args.out, want_318)
        unavailable = static_reasons(names, usable, builds, None)
        wants_ring = any(n in RING and n not in unavailable for n in names)
        found = uring_parameter()
        with uring_enabled(log) if wants_ring else contextlib.nullcontext(None) as ring_missing:
            try:
                unavailable.update(static_reasons(names, usable, builds, ring_missing))
                for name in names:
                    for place in places:
                        if name in unavailable:
                            break
                        log(f"starting {name} ({place} session)")
                        daemon = daemons[name, place] = make_daemon(name, place, workdir, builds,
                                                                    args.fioc_single_threaded)
                        try:
                            daemon.start(builds.client, own_session=place == "own")
                            why = not_serving_as_claimed(name, daemon)
                        except (RuntimeError, OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                            why = f"did not start: {exc}"
                        if why:
                            unavailable[name] = why
                            log(f"{name}: n/a: {why}")
                ran = [n for n in names if n not in unavailable]
                for key in [k for k in daemons if k[0] in unavailable]:
                    daemons.pop(key).stop()
                if not ran:
                    log("no contender could run")
                    return 1
                info = machine_info()
                info["fioc_threads"] = "single (-s)" if args.fioc_single_threaded else "multithreaded (default)"
                info["o_direct"] = {f"{n}@{p}": d.o_direct for (n, p), d in daemons.items()}
                we_set = wants_ring and ring_missing is None and found != "Y"
                info["enable_uring"] = f"set to Y for the run (it was {found})" if we_set else f"{found}, untouched"
                levels = args.levels
                est = len(daemons) * (args.rounds * len(OPS) * (args.seconds + 0.05)
                                      + args.concurrency_rounds * len(levels) * len(CONCURRENCY_OPS)
                                      * (args.seconds + 0.12))
                log(f"{args.rounds} rounds x {len(OPS)} operations, then {args.concurrency_rounds} rounds x "
                    f"{levels} clients x {len(CONCURRENCY_OPS)} operations, x {len(daemons)} daemons x "
                    f"{args.seconds} s (about {est:.0f} s)")
                started = time.monotonic()
                run = Run(daemons, builds.client)
                run.rounds([(op, 0) for op in OPS], args.rounds, args.seconds, "operations")
                if args.levels:
                    run.rounds([(op, n) for n in args.levels for op in CONCURRENCY_OPS], args.concurrency_rounds,
                               args.seconds, "concurrency")
                info["measure_seconds"] = round(time.monotonic() - started, 1)
                info["loadavg_end"] = os.getloadavg()
                for (name, place), daemon in daemons.items():
                    if name not in run.failed and daemon.died():
                        run.failed[name] = f"died during the run ({place}): {daemon.output()[-400:]}"
                served = {f"{n}@{p}": {**d.served, "threads_at_end": d.threads(),
                                       "said": d.says("loop", "uring")} for (n, p), d in daemons.items()}
            finally:
                ignore_stop_signals()  # a second Ctrl-C must not skip unmounting, nor restoring enable_uring
                for daemon in daemons.values():
                    daemon.stop()
    except (KeyboardInterrupt, Interrupted) as exc:
        return interrupted_exit_status(exc, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    unavailable.update(run.failed)
    ran = [n for n in names if n not in unavailable]
    results = results_of(run, ran, places, args.levels)
    report = {
        "machine": info,
        "rounds": args.rounds,
        "concurrency_rounds": args.concurrency_rounds,
        "seconds_per_measurement": args.seconds,
        "levels": args.levels,
        "contenders": {n: CONTENDERS[n] for n in names},
        "unavailable": unavailable,
        "served": served,
        "goal": {f"{p}/{b}": GOAL for p in PYKLDS for b in BASES},
        "placements": results,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_report(report, names, OPS, OP_LABEL, CONCURRENCY_OPS))
    wrote = [args.out / "results.json"]
    if "matplotlib" in usable:
        wrote += draw_chart(lambda path: chart_relative(report, ran, OPS, OP_LABEL, path),
                            args.out / "membuf_fuse.png", log)
        if args.levels:
            wrote += draw_chart(lambda path: chart_concurrency(report, ran, CONCURRENCY_OPS, OP_LABEL, path),
                                args.out / "membuf_concurrency.png", log)
    else:
        log("matplotlib unavailable: no chart")
    print("\nwrote " + " and ".join(str(path) for path in wrote))
    return 0


if __name__ == "__main__":
    sys.exit(main())
