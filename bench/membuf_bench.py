"""Benchmark: pykld's membuf device over FUSE against libfuse's C fioc example and a pyfuse3 peer.

    make bench                                  # or: .venv/bin/python bench/membuf_bench.py [--quick]

Three daemons serve the same device, a resizable in-memory buffer, as one file
of a FUSE mount each:

  pykld    examples/membuf.py under `pykld run --transport fuse`
  C        libfuse 3's fioc example (ioctl.c), built now with gcc, multithreaded loop
  pyfuse3  bench/pyfuse3_membuf.py, the same device written directly with pyfuse3

One client, bench/client.c (built now), runs each operation in a tight loop for
a fixed time in a fresh process, the file opened with O_DIRECT so every
operation reaches the daemon.  Each contender runs twice: in its own session
(its own scheduler autogroup, as a daemon started elsewhere) and in the
client's; the scheduler treats the two very differently (README).  Rounds
alternate the daemons (the order rotates each round) so a noisy neighbour hurts
all alike; the figure kept is the median over rounds.  bench/README.md says
more, and what limits the figures.

Output: a table on stdout, bench/out/results.json and bench/out/membuf_fuse.png.
Every mount is undone on exit, failure or Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
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
    save_figure,
    sched_autogroup_enabled,
    use_file_backend,
    utc_timestamp,
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
CONTENDERS = ["pykld", "C", "pyfuse3"]
PLACEMENTS = {
    "own": "each in its own session (own scheduler autogroup), as when started elsewhere",
    "shared": "in the client's session (same scheduler autogroup)",
}
LABEL = {"pykld": "pykld (membuf)", "C": "C (libfuse fioc)", "pyfuse3": "pyfuse3 peer"}
TARGETS = {"pykld/C": 0.75, "pykld/pyfuse3": 1.5}
PIP_NEEDS = {"pyfuse3": "pyfuse3", "trio": "trio", "matplotlib": "matplotlib"}

START_TIMEOUT = 30.0  # seconds for a daemon to mount and answer
CLIENT_SLACK = 20.0  # seconds a client run may take beyond its measuring time

log = StderrLog("bench")


# -- set-up: Debian packages, pip packages, the two C programs ---------------------------------------


def ensure_system() -> None:
    """gcc, pkg-config and libfuse3-dev (for fioc, the client and pyfuse3's build)."""
    if have_fuse3_toolchain():
        return
    if not APT_NEED.exists():
        log.exit("need gcc, pkg-config and libfuse3-dev (Debian packages)")
    apt_need("libfuse3-dev", "pkg-config", "gcc", "fuse3")


def ensure_pip() -> set[str]:
    """pyfuse3 (built against libfuse3-dev), trio and matplotlib, into this interpreter's venv.
    Returns the modules that import; a failed install costs its contender or the chart, not the run."""
    return pip_install_missing(PIP_NEEDS, log, "going on without what is missing")


def build(workdir: Path) -> tuple[Path, Path]:
    """Build the client and libfuse's fioc example into `workdir`; returns their paths."""
    cflags = fuse3_build_flags()
    copy_libfuse_examples(workdir, ("ioctl.c", "ioctl.h"), log)
    fioc = workdir / "fioc"
    client = workdir / "client"
    gcc(fioc, str(workdir / "ioctl.c"), *cflags)
    gcc(client, str(BENCH / "client.c"))
    return client, fioc


# -- the daemons --------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Daemon(DaemonProcess):
    """A daemon serving the membuf device as file `filename` of its FUSE mount at `mountpoint`."""

    mountpoint: Path
    filename: str
    o_direct: bool = True  # the client's O_DIRECT open succeeded

    @property
    def path(self) -> str:
        return str(self.mountpoint / self.filename)

    def start(self, client: Path, own_session: bool) -> None:
        """Start (own_session: see DaemonProcess.spawn), wait until mounted, pre-fill."""
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

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; and the mount goes whatever the daemon did."""
        self.terminate(log)
        unmount(self.mountpoint)


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


# -- measuring ----------------------------------------------------------------------------------------


def measure(daemons: dict[tuple[str, str], Daemon], client: Path, rounds: int,
            seconds: float) -> dict[tuple[str, str], dict[str, list[dict[str, float]]]]:
    """rounds x operations x daemons; the daemons' order rotates each round."""
    samples: dict[tuple[str, str], dict[str, list[dict[str, float]]]] = {k: {op: [] for op in OPS} for k in daemons}
    order = list(daemons)
    for r in range(rounds):
        turn = order[r % len(order):] + order[: r % len(order)]
        for op in OPS:
            for key in turn:
                daemon = daemons[key]
                before = daemon.cpu_ns()
                res = run_client(client, daemon.path, op, f"{seconds}", timeout=seconds + CLIENT_SLACK)
                cpu = daemon.cpu_ns() - before
                ops_total = res["ops"] + res["warmup_ops"]
                samples[key][op].append({
                    "ops_per_s": res["ops"] / res["seconds"],
                    "daemon_cpu_us_per_op": cpu / 1e3 / ops_total if cpu > 0 else float("nan"),
                    "client_cpu_us_per_op": res["cpu_seconds"] * 1e6 / res["ops"],
                })
        medians = {key: statistics.median(x["ops_per_s"] for x in samples[key]["pread4k"]) for key in order}
        so_far = ", ".join(f"{name}@{where} {rate:,.0f}" for (name, where), rate in medians.items())
        log(f"round {r + 1}/{rounds} (pread 4 KiB median ops/s so far: {so_far})")
    return samples


def summarize(samples: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, Any]:
    """Per operation: each contender's median ops/s (quartiles, every sample), MB/s, CPU; the ratios."""
    summary: dict[str, Any] = {}
    for op in OPS:
        row: dict[str, Any] = {}
        for name, per_op in samples.items():
            rates = [x["ops_per_s"] for x in per_op[op]]
            cpu = [x["daemon_cpu_us_per_op"] for x in per_op[op] if not math.isnan(x["daemon_cpu_us_per_op"])]
            q1, med, q3 = median_and_quartiles(rates)
            row[name] = {
                "ops_per_s": med,
                "ops_per_s_q1": q1,
                "ops_per_s_q3": q3,
                "ops_per_s_all": [round(x, 1) for x in rates],
                "mb_per_s": med * OP_BYTES[op] / 1e6 if OP_BYTES[op] >= 1 << 20 else None,
                "daemon_cpu_us_per_op": statistics.median(cpu) if cpu else None,
                "client_cpu_us_per_op": statistics.median(x["client_cpu_us_per_op"] for x in per_op[op]),
            }
        ratios = {}
        for ratio in TARGETS:
            top, bottom = ratio.split("/")
            if top in row and bottom in row:
                ratios[ratio] = row[top]["ops_per_s"] / row[bottom]["ops_per_s"]
        row["ratios"] = ratios
        summary[op] = row
    return summary


# -- reporting ----------------------------------------------------------------------------------------


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
        "pyfuse3": pyfuse3_version,
        "sched_autogroup_enabled": sched_autogroup_enabled(),
        "loadavg_start": os.getloadavg(),
    }


