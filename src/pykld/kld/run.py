"""`pykld run`: load a module, publish its devices, serve until SIGINT/SIGTERM.

Without a choice, the transport is the best this machine has (pykld.transport.
registry: cuse, then fuse, then sim), and the first line says which it picked
and why the better ones could not run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

from pykld.kernel.kernel import Kernel
from pykld.transport import programs, registry


def _demo_shell(path: str) -> None:
    """The seed's round trip, by real programs on the published device; where the
    shell or cat is not installed, the same system calls from here, and says so."""
    script = f'echo "hi rust" > {path}; cat {path}'
    print(f"$ {script.replace('; ', chr(10) + '$ ')}", flush=True)
    absent = [name for name in ("sh", "cat") if programs.find(name) is None]
    if not absent:
        subprocess.run(["sh", "-c", script], check=False)
        return
    print(f"pykld: {'; '.join(programs.missing(n) for n in absent)}: doing the same open/write/read "
          "from pykld itself", flush=True)
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, b"hi rust\n")
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        print(os.read(fd, 65536).decode(errors="replace"), end="", flush=True)
    finally:
        os.close(fd)


def _demo_sim(kernel: Kernel, path: str) -> None:
    with kernel.open(path, os.O_WRONLY) as f:
        f.write(b"hi rust\n")
    with kernel.open(path) as f:
        print(f"pykld: (sim, in process) wrote 'hi rust' to /dev/{path}, read back: "
              f"{f.read().decode(errors='replace')}", end="")


def _echo_console(kernel: Kernel, finished: threading.Event) -> None:
    """A FreeBSD console: every line of the message buffer on stderr, as it is written,
    up to the last one the unload printed."""
    seq = 0
    while True:
        last = finished.is_set()
        seq, lines = kernel.msgbuf.since(seq, timeout=0.5)
        for line in lines:
            print(line.format(kernel.msgbuf.boot), file=sys.stderr, flush=True)
        if last:
            return


def run(module: str | type, transport: str | None = None, dev_dir: str | None = None, bind: bool = True,
        demo: bool = False, outcome: Callable[[Kernel], int] | None = None, console: bool = False) -> int:
    """Serve `module` (a file, or a Module class) until SIGINT/SIGTERM; the exit status
    is 0, or what `outcome` makes of the kernel before it shuts down.  `console` echoes
    the message buffer on stderr."""
    choice = registry.pick(transport)
    stop = threading.Event()
    # From here to the end, SIGINT and SIGTERM only ask to stop: a second one
    # during the clean-up must not kill the process halfway through unmounting.
    previous = {s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    kernel = Kernel()
    finished = threading.Event()
    echo = threading.Thread(target=_echo_console, args=(kernel, finished), name="pykld-console", daemon=True)
    if console:
        echo.start()
    published = registry.make_transport(kernel, choice.name, dev_dir, bind)
    in_process = published.name == "sim"  # until a device of the module is a pty (below)
    try:
        published.start()
        kernel.kldload(module)
        record = kernel.kldstat()[-1]
        published.settle()
        paths = [published.device_path(n) for n in record.devices]
        in_process = in_process and all(published.transport_of(kernel.lookup(n)) == "sim" for n in record.devices)
        print(f"pykld: transport {choice.name} ({choice.how}); module {record.name} loaded", flush=True)
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
        return outcome(kernel) if outcome is not None else 0
    finally:
        kernel.shutdown()
        published.stop()
        finished.set()
        if echo.is_alive():
            echo.join(2)  # what the unload printed is on the console before the process ends
        for signum, handler in previous.items():
            signal.signal(signum, handler)
