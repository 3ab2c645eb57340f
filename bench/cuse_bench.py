"""Benchmark: pykld's membuf over CUSE against libfuse's C cuse.c example, in one VM boot.

    .venv/bin/python bench/cuse_bench.py            # about 4-5 minutes: one VM boot, ~4 min of rounds
    .venv/bin/python bench/cuse_bench.py --quick    # 1-2 minutes

The host kernel has no CUSE, so the measuring runs inside a VM with a stock
Debian kernel (tools/vm-run, qemu software emulation).  On the host this script
builds the client (bench/cuse_client.c) and libfuse's example
(/usr/share/doc/libfuse3-dev/examples/cuse.c) into a directory under /tmp, then
runs itself inside the VM (`--inside`): both daemons are started side by side,
pykld's /dev/membuf and the example's /dev/fioc_c, and every operation is
measured on one then the other, the order swapped every round (A B, B A, ...).
Absolute rates under emulation mean nothing; what is reported is the ratio
pykld/C per operation: the median over rounds of the paired ratios (each
pair measured back to back), with its quartiles.

pykld runs as several daemons, one per way it can serve (bench/cuse_membuf.py
gives each a node of its own): the Python request loop (PYKLD_LOOP=python),
the compiled one (PYKLD_LOOP=compiled, when pykld._loop is built), and, for the
ioctls only, the kernel's retry rounds instead of reaching the caller's memory
directly (PYKLD_FUSE_USER_MEMORY=off).

Output: a table on stdout, bench/out/cuse_results.json and bench/out/membuf_cuse.png.
bench/README.md ("CUSE") says how the operations are made equivalent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    BENCH,
    LIBFUSE_EXAMPLES,
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
    process_cpu_ns,
    pykld_command,
    run_client,
    save_figure,
    sched_autogroup_enabled,
    use_file_backend,
    utc_timestamp,
)

VM_RUN = ROOT / "tools" / "vm-run"

OPS = ["read4k", "write4k", "read1m", "write1m", "openclose", "getsize", "fiocread4k", "fiocwrite4k"]
OP_LABEL = {
    "read4k": "read 4 KiB",
    "write4k": "write 4 KiB",
    "read1m": "read 1 MiB",
    "write1m": "write 1 MiB",
    "openclose": "open+close",
    "getsize": "FIOC_GET_SIZE",
    "fiocread4k": "FIOC_READ 4 KiB",
    "fiocwrite4k": "FIOC_WRITE 4 KiB",
}
SHORT_LABEL = {
    "read4k": "read\n4 KiB", "write4k": "write\n4 KiB", "read1m": "read\n1 MiB", "write1m": "write\n1 MiB",
    "openclose": "open+\nclose", "getsize": "GET_\nSIZE", "fiocread4k": "FIOC_\nREAD", "fiocwrite4k": "FIOC_\nWRITE",
}
OP_BYTES = {"read4k": 4096, "write4k": 4096, "read1m": 1 << 20, "write1m": 1 << 20}
# What CUSE sends per operation (kernel side; measured again in every run from the daemons' read(2)
# counts, see requests_per_op in the results).
OP_REQUESTS = {
    "read4k": "READ",
    "write4k": "WRITE",
    "read1m": "8 READ of 128 KiB",  # page-aligned buffer: 256 pages, 32 a request
    "write1m": "8 WRITE of 128 KiB",
    "openclose": "OPEN, RELEASE",
    # pykld reaches the caller's memory itself: one request; by the kernel's retry rounds as many as C
    "getsize": "pykld 1 IOCTL (rounds: 2), C 2",
    "fiocread4k": "pykld 1 IOCTL (rounds: 3), C 3",
    "fiocwrite4k": "pykld 1 IOCTL (rounds: 3), C 3",
}
IOCTL_OPS = ["getsize", "fiocread4k", "fiocwrite4k"]


@dataclass(frozen=True)
class Contender:
    label: str
    node: str
    env: dict[str, str]
    ops: tuple[str, ...] = tuple(OPS)


# pykld's ways of serving, each a daemon of its own; "C" is libfuse's example.
PYKLD = {
    "pykld": Contender("pykld, Python loop", "/dev/membuf", {"PYKLD_LOOP": "python"}),
    "pykld-compiled": Contender("pykld, compiled loop", "/dev/membuf_cl", {"PYKLD_LOOP": "compiled"}),
    "pykld-rounds": Contender("pykld, ioctls by retry rounds", "/dev/membuf_rt", {"PYKLD_FUSE_USER_MEMORY": "off"},
                              tuple(IOCTL_OPS)),
}
C_CONTENDER = Contender("C cuse.c", "/dev/fioc_c", {})
REGION = 8 << 20  # bytes each daemon holds; sequential operations reopen after this many bytes
PIP_NEEDS = {"matplotlib": "matplotlib"}

START_TIMEOUT = 240.0  # seconds for a daemon to publish its node (Python under emulation is slow)
CLIENT_SLACK = 120.0  # seconds a client run may take beyond its measuring time (emulation)
BOOT_ALLOWANCE = 300.0  # seconds of vm-run's timeout beyond the measuring budget: boot, start-up, stop

log = StderrLog("cuse-bench")


# == inside the VM ====================================================================================


@dataclass(kw_only=True)
class Daemon(DaemonProcess):
    """One daemon serving a CUSE node; started in a session of its own, stopped whatever happens."""

    node: str

    def wait_ready(self) -> float:
        """Seconds from launch until the node exists (and the ready line was printed)."""
        return self.wait_serving(lambda: os.path.exists(self.node), START_TIMEOUT,
                                 f"{self.name}: no {self.node}")

    def counters(self) -> tuple[int, int, int]:
        """(CPU ns, read syscalls, write syscalls) of the daemon so far, all its threads, exited ones
        included.  Each read(2)/readv(2) on /dev/cuse takes one request, so the read count says how
        many requests a daemon served."""
        if self.proc is None:
            return 0, 0, 0
        try:
            cpu = process_cpu_ns(self.proc.pid)
            io = dict(line.split(": ") for line in Path(f"/proc/{self.proc.pid}/io").read_text().splitlines())
        except (OSError, ValueError):
            return 0, 0, 0
        return cpu, int(io.get("syscr", 0)), int(io.get("syscw", 0))


def inside(args: argparse.Namespace) -> int:
    """The measuring, run as root inside the VM: start both daemons, fill, alternate, write JSON."""
    build: Path = args.build
    client = build / "cuse_client"
    out: Path = args.out
    pykld_argv = pykld_command()
    c_argv = [str(build / "cuse_example"), "-f", *(["-s"] if args.c_single_threaded else []), "--name=fioc_c"]
    contenders = pykld_contenders()
    daemons = {
        name: Daemon(name, [*pykld_argv, "run", str(BENCH / "cuse_membuf.py"), "--transport", "cuse", "--console"],
                     "pykld: serving", build / f"{name}.log",
                     {"PYTHONUNBUFFERED": "1", "PYKLD_BENCH_NODE": c.node.removeprefix("/dev/"), **c.env},
                     node=c.node)
        for name, c in contenders.items()
    }
    daemons["C"] = Daemon("C", c_argv, None, build / "cuse_example.log", node=C_CONTENDER.node)
    contenders["C"] = C_CONTENDER
    for node in (c.node for c in contenders.values()):
        if os.path.exists(node):
            raise RuntimeError(f"{node} exists already: another daemon serves it")
    info: dict[str, Any] = {
        "guest_kernel": platform.release(),
        "guest_cpus": os.cpu_count(),
        "guest_python": platform.python_version(),
        "sched_autogroup_enabled": sched_autogroup_enabled(),
        "c_threads": "single (-s)" if args.c_single_threaded else "multithreaded (libfuse default)",
        "region_bytes": args.region,
        "seconds_per_measurement": args.seconds,
        "rounds_planned": args.rounds,
        "budget_seconds": args.budget,
        "contenders": {name: {"label": c.label, "node": c.node, "env": c.env, "ops": list(c.ops)}
                       for name, c in contenders.items()},
    }
    samples: dict[str, dict[str, list[dict[str, float]]]] = {n: {op: [] for op in c.ops}
                                                             for n, c in contenders.items()}
    interrupt_on_stop_signals(sigint=False)
    try:
        for daemon in daemons.values():
            daemon.spawn(own_session=True)
        for name, daemon in daemons.items():
            info[f"{name}_start_seconds"] = round(daemon.wait_ready(), 2)
            log(f"{name} serves {daemon.node} ({info[f'{name}_start_seconds']} s after launch)")
        for name, daemon in daemons.items():
            st = os.stat(daemon.node)
            info[f"{name}_node"] = f"{daemon.node} char={int((st.st_mode & 0o170000) == 0o020000)} " \
                                   f"mode={st.st_mode & 0o7777:o}"
            check = run_client(client, daemon.node, "fill", str(args.region), timeout=CLIENT_SLACK)
            if not check.get("ok"):
                raise RuntimeError(f"{name}: fill failed: {check}")
        for name, daemon in daemons.items():  # which loop and memory path each runs, as it says in dmesg
            info[f"{name}_dmesg"] = [line for line in daemon.output().splitlines()
                                     if "loop" in line or "reachable" in line][:4]
        log(f"all filled with {args.region >> 20} MiB and checked (read back, FIOC_GET_SIZE, FIOC_READ)")
        started = time.monotonic()
        rounds_done = 0
        names = list(contenders)
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for op in OPS:
                for name in (n for n in order if op in contenders[n].ops):
                    daemon = daemons[name]
                    cpu0, rd0, _ = daemon.counters()
                    res = run_client(client, daemon.node, op, f"{args.seconds}", str(args.region),
                                     timeout=args.seconds + CLIENT_SLACK)
                    cpu1, rd1, _ = daemon.counters()
                    total = res["ops"] + res["warmup_ops"]
                    # every reopen is an OPEN and a RELEASE; take them out of the per-operation counts
                    requests = rd1 - rd0 - 2 * res["reopens"] - 2  # and the client's own open and close
                    samples[name][op].append({
                        "ops_per_s": res["ops"] / res["seconds"],
                        "daemon_cpu_us_per_op": (cpu1 - cpu0) / 1e3 / total,
                        "requests_per_op": requests / total,
                        "client_cpu_us_per_op": res["cpu_seconds"] * 1e6 / max(res["ops"], 1),
                        "ops": res["ops"],
                    })
            rounds_done = r + 1
            elapsed = time.monotonic() - started
            for name, daemon in daemons.items():
                if daemon.died():
                    raise RuntimeError(f"{name} died during the run:\n{daemon.output()}")
            ratio = samples["pykld"]["read4k"][-1]["ops_per_s"] / samples["C"]["read4k"][-1]["ops_per_s"]
            ioctl = samples["pykld"]["fiocread4k"][-1]["ops_per_s"] / samples["C"]["fiocread4k"][-1]["ops_per_s"]
            log(f"round {rounds_done}/{args.rounds} in {elapsed:.0f} s (pykld/C this round: read 4 KiB {ratio:.2f}, "
                f"FIOC_READ {ioctl:.2f})")
            info["rounds"] = rounds_done
            info["measure_seconds"] = round(elapsed, 1)
            _write_json(out, {"info": info, "samples": samples})
            per_round = elapsed / rounds_done
            if rounds_done >= 3 and elapsed + per_round > args.budget:
                log(f"time budget {args.budget:.0f} s: stopping after {rounds_done} rounds")
                break
        info["guest_loadavg_end"] = os.getloadavg()
        _write_json(out, {"info": info, "samples": samples})
    except Interrupted as exc:
        return interrupted_exit_status(exc, log)
    finally:
        ignore_stop_signals()
        for daemon in daemons.values():
            daemon.terminate(log)
        for name, daemon in daemons.items():
            if os.path.exists(daemon.node):
                log(f"{name}: {daemon.node} still there after stop")
    return 0


def pykld_contenders() -> dict[str, Contender]:
    """pykld's daemons for this run: the compiled loop only where pykld._loop is built."""
    import importlib.util

    try:
        compiled = importlib.util.find_spec("pykld._loop") is not None
    except ImportError:
        compiled = False
    return {name: c for name, c in PYKLD.items() if compiled or c.env.get("PYKLD_LOOP") != "compiled"}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