def table(summary: dict[str, Any], names: list[str]) -> str:
    head = f"{'operation':<14}" + "".join(f"{LABEL[n]:>18}" for n in names)
    ratio_names = [r for r in TARGETS if all(part in names for part in r.split("/"))]
    head += "".join(f"{r:>15}" for r in ratio_names)
    lines = [head, "-" * len(head)]
    for op in OPS:
        row = summary[op]
        line = f"{OP_LABEL[op]:<14}" + "".join(f"{row[n]['ops_per_s']:>18,.0f}" for n in names)
        for r in ratio_names:
            value = row["ratios"][r]
            mark = "" if value >= TARGETS[r] else " !"
            line += f"{value:>13.2f}{mark:2}"
        lines.append(line)
        if row[names[0]]["mb_per_s"] is not None:
            lines.append(f"{'  MB/s':<14}" + "".join(f"{row[n]['mb_per_s']:>18,.0f}" for n in names))
    lines.append(f"{'daemon CPU µs/op':<14}")
    for op in OPS:
        cells = []
        for n in names:
            v = summary[op][n]["daemon_cpu_us_per_op"]
            cells.append(f"{v:>18.1f}" if v is not None else f"{'?':>18}")
        lines.append(f"{'  ' + OP_LABEL[op]:<14}" + "".join(cells))
    return "\n".join(lines)


