"""Load over CUSE: stress_load's checksummed fifo and membuf load, run inside the VM of tools/vm-run
(the host kernel has no CUSE), with fewer clients and operations (the VM is emulated).

On the host, run() boots the VM with this file as its command (`--inside`); in the guest, that runs
stress_load.run(..., transport="cuse") as root and writes its figures as JSON into a file under /tmp
(shared with the host).  When the VM cannot boot, or this host has no tools/vm-run, the section
returns why ("not_run") instead of figures: the table shows it, and PYKLD_REQUIRE_CUSE=1 makes it a
failure, as it makes the CUSE tests' skips failures.  A VM that booted but whose load did not finish
(a timeout: a hang) returns "failed", always a failure.

membuf gets fewer operations than fifo: over CUSE each of its operations is an unrestricted ioctl
(FIOC_READ/FIOC_WRITE, see stress_load), several round trips to the host each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, StderrLog

VM_RUN = ROOT / "tools" / "vm-run"
BOOT_ALLOWANCE = 120  # seconds for the guest to boot on a busy host, on top of the load's own budget
VM_RUN_COULD_NOT_BOOT = 125  # vm-run's status when the VM failed to boot or to modprobe cuse


def run(processes: int, ops: int, membuf_ops: int, log: Any, budget: float = 180) -> dict[str, Any]:
    """The load in the VM; `budget` seconds for the load itself, the boot on top."""
    if not VM_RUN.exists():
        return {"not_run": f"{VM_RUN} missing"}
    with tempfile.TemporaryDirectory(prefix="pykld-stress-cuse-", dir="/tmp") as scratch:
        out = Path(scratch) / "figures.json"
        timeout = int(budget + BOOT_ALLOWANCE)
        argv = [str(VM_RUN), "--timeout", str(timeout), "--", sys.executable, str(Path(__file__).resolve()),
                "--inside", "--processes", str(processes), "--ops", str(ops), "--membuf-ops", str(membuf_ops),
                "--out", str(out)]
        log(f"cuse-load: booting the VM (timeout {timeout} s) for {processes} processes x {ops:,} / {membuf_ops:,} ops")
        started = time.monotonic()
        try:
            proc = subprocess.run(argv, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout + 60, check=False)
        except subprocess.TimeoutExpired:
            return {"failed": f"vm-run outlived its own {timeout} s timeout"}
        seconds = round(time.monotonic() - started, 1)
        for line in proc.stderr.splitlines()[-40:]:
            log(f"cuse-load (vm): {line}")
        figures: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
        if proc.returncode != 0 or "membuf" not in figures:
            last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "")
            if proc.returncode == VM_RUN_COULD_NOT_BOOT and not figures:
                return {"not_run": f"the VM did not boot (or had no CUSE): {last}"[:300]}
            why = f"timed out after {timeout} s" if proc.returncode == 124 else f"vm-run exited with {proc.returncode}"
            return {"failed": f"{why}, finished: {', '.join(figures) or 'nothing'}; {last}"[:300], **figures}
        figures["vm_seconds"] = seconds  # boot included
        return figures


def inside(processes: int, ops: int, membuf_ops: int, out: Path) -> int:
    import stress_load

    if os.geteuid() != 0 or not os.path.exists("/dev/cuse"):
        print("stress_cuse --inside needs root and /dev/cuse (the VM of tools/vm-run)", file=sys.stderr)
        return 2
    log = StderrLog("cuse-load")
    figures: dict[str, Any] = {"kernel": os.uname().release}
    figures["fifo"] = stress_load.run_fifo(processes, ops, log, transport="cuse")
    out.write_text(json.dumps(figures, default=str))  # what finished, should the VM be stopped before the rest
    figures["membuf"] = stress_load.run_membuf(processes, membuf_ops, log, transport="cuse")
    out.write_text(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inside", action="store_true", required=True, help="run the load here (in the VM)")
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--ops", type=int, required=True)
    parser.add_argument("--membuf-ops", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sys.exit(inside(args.processes, args.ops, args.membuf_ops, args.out))
