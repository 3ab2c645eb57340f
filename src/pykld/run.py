"""`pykld run`: load a module, publish its devices, serve until SIGINT/SIGTERM.

Without a choice, the transport is the best this machine has: cuse (true
character devices), then fuse (files in a FUSE devfs, bound at /dev/NAME as
root), then sim (in process only).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
from typing import Protocol

from pykld.kernel.kernel import Kernel
from pykld.transport.cuse import CuseTransport, cuse_available
from pykld.transport.fuse import DEFAULT_DEV_DIR, FuseTransport
from pykld.transport.sim import SimTransport

TRANSPORTS = ("cuse", "fuse", "sim")


class Transport(Protocol):
    name: str

    def start(self) -> None: ...

    def settle(self) -> None: ...

    def stop(self) -> None: ...

    def device_path(self, cdev_name: str) -> str: ...


def _usable(path: str) -> bool:
    return os.path.exists(path) and os.access(path, os.R_OK | os.W_OK)


def available() -> list[str]:
    """The transports this machine can run, best first."""
    found = []
    if os.geteuid() == 0 and cuse_available():
        found.append("cuse")
    if _usable("/dev/fuse"):
        found.append("fuse")
    found.append("sim")
    return found


def pick(wanted: str | None) -> str:
    """The transport asked for, else the best available; ENODEV when it is not here."""
    choice = wanted or available()[0]
    if choice not in available():
        raise OSError(errno.ENODEV, f"transport {choice} is not available here", None)
    return choice


def make_transport(kernel: Kernel, name: str, dev_dir: str | None, bind: bool) -> Transport:
    if name == "fuse":
        return FuseTransport(kernel, dev_dir or DEFAULT_DEV_DIR, bind)
    if name == "cuse":
        return CuseTransport(kernel)
    return SimTransport()


def _demo_shell(path: str) -> None:
    """The seed's round trip, by real programs on the published device."""
    script = f'echo "hi rust" > {path}; cat {path}'
    print(f"$ {script.replace('; ', chr(10) + '$ ')}", flush=True)
    subprocess.run(["sh", "-c", script], check=False)


def _demo_sim(kernel: Kernel, path: str) -> None:
    with kernel.open(path, os.O_WRONLY) as f:
        f.write(b"hi rust\n")
    with kernel.open(path) as f:
        print(f"pykld: (sim, in process) wrote 'hi rust' to /dev/{path}, read back: "
              f"{f.read().decode(errors='replace')}", end="")


def run(module: str, transport: str | None = None, dev_dir: str | None = None, bind: bool = True,
        demo: bool = False) -> int:
    choice = pick(transport)
    stop = threading.Event()
    # From here to the end, SIGINT and SIGTERM only ask to stop: a second one
    # during the clean-up must not kill the process halfway through unmounting.
    previous = {s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    kernel = Kernel()
    published = make_transport(kernel, choice, dev_dir, bind)
    in_process = published.name == "sim"
    try:
        published.start()
        kernel.kldload(module)
        record = kernel.kldstat()[-1]
        published.settle()
        paths = [published.device_path(n) for n in record.devices]
        print(f"pykld: transport {choice}{'' if transport else ' (picked: best available)'}; "
              f"module {record.name} loaded", flush=True)
        for path in paths:
            print(f"pykld: device {path}", flush=True)
        if paths and not in_process:
            print(f"pykld: try: echo \"hi rust\" > {paths[0]}; cat {paths[0]}", flush=True)
        if demo and paths:
            (_demo_sim(kernel, record.devices[0]) if in_process else _demo_shell(paths[0]))
        if in_process:
            print("pykld: the sim transport serves this process only; nothing to wait for", flush=True)
            return 0
        print("pykld: serving; Ctrl-C (SIGINT) or SIGTERM to unload and exit", flush=True)
        while not stop.wait(3600):
            pass
        return 0
    finally:
        kernel.shutdown()
        published.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