# == on the host ======================================================================================


def ensure_system() -> None:
    """gcc, pkg-config and libfuse3-dev (the C example and the client)."""
    if have_fuse3_toolchain() and (LIBFUSE_EXAMPLES / "cuse.c").exists():
        return
    apt_need("libfuse3-dev", "pkg-config", "gcc")


def ensure_pip() -> bool:
    """matplotlib into this interpreter's venv; False (no chart) when that fails."""
    return "matplotlib" in pip_install_missing(PIP_NEEDS, log, "no chart")


def build(workdir: Path) -> None:
    """The client and libfuse's cuse.c example, into `workdir` (shared with the VM: it is under /tmp)."""
    flags = fuse3_build_flags()
    copy_libfuse_examples(workdir, ("cuse.c", "ioctl.h"), log)
    gcc(workdir / "cuse_example", str(workdir / "cuse.c"), *flags)
    gcc(workdir / "cuse_client", "-I", str(workdir), str(BENCH / "cuse_client.c"))


def warm_bytecode(prefix: Path) -> None:
    """Compile, on the host, what the VM's Python will import, into a private bytecode cache
    (PYTHONPYCACHEPREFIX), so the guest need not compile it under emulation; nothing is written
    beside the sources.  Best effort: a failure only makes the start-up in the VM slower."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(prefix)
    argvs = [
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "pykld"), str(ROOT / "examples"),
         str(BENCH / "cuse_bench.py"), str(BENCH / "common.py")],
        # the modules a run imports (stdlib and site-packages included: with a prefix every .pyc is looked
        # up there); the sim transport runs the same loading path and exits at once
        [*pykld_command(), "run", str(ROOT / "examples" / "membuf.py"), "--transport", "sim"],
        # this script's own imports, common.py's included
        [sys.executable, str(BENCH / "cuse_bench.py"), "--help"],
    ]
    for argv in argvs:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(argv, env=env, capture_output=True, timeout=120, cwd=ROOT)
    # the import graph of the measuring part itself (subprocess, json, statistics, ...)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run([sys.executable, "-c", "import argparse, contextlib, datetime, importlib.util, json, "
                        "platform, shutil, signal, statistics, subprocess, tempfile, time, pathlib, typing, "
                        "pykld.transport.cuse, pykld.kld.run, pykld.kld.cli"], env=env, capture_output=True,
                       timeout=120, cwd=ROOT)


def summarize(samples: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, Any]:
    """Per operation: each contender's medians, and each pykld daemon's paired ratio to C."""
    summary: dict[str, Any] = {}
    for op in OPS:
        row: dict[str, Any] = {"requests": OP_REQUESTS[op], "ratios": {}}
        for name, per_op in samples.items():
            per = per_op.get(op)
            if not per:
                continue
            rates = [x["ops_per_s"] for x in per]
            row[name] = {
                "ops_per_s": statistics.median(rates),
                "ops_per_s_all": [round(x, 1) for x in rates],
                "mb_per_s": statistics.median(rates) * OP_BYTES[op] / 1e6 if op in OP_BYTES else None,
                "daemon_cpu_us_per_op": statistics.median(x["daemon_cpu_us_per_op"] for x in per),
                "requests_per_op": statistics.median(x["requests_per_op"] for x in per),
                "client_cpu_us_per_op": statistics.median(x["client_cpu_us_per_op"] for x in per),
            }
        for name in samples:
            if name == "C" or name not in row:
                continue
            paired = [a["ops_per_s"] / b["ops_per_s"] for a, b in zip(samples[name][op], samples["C"][op], strict=True)]
            q1, median, q3 = median_and_quartiles(paired)
            row["ratios"][name] = {"ratio": median, "q1": q1, "q3": q3, "all": [round(x, 3) for x in paired],
                                   "ratio_of_medians": row[name]["ops_per_s"] / row["C"]["ops_per_s"]}
        summary[op] = row
    return summary


def table(summary: dict[str, Any], info: dict[str, Any]) -> str:
    """One line per operation and pykld daemon: its ops/s, C's, the ratio, CPU and requests per op."""
    head = (f"{'operation':<17}{'pykld daemon':<31}{'ops/s':>8}{'C ops/s':>9}{'pykld/C':>9}{'(q1-q3)':>12}"
            f"{'CPU µs/op':>11}{'C':>7}{'req/op':>8}{'C':>6}")
    lines = [head, "-" * len(head)]
    for op in OPS:
        row = summary[op]
        c = row["C"]
        for name, r in row["ratios"].items():
            p = row[name]
            label = info["contenders"][name]["label"]
            lines.append(f"{OP_LABEL[op]:<17}{label:<31}{p['ops_per_s']:>8,.0f}{c['ops_per_s']:>9,.0f}"
                         f"{r['ratio']:>9.2f}{r['q1']:>6.2f}-{r['q3']:<5.2f}{p['daemon_cpu_us_per_op']:>11,.0f}"
                         f"{c['daemon_cpu_us_per_op']:>7,.0f}{p['requests_per_op']:>8.2f}{c['requests_per_op']:>6.2f}")
    return "\n".join(lines)


