"""Benchmark: many writers and readers on one fifo, pykld over FUSE against a kernel pipe.

    .venv/bin/python bench/fifo_bench.py [--quick] [--writers 32 --readers 8]

Two contenders carry the same records between the same client processes:

  pykld  examples/fifo.py under `pykld run --transport fuse`, in its own session
  pipe   a named pipe (mkfifo): the kernel's own, the limit a driver in user space can approach

W writer processes each write N records of S bytes with write(2); R reader processes each read
exactly their share (W*N*S/R bytes) with read(2) of at most 4 KiB.  Every client opens the file
first and then waits at a start line, so that process start-up is not measured; the time is from
the start to the last client's exit.  Rounds alternate the contenders (the order rotates) so that
a noisy neighbour hurts both alike; the figures are medians over rounds and the ratio pykld/pipe.

Output: a table on stdout and bench/out/fifo_results.json.  The mount is undone on exit,
failure or Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    OUT,
    ROOT,
    DaemonProcess,
    Interrupted,
    StderrLog,
    cpu_model,
    ignore_stop_signals,
    interrupt_on_stop_signals,
    interrupted_exit_status,
    median_and_quartiles,
    pykld_command,
    utc_timestamp,
)

log = StderrLog("fifo_bench")
START_TIMEOUT = 30.0
CONTENDERS = ("pykld", "pipe")

# A client: open the file, say so on the ready pipe, wait for the start (the start pipe's end),
# then write or read its bytes and exit.  argv: role path count size ready_fd start_fd
CLIENT = """
import os, sys
role, path, count, size, ready, start = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
fd = os.open(path, os.O_WRONLY if role == "w" else os.O_RDONLY)
os.write(ready, b"r")
os.read(start, 1)
if role == "w":
    record = b"r" * size
    for _ in range(count):
        view = memoryview(record)
        while view:
            view = view[os.write(fd, view):]
else:
    left = count
    while left:
        left -= len(os.read(fd, min(4096, left)))