def chart(results: dict[str, Any], names: list[str], info: dict[str, Any], path: Path) -> None:
    """Grouped bars per placement: ops/s normalised to C's (C = 1); absolute rates in the bars."""
    use_file_backend()
    import matplotlib.pyplot as plt

    base = "C" if "C" in names else names[0]
    colors = {"pykld": "#2b7bb9", "C": "#8c8c8c", "pyfuse3": "#e08a2c"}
    width = 0.8 / len(names)
    places = list(results)
    fig, axes = plt.subplots(1, len(places), figsize=(8 * len(places), 6), sharey=True, squeeze=False)
    top = max(results[p]["operations"][op][n]["ops_per_s"] / results[p]["operations"][op][base]["ops_per_s"]
              for p in places for op in OPS for n in names)
    top = max(top, 1.0)
    for ax, place in zip(axes[0], places, strict=True):
        summary = results[place]["operations"]
        for i, name in enumerate(names):
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(OPS))]
            ys = [summary[op][name]["ops_per_s"] / summary[op][base]["ops_per_s"] for op in OPS]
            bars = ax.bar(xs, ys, width, label=LABEL[name], color=colors.get(name))
            for bar, op in zip(bars, OPS, strict=True):
                rate = summary[op][name]["ops_per_s"]
                ax.text(bar.get_x() + bar.get_width() / 2, 0.02, f"{rate / 1000:,.1f}k", ha="center",
                        va="bottom", rotation=90, fontsize=7.5, color="white")
        for j, op in enumerate(OPS):
            ratios = summary[op]["ratios"]
            text = "\n".join(f"{r} {v:.2f}{'' if v >= TARGETS[r] else ' ✗'}" for r, v in ratios.items())
            if text:
                ax.text(j, top * 1.03, text, ha="center", va="bottom", fontsize=8)
        if "pykld" in names and base == "C":
            ax.axhline(TARGETS["pykld/C"], color=colors["pykld"], linestyle="--", linewidth=0.9)
            ax.text(-0.45, TARGETS["pykld/C"] + 0.01, "target pykld/C 0.75", va="bottom", ha="left",
                    fontsize=7.5, color=colors["pykld"])
        ax.set_xticks(range(len(OPS)))
        ax.set_xticklabels([OP_LABEL[op] for op in OPS], fontsize=9)
        ax.set_title(f"daemons {PLACEMENTS[place]}", fontsize=10)
        ax.set_ylim(0, top * 1.32)
    axes[0][0].set_ylabel(f"ops/s relative to {LABEL[base]} (bars: thousands of ops/s)")
    axes[0][-1].legend(loc="upper right", fontsize=9)
    fig.suptitle(f"membuf over FUSE, median ops/s over {info['rounds']} rounds — {info['date'][:10]}, "
                 f"{info['cpus']} x {info['cpu']}, Linux {info['kernel']}, Python {info['python']}, "
                 f"libfuse {info['libfuse']}", fontsize=10)
    save_figure(fig, path)