COLORS = {"pykld": "#2b7bb9", "pykld-compiled": "#1a9850", "pykld-rounds": "#fdae61", "C": "#8c8c8c"}


def chart(summary: dict[str, Any], info: dict[str, Any], path: Path) -> None:
    """Left: pykld/C ops/s per operation (the figure), a bar per pykld daemon.  Right: each daemon's
    CPU per CUSE request."""
    use_file_backend()
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(15, 5.8), gridspec_kw={"width_ratios": [3, 2]})
    xs = list(range(len(OPS)))
    names = [n for n in info["contenders"] if n != "C"]
    width = 0.8 / len(names)
    top = 1.15
    for j, name in enumerate(names):
        at = [(x + (j - (len(names) - 1) / 2) * width, summary[op]["ratios"][name])
              for x, op in zip(xs, OPS, strict=True) if name in summary[op]["ratios"]]
        ratios = [r["ratio"] for _, r in at]
        low = [r["ratio"] - r["q1"] for _, r in at]
        high = [r["q3"] - r["ratio"] for _, r in at]
        ax.bar([x for x, _ in at], ratios, width, color=COLORS.get(name, "#2b7bb9"), yerr=[low, high], capsize=3,
               ecolor="#333333", label=info["contenders"][name]["label"])
        for (x, r), h in zip(at, high, strict=True):
            ax.text(x, r["ratio"] + h + 0.02, f"{r['ratio']:.2f}", ha="center", va="bottom", fontsize=7.5)
            top = max(top, (r["ratio"] + h) * 1.15)
    ax.axhline(1.0, color="#8c8c8c", linestyle="--", linewidth=1)
    ax.axhline(0.75, color="#d73027", linestyle=":", linewidth=1)
    ax.text(len(OPS) - 0.5, 1.01, "C = 1", ha="right", va="bottom", fontsize=8, color="#555555")
    ax.text(len(OPS) - 0.5, 0.76, "goal 0.75", ha="right", va="bottom", fontsize=8, color="#d73027")
    ax.set_xticks(xs)
    ax.set_xticklabels([OP_LABEL[op].replace(" ", "\n", 1) for op in OPS], fontsize=8.5)
    ax.set_ylabel("ops/s of pykld relative to libfuse's cuse.c example")
    ax.set_ylim(0, top)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("pykld/C per operation: median of paired rounds (whiskers: quartiles)", fontsize=9.5)

    every = [*names, "C"]
    width = 0.8 / len(every)
    for j, name in enumerate(every):
        at = [(x + (j - (len(every) - 1) / 2) * width, summary[op][name]) for x, op in zip(xs, OPS, strict=True)
              if name in summary[op]]
        per_req = [m["daemon_cpu_us_per_op"] / max(m["requests_per_op"], 1e-9) for _, m in at]
        bx.bar([x for x, _ in at], per_req, width, color=COLORS.get(name, "#2b7bb9"),
               label=info["contenders"][name]["label"])
    bx.set_yscale("log")
    bx.set_xticks(xs)
    bx.set_xticklabels([SHORT_LABEL[op] for op in OPS], fontsize=8)
    bx.set_ylabel("daemon CPU per CUSE request, µs (log; emulated)")
    bx.legend(loc="upper left", fontsize=8)
    bx.set_title("where the time goes: each daemon's CPU per request it served", fontsize=9.5)
    fig.suptitle(f"membuf over CUSE, {info['rounds']} alternating rounds x {info['seconds_per_measurement']} s in "
                 f"one VM boot (qemu TCG, Linux {info['guest_kernel']}, {info['guest_cpus']} vCPU), libfuse "
                 f"{info['libfuse']}, Python {info['guest_python']} -- {info['date'][:10]}", fontsize=10)
    save_figure(fig, path)