"""


def start_pykld(workdir: Path, capacity: int) -> tuple[DaemonProcess, Path]:
    mnt = workdir / "mnt"
    mnt.mkdir()
    daemon = DaemonProcess("pykld", [*pykld_command(), "run", str(ROOT / "examples" / "fifo.py"), "--transport",
                                     "fuse", "--dev-dir", str(mnt), "--no-bind"],
                           "pykld: serving", workdir / "pykld.log",
                           {"PYTHONUNBUFFERED": "1", "PYKLD_FIFO_CAPACITY": str(capacity)})
    daemon.spawn(own_session=True)
    device = mnt / "fifo"
    daemon.wait_serving(device.exists, START_TIMEOUT, "pykld did not publish its fifo")
    return daemon, device


def one_round(path: Path, writers: int, readers: int, records: int, size: int) -> float:
    """Seconds from the start line to the last client's exit."""
    total = writers * records * size
    if total % readers:
        raise ValueError("the readers' shares must be whole: writers*records*size % readers != 0")
    ready_r, ready_w = os.pipe()
    start_r, start_w = os.pipe()
    argv = [sys.executable, "-c", CLIENT]
    roles = [("w", records)] * writers + [("r", total // readers)] * readers
    clients = [subprocess.Popen([*argv, role, str(path), str(count), str(size), str(ready_w), str(start_r)],
                                pass_fds=(ready_w, start_r)) for role, count in roles]
    os.close(ready_w)
    os.close(start_r)
    try:
        got = 0
        while got < len(clients):
            chunk = os.read(ready_r, len(clients))
            if not chunk:
                raise RuntimeError("a client died before the start")
            got += len(chunk)
        began = time.monotonic()
        os.close(start_w)  # every client's read of the start pipe returns
        start_w = -1
        for client in clients:
            if client.wait(300) != 0:
                raise RuntimeError(f"a client failed ({client.returncode})")
        return time.monotonic() - began
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
        os.close(ready_r)
        if start_w >= 0:
            os.close(start_w)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--rounds", type=int, help="rounds (default 7, --quick 3)")
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--records", type=int, default=1000, help="records per writer")
    parser.add_argument("--size", type=int, default=256, help="bytes per record")
    parser.add_argument("--capacity", type=int, default=65536,
                        help="pykld fifo capacity, bytes (a Linux pipe holds 64 KiB)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    if not os.path.exists("/dev/fuse"):
        log.exit("/dev/fuse is missing")
    if os.geteuid() != 0 and not shutil.which("fusermount3"):
        log.exit("needs root or fusermount3 (Debian package fuse3)")

    interrupt_on_stop_signals()
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="pykld-fifo-bench-"))
    daemon: DaemonProcess | None = None
    seconds: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    cpu: list[float] = []
    try:
        daemon, device = start_pykld(workdir, args.capacity)
        pipe = workdir / "pipe"
        os.mkfifo(pipe)
        paths = {"pykld": device, "pipe": pipe}
        load_start = os.getloadavg()
        for index in range(rounds):
            order = CONTENDERS if index % 2 == 0 else CONTENDERS[::-1]
            for name in order:
                before = daemon.cpu_ns()
                took = one_round(paths[name], args.writers, args.readers, args.records, args.size)
                seconds[name].append(took)
                if name == "pykld":
                    cpu.append((daemon.cpu_ns() - before) / 1e9)
                log(f"round {index + 1}/{rounds}: {name} {took:.2f} s")
            if daemon.died():
                raise RuntimeError(f"pykld died:\n{daemon.output()}")
    except (KeyboardInterrupt, Interrupted) as exc:
        return interrupted_exit_status(exc, log)
    finally:
        ignore_stop_signals()
        if daemon is not None:
            daemon.terminate(log)
            subprocess.run(["umount", "-l", str(workdir / "mnt")], capture_output=True, check=False)
        shutil.rmtree(workdir, ignore_errors=True)

    records = args.writers * args.records
    rate = {name: [records / s for s in seconds[name]] for name in CONTENDERS}
    ratio = [p / k for p, k in zip(rate["pykld"], rate["pipe"], strict=True)]  # per round: both ran side by side
    summary: dict[str, Any] = {name: median_and_quartiles(rate[name]) for name in CONTENDERS}
    summary["ratio"] = median_and_quartiles(ratio)
    summary["pykld_cpu_us_per_record"] = median_and_quartiles([c / records * 1e6 for c in cpu])
    info = {"date": utc_timestamp(), "kernel": platform.release(), "cpu": cpu_model(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()}
    (args.out / "fifo_results.json").write_text(json.dumps({
        "machine": info, "rounds": rounds, "writers": args.writers, "readers": args.readers,
        "records_per_writer": args.records, "record_bytes": args.size, "pykld_capacity": args.capacity,
        "seconds": seconds, "summary": summary}, indent=2) + "\n")
    print(f"\nfifo, {args.writers} writers and {args.readers} readers, {records} records of {args.size} bytes; "
          f"{info['date']}, {info['cpus']} x {info['cpu']}, Linux {info['kernel']}, Python {info['python']}")
    print(f"{rounds} rounds; load average {load_start[0]:.2f} -> {info['loadavg_end'][0]:.2f}")
    print("| contender | records/s (median) | q1-q3 |\n| --- | ---: | --- |")
    for name in CONTENDERS:
        q1, med, q3 = summary[name]
        print(f"| {name} | {med:,.0f} | {q1:,.0f}-{q3:,.0f} |")
    q1, med, q3 = summary["ratio"]
    print(f"pykld/pipe: {med:.3f} ({q1:.3f}-{q3:.3f}); pykld daemon CPU per record: "
          f"{summary['pykld_cpu_us_per_record'][1]:.0f} µs")
    print(f"wrote {args.out / 'fifo_results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