# -- main ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 30 s: fewer, shorter rounds")
    parser.add_argument("--rounds", type=int, help="rounds (default 12, --quick 4)")
    parser.add_argument("--seconds", type=float, help="seconds per measurement (default 0.25, --quick 0.1)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="comma-separated subset of " + ",".join(CONTENDERS))
    parser.add_argument("--placements", default=",".join(PLACEMENTS),
                        help="own: each daemon in its own session, hence its own scheduler autogroup, as a "
                        "daemon started elsewhere is; shared: in the client's session (default: both)")
    parser.add_argument("--fioc-single-threaded", action="store_true",
                        help="run the C daemon with -s (default: libfuse's multithreaded loop, like pykld's pool)")
    parser.add_argument("--out", type=Path, default=OUT, help="where results.json and the chart go")
    args = parser.parse_args()
    rounds = args.rounds or (4 if args.quick else 12)
    seconds = args.seconds or (0.1 if args.quick else 0.25)
    names = [n for n in args.contenders.split(",") if n]
    places = [p for p in args.placements.split(",") if p]
    if not names or any(n not in CONTENDERS for n in names):
        parser.error(f"contenders are {', '.join(CONTENDERS)}")
    if not places or any(p not in PLACEMENTS for p in places):
        parser.error(f"placements are {', '.join(PLACEMENTS)}")

    if os.geteuid() != 0 and not shutil.which("fusermount3"):
        log.exit("needs root or fusermount3 (Debian package fuse3)")
    if not os.path.exists("/dev/fuse"):
        log.exit("/dev/fuse is missing")
    ensure_system()
    usable = ensure_pip()
    if "pyfuse3" in names and not {"pyfuse3", "trio"} <= usable:
        log("pyfuse3 or trio unavailable: the pyfuse3 contender is left out")
        names.remove("pyfuse3")
        if not names:
            return 1

    interrupt_on_stop_signals()
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="pykld-bench-"))
    daemons: dict[tuple[str, str], Daemon] = {}
    try:
        (workdir / "build").mkdir()
        client, fioc = build(workdir / "build")
        pykld_argv = pykld_command()
        py_env = {"PYTHONUNBUFFERED": "1"}
        for place in places:
            mnt = workdir / "mnt" / place
            every = {
                "pykld": Daemon("pykld", [*pykld_argv, "run", str(ROOT / "examples" / "membuf.py"), "--transport",
                                          "fuse", "--dev-dir", str(mnt / "pykld"), "--no-bind"],
                                "pykld: serving", workdir / f"pykld-{place}.log", py_env,
                                mountpoint=mnt / "pykld", filename="membuf"),
                "C": Daemon("C", [str(fioc), "-f", *(["-s"] if args.fioc_single_threaded else []),
                                  str(mnt / "fioc")],
                            None, workdir / f"fioc-{place}.log", mountpoint=mnt / "fioc", filename="fioc"),
                "pyfuse3": Daemon("pyfuse3", [sys.executable, str(BENCH / "pyfuse3_membuf.py"),
                                              str(mnt / "pyfuse3")],
                                  "pyfuse3: serving", workdir / f"pyfuse3-{place}.log", py_env,
                                  mountpoint=mnt / "pyfuse3", filename="membuf"),
            }
            for name in names:
                daemons[name, place] = every[name]
                log(f"starting {name} ({place} session)")
                every[name].start(client, own_session=place == "own")
        info = machine_info()
        info["rounds"] = rounds
        info["fioc_threads"] = "single (-s)" if args.fioc_single_threaded else "multithreaded (default)"
        info["o_direct"] = {f"{n}@{p}": d.o_direct for (n, p), d in daemons.items()}
        est = rounds * len(OPS) * len(daemons) * (seconds + 0.04)
        log(f"{rounds} rounds x {len(OPS)} operations x {len(daemons)} daemons x {seconds} s (about {est:.0f} s)")
        started = time.monotonic()
        samples = measure(daemons, client, rounds, seconds)
        info["measure_seconds"] = round(time.monotonic() - started, 1)
        info["loadavg_end"] = os.getloadavg()
        for (name, place), daemon in daemons.items():
            if daemon.died():
                raise RuntimeError(f"{name} ({place}) died during the run:\n{daemon.output()}")
    except (KeyboardInterrupt, Interrupted) as exc:
        return interrupted_exit_status(exc, log)
    finally:
        ignore_stop_signals()  # a second Ctrl-C must not skip unmounting
        for daemon in daemons.values():
            daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    results: dict[str, dict[str, Any]] = {
        place: {
            "description": PLACEMENTS[place],
            "operations": summarize({name: samples[name, place] for name in names}),
        }
        for place in places
    }
    (args.out / "results.json").write_text(json.dumps({
        "machine": info,
        "rounds": rounds,
        "seconds_per_measurement": seconds,
        "contenders": {n: LABEL[n] for n in names},
        "targets": TARGETS,
        "placements": results,
    }, indent=2) + "\n")
    print(f"\nmembuf over FUSE, {info['date']}, {info['cpus']} x {info['cpu']}, Linux {info['kernel']}, "
          f"Python {info['python']}, libfuse {info['libfuse']}, pyfuse3 {info['pyfuse3']}")
    print(f"{rounds} rounds x {seconds} s per operation and daemon; C fioc {info['fioc_threads']}; "
          f"load average {info['loadavg_start'][0]:.2f} -> {info['loadavg_end'][0]:.2f}")
    print("ops/s: median over rounds (MB/s below the 1 MiB operations); daemon CPU: all its threads, per op")
    for place in places:
        print(f"\n== daemons {PLACEMENTS[place]}")
        print(table(results[place]["operations"], names))
    targets = ", ".join(f"{r} >= {t}" for r, t in TARGETS.items())
    print(f"\ntargets: {targets}; '!' marks a miss")
    wrote = [args.out / "results.json"]
    if "matplotlib" in usable:
        wrote += draw_chart(lambda path: chart(results, names, info, path), args.out / "membuf_fuse.png", log)
    else:
        log("matplotlib unavailable: no chart")
    print("wrote " + " and ".join(str(path) for path in wrote))
    return 0


if __name__ == "__main__":
    sys.exit(main())
