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

The kernel check.  Under the VM's Linux 6.1 (qemu TCG), the copy-out of an unrestricted ioctl
(FIOC_READ's bytes into the caller's buffer) leaves many of those bytes as the buffer had them before
the call, though the reply carried the right ones; libfuse's own cuse.c example loses exactly as many
as pykld on the same seeded one-client workload, so the loss is the kernel's (or the emulator's).
So the membuf load is measured three ways: the bytes FIOC_READ gave the clients (pykld, and
libfuse's cuse.c under the same load, side by side), the device's contents read back at the end
with read(2) (no ioctl copy-out: this is what pykld kept, and must be exact), and the one-client
check, where the two daemons must lose the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import (
    LIBFUSE_EXAMPLES,
    ROOT,
    StderrLog,
    apt_need,
    copy_libfuse_examples,
    fuse3_build_flags,
    gcc,
    have_fuse3_toolchain,
)

VM_RUN = ROOT / "tools" / "vm-run"
BOOT_ALLOWANCE = 120  # seconds for the guest to boot on a busy host, on top of the load's own budget
VM_RUN_COULD_NOT_BOOT = 125  # vm-run's status when the VM failed to boot or to modprobe cuse


CHECK_OPS = 100  # operations of the kernel check's one client
PEER_NAME = "membuf-peer"  # the node libfuse's cuse.c example publishes in the check


def build_peer(workdir: Path, log: Any) -> Path | None:
    """libfuse's cuse.c example, built into `workdir` (under /tmp, which the VM shares); None without
    a toolchain to build it (the check then has no oracle, and says so)."""
    try:
        if not (have_fuse3_toolchain() and (LIBFUSE_EXAMPLES / "cuse.c").exists()):
            apt_need("libfuse3-dev", "pkg-config", "gcc")
        copy_libfuse_examples(workdir, ("cuse.c", "ioctl.h"), log)
        gcc(workdir / "cuse_example", str(workdir / "cuse.c"), *fuse3_build_flags())
    except (OSError, subprocess.SubprocessError, SystemExit) as exc:
        log(f"cuse-load: no libfuse cuse.c for the kernel check: {exc}")
        return None
    return workdir / "cuse_example"


def run(processes: int, ops: int, membuf_ops: int, log: Any, budget: float = 180) -> dict[str, Any]:
    """The load in the VM; `budget` seconds for the load itself, the boot on top."""
    if not VM_RUN.exists():
        return {"not_run": f"{VM_RUN} missing"}
    with tempfile.TemporaryDirectory(prefix="pykld-stress-cuse-", dir="/tmp") as scratch:
        out = Path(scratch) / "figures.json"
        peer = build_peer(Path(scratch), log)
        timeout = int(budget + BOOT_ALLOWANCE)
        argv = [str(VM_RUN), "--timeout", str(timeout), "--", sys.executable, str(Path(__file__).resolve()),
                "--inside", "--processes", str(processes), "--ops", str(ops), "--membuf-ops", str(membuf_ops),
                "--out", str(out), *(["--peer", str(peer)] if peer else [])]
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


def wrong_bytes_one_client(path: str, ops: int) -> int:
    """stress_load's seeded membuf workload from one client, reading into fresh buffers."""
    import stress_load

    rng = random.Random(500)
    mine = bytearray(stress_load.REGION)
    fd = os.open(path, os.O_RDWR)
    try:
        stress_load.pwrite_at(fd, bytes(stress_load.REGION), 0, "cuse")
        wrong = 0
        for _ in range(ops):
            offset = rng.randrange(stress_load.REGION)
            size = rng.randint(1, min(8192, stress_load.REGION - offset))
            if rng.random() < 0.5:
                data = rng.randbytes(size)
                stress_load.pwrite_at(fd, data, offset, "cuse")
                mine[offset : offset + size] = data
            else:
                got = stress_load.pread_at(fd, size, offset, "cuse")
                wrong += sum(a != b for a, b in zip(got, mine[offset : offset + size], strict=False))
        return wrong
    finally:
        os.close(fd)


def kernel_check(peer: Path | None, log: Any) -> dict[str, Any]:
    """The same one-client workload with fresh read buffers against pykld's membuf and libfuse's cuse.c."""
    from stress_host import Host

    check: dict[str, Any] = {"ops": CHECK_OPS}
    host = Host(str(ROOT / "examples" / "membuf.py"), "stress-check", transport="cuse").start("membuf")
    try:
        check["pykld"] = wrong_bytes_one_client(host.path("membuf"), CHECK_OPS)
    finally:
        host.stop()
    if peer is not None:
        with peer_daemon(peer, log) as node:
            if node is not None:
                check["libfuse"] = wrong_bytes_one_client(node, CHECK_OPS)
    log(f"cuse-load: kernel check {check}")
    return check


@contextlib.contextmanager
def peer_daemon(peer: Path, log: Any) -> Iterator[str | None]:
    """libfuse's cuse.c serving a fresh buffer at /dev/membuf-peer (None if it does not come up)."""
    proc = subprocess.Popen([str(peer), "-f", f"--name={PEER_NAME}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    node = f"/dev/{PEER_NAME}"
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(node) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        if not os.path.exists(node):
            log(f"cuse-load: libfuse's cuse.c published no {node}")
        yield node if os.path.exists(node) else None
    finally:
        proc.terminate()
        proc.wait(10)


def inside(processes: int, ops: int, membuf_ops: int, out: Path, peer: Path | None) -> int:
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
    if peer is not None:
        with peer_daemon(peer, log) as node:
            if node is not None:
                figures["membuf_libfuse"] = stress_load.membuf_load(node, processes, membuf_ops, "cuse", False)
                log(f"membuf on libfuse's cuse.c: {figures['membuf_libfuse']}")
        out.write_text(json.dumps(figures, default=str))
    figures["kernel_check"] = kernel_check(peer, log)
    out.write_text(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inside", action="store_true", required=True, help="run the load here (in the VM)")
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--ops", type=int, required=True)
    parser.add_argument("--membuf-ops", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--peer", type=Path, help="libfuse's cuse.c example, for the kernel check")
    args = parser.parse_args()
    sys.exit(inside(args.processes, args.ops, args.membuf_ops, args.out, args.peer))