def host(args: argparse.Namespace) -> int:
    vm_run: Path = args.vm_run
    if not vm_run.exists():
        log.exit(f"{vm_run} missing")
    t_start = time.monotonic()
    ensure_system()
    have_mpl = ensure_pip()
    args.out.mkdir(parents=True, exist_ok=True)
    libfuse = fuse3_version()
    workdir = Path(tempfile.mkdtemp(prefix="pykld-cuse-bench-", dir="/tmp"))
    interrupt_on_stop_signals()
    inner_json = workdir / "inside.json"
    proc: subprocess.Popen[bytes] | None = None
    loadavg_start = os.getloadavg()
    try:
        build(workdir)
        pycache = workdir / "pycache"
        warm_bytecode(pycache)
        timeout = int(args.budget + BOOT_ALLOWANCE)
        argv = [str(vm_run), "--timeout", str(timeout), "--", sys.executable, str(BENCH / "cuse_bench.py"),
                "--inside", "--build", str(workdir), "--out", str(inner_json), "--rounds", str(args.rounds),
                "--seconds", str(args.seconds), "--region", str(args.region), "--budget", str(args.budget),
                *(["--c-single-threaded"] if args.c_single_threaded else [])]
        env = {**os.environ, "PYTHONPYCACHEPREFIX": str(pycache)}
        log(f"booting the VM (timeout {timeout} s): up to {args.rounds} rounds x {len(OPS)} operations x 3-4 daemons "
            f"x {args.seconds} s, at most {args.budget:.0f} s of rounds")
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        rc = proc.wait(timeout + 60)
        proc = None
        if rc != 0:
            log(f"vm-run exited with {rc}")
        if not inner_json.exists():
            log("no results came back from the VM")
            return rc or 1
        data = json.loads(inner_json.read_text())
        if rc != 0:
            log("using the rounds the VM finished")
    except subprocess.TimeoutExpired:
        log("vm-run outlived its own timeout; stopping it")
        return 124
    except (KeyboardInterrupt, Interrupted) as exc:
        return interrupted_exit_status(exc, log)
    finally:
        ignore_stop_signals()
        if proc is not None and proc.poll() is None:  # vm-run kills the VM on SIGTERM
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    info = data["info"]
    samples = data["samples"]
    if not info.get("rounds"):
        log("the VM finished no round")
        return 1
    info.update({
        "vm_run": str(args.vm_run),
        "date": utc_timestamp(),
        "host_kernel": platform.release(),
        "host_cpus": os.cpu_count(),
        "host_cpu": cpu_model(),
        "libfuse": libfuse,
        "host_loadavg_start": loadavg_start,
        "host_loadavg_end": os.getloadavg(),
        "total_seconds": round(time.monotonic() - t_start, 1),
    })
    summary = summarize(samples)
    (args.out / "cuse_results.json").write_text(json.dumps({
        "info": info,
        "contenders": info["contenders"],
        "operations": summary,
    }, indent=2) + "\n")
    print(f"\nmembuf over CUSE, {info['date']}: one VM boot ({info['vm_run']}: qemu TCG unless it keeps KVM; "
          f"Linux {info['guest_kernel']}, {info['guest_cpus']} vCPU) on {info['host_cpus']} x {info['host_cpu']}; "
          f"libfuse {libfuse}, Python {info['guest_python']}")
    print(f"{info['rounds']} rounds x {info['seconds_per_measurement']} s per operation and daemon, alternating "
          f"(pykld C, C pykld, ...); C example {info['c_threads']}; host load average "
          f"{loadavg_start[0]:.2f} -> {info['host_loadavg_end'][0]:.2f}")
    print("ops/s: median over rounds -- absolute rates under emulation mean nothing, the ratio does.")
    print("pykld/C: median of the per-round ratios (each pair measured back to back), quartiles in brackets.")
    print("CPU µs/op: the daemon's own CPU (all threads); req/op: CUSE requests it read per operation.")
    for name, c in info["contenders"].items():
        said = "; ".join(info.get(f"{name}_dmesg", [])) or "-"
        print(f"  {name}: {c['label']} on {c['node']}, env {c['env'] or '-'}; its dmesg: {said}")
    print()
    print(table(summary, info))
    wrote = [args.out / "cuse_results.json"]
    if have_mpl:
        wrote += draw_chart(lambda path: chart(summary, info, path), args.out / "membuf_cuse.png", log)
    print(f"\nwrote {' and '.join(str(p) for p in wrote)}; total {info['total_seconds']:.0f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (1-2 minutes in all)")
    parser.add_argument("--rounds", type=int, help="rounds at most (default 14, --quick 4)")
    parser.add_argument("--seconds", type=float, help="seconds per measurement (default 0.75, --quick 0.4)")
    parser.add_argument("--budget", type=float, help="seconds of rounds at most, in the VM (default 240, --quick 60)")
    parser.add_argument("--region", type=int, default=REGION, help=f"bytes each daemon holds (default {REGION})")
    parser.add_argument("--c-single-threaded", action="store_true",
                        help="run the C example with -s (default: libfuse's multithreaded loop)")
    parser.add_argument("--out", type=Path, default=OUT, help="host: where the JSON and the chart go; "
                        "--inside: the JSON file")
    parser.add_argument("--vm-run", type=Path, default=VM_RUN, help=f"the VM runner (default {VM_RUN}; a copy "
                        "that keeps KVM measures without emulation's skew)")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.rounds = args.rounds or (4 if args.quick else 14)
    args.seconds = args.seconds or (0.4 if args.quick else 0.75)
    args.budget = args.budget or (60.0 if args.quick else 240.0)
    if args.region < (1 << 20) or args.region % (1 << 20):
        parser.error("--region must be a multiple of 1 MiB")
    if args.inside:
        if os.geteuid() != 0 or not os.path.exists("/dev/cuse"):
            log.exit("--inside needs root and /dev/cuse (it runs in the VM of tools/vm-run)")
        return inside(args)
    return host(args)


if __name__ == "__main__":
    sys.exit(main())
