"""The host under stress: `pykld run MODULE --transport fuse` in a process of its own, on a private
devfs (or `--transport cuse`, its nodes in /dev, in the VM), and what the stress sections measure of
it (threads, fds, RSS).

Every host is stopped and its mount removed whatever happens (Host.stop, also from a finally).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, DaemonProcess, pykld_command

DEV_PARENT = Path("/run/pykld-stress")  # mount points other users can reach (for the security section)


def unmount(path: str) -> None:
    argv = ["umount", "-l", path] if os.geteuid() == 0 else ["fusermount3", "-u", "-z", path]
    subprocess.run(argv, capture_output=True, timeout=30, check=False)


def private_dir(prefix: str) -> str:
    DEV_PARENT.mkdir(mode=0o755, exist_ok=True)
    os.chmod(DEV_PARENT, 0o755)
    path = tempfile.mkdtemp(prefix=prefix, dir=DEV_PARENT)
    os.chmod(path, 0o755)
    return path


class Host:
    """One `pykld run` serving `module` over FUSE at its own dev dir, or over CUSE (nodes in /dev:
    CUSE has no dev dir of its own, so CUSE hosts must not share device names)."""

    def __init__(self, module: str, name: str, env: dict[str, str] | None = None, dev_dir: str | None = None,
                 transport: str = "fuse") -> None:
        self.module = module
        self.transport = transport
        if transport == "fuse":
            self.dev_dir = dev_dir or private_dir(f"{name}-")
            self.logfile = Path(self.dev_dir + ".log")
            where = ["--dev-dir", self.dev_dir, "--no-bind"]
        else:
            self.dev_dir = "/dev"
            self.logfile = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
            where = []
        self.daemon = DaemonProcess(name, [*pykld_command(), "run", module, "--transport", transport, *where],
                                    "pykld: serving", self.logfile, env=env or {})

    def path(self, device: str) -> str:
        return os.path.join(self.dev_dir, device)

    def start(self, device: str, timeout: float = 60) -> Host:
        self.daemon.spawn(own_session=True)
        self.daemon.wait_serving(lambda: os.path.exists(self.path(device)), timeout, f"{self.module} not serving")
        return self

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def kill(self) -> None:
        """SIGKILL: the host dies without a word, as a crash would end it."""
        if self.daemon.proc is not None and self.daemon.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.daemon.proc.wait(10)

    def stop(self, log: object = None) -> None:
        self.daemon.terminate(lambda text: None)
        if self.transport == "fuse":
            unmount(self.dev_dir)
            with contextlib.suppress(OSError):
                os.rmdir(self.dev_dir)
        with contextlib.suppress(OSError):
            self.logfile.unlink()

    def resources(self) -> dict[str, int]:
        return process_resources(self.pid)


def process_resources(pid: int) -> dict[str, int]:
    """Threads, open file descriptors and resident memory (KiB) of a process now."""
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    return {"threads": int(status["Threads"]), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "rss_kib": int(status["VmRSS"].split()[0])}


def gather(out: Any, count: int, timeout: float) -> list[Any]:
    """Up to `count` results from the clients' queue, waiting at most `timeout` seconds for each."""
    results: list[Any] = []
    with contextlib.suppress(queue.Empty):
        while len(results) < count:
            results.append(out.get(timeout=timeout))
    return results


def reap(procs: list[Any], timeout: float) -> int:
    """Join the client processes; those still alive after `timeout` seconds are hung: killed and counted."""
    for proc in procs:
        proc.join(timeout)
    hung = [proc for proc in procs if proc.is_alive()]
    for proc in hung:
        proc.kill()
    return len(hung)


def wait_until(predicate: object, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return bool(predicate())  # type: ignore[operator]


EXAMPLES = ROOT / "examples"
