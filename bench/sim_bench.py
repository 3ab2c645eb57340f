"""pykld in process (the sim transport): small operations a second, with floors in the same run.

    .venv/bin/python bench/sim_bench.py                       # this tree, about 15 s
    .venv/bin/python bench/sim_bench.py --against /tmp/main   # this tree and another, alternately

Loads examples/membuf.py and examples/hello.py into a Kernel and times, through the
file descriptor an in-process caller gets (`Kernel.open(...)`), the operations a
client does: pread and pwrite of 4 KiB at offset 0 on 1 MiB of membuf, a small ioctl
(FIOC_GET_SIZE, 8 bytes copied out), open+close of membuf, and a pread of hello
(whose read also writes a dmesg line).  Beside them, in the same process and the
same loop, two floors: the same 4 KiB sliced out of a bytearray by a plain Python
function (what the interpreter costs for one call that copies the bytes), and
os.pread of 4 KiB of a tmpfs file (one real system call).  Figures are operations
per second of the process's CPU time (time.process_time: a spell descheduled on a
shared machine does not count), the median of the rounds, and ratios to the floors,
since the machine's speed varies.

Each round is one fresh process per tree; with --against the trees alternate round
by round (A B, B A, ...), so a slow spell of a shared machine falls on both, and the
table says this tree / the other per operation, as measured and with each tree's
figure taken relative to its own os.pread floor (steadier when the machine's speed
moves between rounds).  The other tree is a checkout of
pykld (e.g. `git archive main | tar -x -C /tmp/main`); its src/ and examples/ are
the ones measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

# label -> what the child measures; the floors come last
OPERATIONS = ("pread 4 KiB", "pwrite 4 KiB", "ioctl FIOC_GET_SIZE", "open+close", "hello pread")
FLOORS = ("floor: bytes(bytearray[0:4096]) in a function", "floor: os.pread 4 KiB of tmpfs")


def _rate(stmt: str, names: dict[str, Any], seconds: float) -> float:
    """Runs of `stmt` a second of CPU time, over about `seconds`: timeit's plain loop
    (`for _ in range(n): stmt`, nothing else per call), batches after a warm-up."""
    timer = timeit.Timer(stmt, timer=time.process_time, globals=names)
    timer.timeit(2000)
    batch = 2000
    calls = 0
    spent = 0.0
    while spent < seconds:
        spent += timer.timeit(batch)
        calls += batch
    return calls / spent


def child(tree: Path, seconds: float) -> dict[str, float]:
    """One round in this process: every operation and floor once, on `tree`'s pykld."""
    sys.path.insert(0, str(tree / "src"))
    import pykld
    from pykld.kernel.kernel import Kernel

    assert Path(pykld.__file__).resolve().is_relative_to(tree.resolve()), pykld.__file__
    kernel = Kernel()
    kernel.kldload(str(tree / "examples" / "membuf.py"))
    kernel.kldload(str(tree / "examples" / "hello.py"))
    membuf = kernel.open("/dev/membuf", os.O_RDWR)
    membuf.pwrite(bytes(1 << 20), 0)
    hello = kernel.open("/dev/rustmodule", os.O_RDONLY)
    sys.path.insert(0, str(tree / "examples"))
    from membuf import FIOC_GET_SIZE  # type: ignore[import-not-found]

    def open_close(path: str, flags: int) -> None:
        kernel.open(path, flags).close()

    source = bytearray(1 << 20)

    def sliced(size: int, offset: int) -> bytes:
        return bytes(source[offset : offset + size])

    results: dict[str, float] = {}
    with tempfile.NamedTemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        tmp.write(bytes(1 << 20))
        tmp.flush()
        names = {"membuf": membuf, "hello": hello, "open_close": open_close, "sliced": sliced, "os": os,
                 "FIOC_GET_SIZE": FIOC_GET_SIZE, "page": bytes(4096), "arg": bytes(8), "fd": tmp.fileno(),
                 "O_RDWR": os.O_RDWR}
        cases = {
            "pread 4 KiB": "membuf.pread(4096, 0)",
            "pwrite 4 KiB": "membuf.pwrite(page, 0)",
            "ioctl FIOC_GET_SIZE": "membuf.ioctl(FIOC_GET_SIZE, arg)",
            "open+close": 'open_close("/dev/membuf", O_RDWR)',
            "hello pread": "hello.pread(4096, 0)",
            FLOORS[0]: "sliced(4096, 0)",
            FLOORS[1]: "os.pread(fd, 4096, 0)",
        }
        for label, stmt in cases.items():
            results[label] = _rate(stmt, names, seconds)
    membuf.close()
    hello.close()
    kernel.shutdown()
    return results


def run_round(tree: Path, seconds: float) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", str(tree), "--seconds", str(seconds)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per tree; the median counts")
    parser.add_argument("--seconds", type=float, default=0.25, help="seconds per operation and round")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the pykld checkout to measure")
    parser.add_argument("--against", type=Path, help="another pykld checkout, measured alternately")
    parser.add_argument("--json", action="store_true", help="print the samples as JSON too")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.seconds)))
        return 0

    trees = [args.tree] + ([args.against] if args.against is not None else [])
    samples: dict[Path, list[dict[str, float]]] = {tree: [] for tree in trees}
    for index in range(args.rounds):
        for tree in trees if index % 2 == 0 else trees[::-1]:
            samples[tree].append(run_round(tree, args.seconds))
    medians = {tree: {label: statistics.median(s[label] for s in samples[tree]) for label in samples[tree][0]}
               for tree in trees}

    mine = medians[args.tree]
    header = f"{'operation':<48} {'ops/s':>10} {'/floor1':>8} {'/floor2':>8}"
    if args.against is not None:
        header += f" {'other ops/s':>12} {'this/other':>10} {'same, /floor2':>13}"
    print(f"pykld in process (sim), median of {args.rounds} rounds x {args.seconds:g} s; Python "
          f"{sys.version.split()[0]}; load average {os.getloadavg()[0]:.2f}")
    print(f"  this tree: {args.tree}" + (f"\n  other:     {args.against}" if args.against else ""))
    print(header)
    for label in (*OPERATIONS, *FLOORS):
        rate = mine[label]
        line = f"{label:<48} {rate:>10,.0f} {rate / mine[FLOORS[0]]:>8.3f} {rate / mine[FLOORS[1]]:>8.3f}"
        if args.against is not None:
            other = medians[args.against][label]
            # the same ratio, each tree's figure taken relative to its own os.pread floor
            floored = (rate / mine[FLOORS[1]]) / (other / medians[args.against][FLOORS[1]])
            line += f" {other:>12,.0f} {rate / other:>10.2f} {floored:>13.2f}"
        print(line)
    if args.json:
        print(json.dumps({str(tree): samples[tree] for tree in trees}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
