"""Security: device names that try to leave the devfs or /dev, a symlink swapped in on the bind-mount
target, a non-root user against a 0600 device and against the control socket, module files someone
else could have written.  Each case is refused with an errno and a message, both recorded.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from stress_faults import Daemon
from stress_host import private_dir, unmount
from transport.conftest import private_and_public  # tests/ is on sys.path (bench/stress.py)

from pykld import Kernel
from pykld.transport.fuse import FuseTransport

AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
BAD_NAMES = ["..", "../escape", "a/../../escape", "/etc/escape", "/dev/escape", "", ".", "a//b", "a/./b",
             "nul\0byte", "x" * 5000]

NAMES = textwrap.dedent("""
    import errno
    from pykld import CharacterDevice, Module, make_dev
    TRIED = {}
    class Names(Module):
        name = "names"
        def load(self):
            for name in NAMES:
                try:
                    make_dev(CharacterDevice(), name, mode=0o666)
                    TRIED[name] = "created"
                except OSError as exc:
                    TRIED[name] = (errno.errorcode.get(exc.errno, str(exc.errno)), exc.strerror)
""")


def _errname(code: int | None) -> str:
    return errno.errorcode.get(code or 0, str(code))


def device_names(workdir: Path) -> list[dict[str, Any]]:
    module = workdir / "names.py"
    module.write_text(f"NAMES = {BAD_NAMES!r}\n" + NAMES)
    kernel = Kernel()
    try:
        kernel.kldload(str(module))
        tried = kernel.module("names").pymodule.TRIED
    finally:
        kernel.shutdown()
    rows = []
    for name in BAD_NAMES:
        outcome = tried[name]
        shown = name if len(name) < 40 else f"{name[:8]}... ({len(name)} characters)"
        rows.append({"case": f"make_dev({shown!r})", "refused": outcome != "created",
                     "errno": outcome[0] if outcome != "created" else None,
                     "message": outcome[1] if outcome != "created" else "created"})
    return rows


def symlink_race(workdir: Path, rounds: int) -> list[dict[str, Any]]:
    """Flip /dev/LINK between a directory and a symbolic link out of /dev while devices named LINK/x
    come and go: no bind may ever land outside /dev."""
    if os.geteuid() != 0:
        return [{"case": "symlink race on the bind target", "refused": None, "errno": None,
                 "message": "skipped: binds at /dev need root"}]
    link = f"/dev/pykld-stress-{uuid.uuid4().hex[:8]}"
    outside = tempfile.mkdtemp(prefix="pykld-outside-")
    module = workdir / "racer.py"
    module.write_text(textwrap.dedent(f"""
        from pykld import CharacterDevice, Module, make_dev
        class Racer(Module):
            name = "racer"
            def load(self):
                make_dev(CharacterDevice(), "{os.path.basename(link)}/x", mode=0o666)
    """))
    dev_dir = private_dir("stress-race-")
    kernel = Kernel()
    transport = FuseTransport(kernel, dev_dir, bind=True)
    transport.start()
    stop = threading.Event()
    escaped = 0

    def flip() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                os.symlink(outside, link)
            time.sleep(0.0005)
            with contextlib.suppress(OSError):
                os.unlink(link)

    flipper = threading.Thread(target=flip, daemon=True)
    try:
        flipper.start()
        for _ in range(rounds):
            kernel.kldload(str(module))
            transport.settle()
            escaped += bool(os.listdir(outside))
            kernel.kldunload("racer", force=True)
            transport.settle()
    finally:
        stop.set()
        flipper.join(5)
        kernel.shutdown()
        transport.stop()
        unmount(dev_dir)
        with contextlib.suppress(OSError):
            os.rmdir(dev_dir)
        with contextlib.suppress(OSError):
            os.unlink(link)
        if os.path.isdir(link):
            shutil.rmtree(link, ignore_errors=True)
        for name in os.listdir(outside):
            subprocess.run(["umount", "-l", os.path.join(outside, name)], capture_output=True, check=False)
        shutil.rmtree(outside, ignore_errors=True)
    refusals = [line.text for line in kernel.msgbuf.since(0)[1] if "not bound" in line.text]
    return [{"case": f"symlink race on /dev/NAME/x ({rounds} loads)", "refused": escaped == 0,
             # O_PATH|O_DIRECTORY|O_NOFOLLOW on a symbolic link fails with ENOTDIR
             "errno": "ENOTDIR" if refusals else None,
             "message": f"{escaped} binds outside /dev; {len(refusals)} refused: "
             + (refusals[0].split(": ", 1)[-1] if refusals else "")}]


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AS_NOBODY, *argv], capture_output=True, text=True, timeout=60, check=False)


def other_users(workdir: Path) -> list[dict[str, Any]]:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return [{"case": "another user", "refused": None, "errno": None, "message": "skipped: needs root and setpriv"}]
    rows = []
    module = workdir / "private.py"
    module.write_text(private_and_public())  # the transport tests' driver: a 0600 and a 0644 device
    module.chmod(0o644)
    dev_dir = private_dir("stress-perm-")
    kernel = Kernel()
    transport = FuseTransport(kernel, dev_dir, bind=False)
    transport.start()
    try:
        kernel.kldload(str(module))
        for name, mode in (("private", "0600"), ("public", "0644")):
            done = as_nobody("cat", os.path.join(dev_dir, name))
            rows.append({"case": f"user nobody reads a {mode} device", "refused": done.returncode != 0,
                         "errno": "EACCES" if "Permission denied" in done.stderr else None,
                         "message": done.stderr.strip() or done.stdout.strip()})
    finally:
        kernel.shutdown()
        transport.stop()
        with contextlib.suppress(OSError):
            os.rmdir(dev_dir)
    daemon = Daemon()
    try:
        daemon("daemon", "--transport", "sim")
        socket_path = os.path.join(daemon.run_dir, "control.sock")
        os.chmod(daemon.run_dir, 0o755)  # let nobody reach the socket itself: its own 0600 must stop them
        probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1])\n"
                 " print('connected')\nexcept OSError as e:\n print(e.strerror); sys.exit(1)")
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"  # the system one
        done = as_nobody(python, "-c", probe, socket_path)
        rows.append({"case": "user nobody connects to the control socket (0600)",
                     "refused": done.returncode != 0 and "Permission denied" in done.stdout,
                     "errno": "EACCES" if "Permission denied" in done.stdout else None,
                     "message": (done.stdout + done.stderr).strip()[:300]})
    finally:
        daemon.stop()
    return rows


def module_files(workdir: Path) -> list[dict[str, Any]]:
    """`pykld load` of module files that others could have written: the daemon must refuse them."""
    daemon = Daemon()
    rows = []
    try:
        daemon("daemon", "--transport", "sim")
        lax = workdir / "lax"
        lax.mkdir()
        source = "from pykld import Module\nclass Lax(Module):\n    name = 'lax'\n"
        cases = [("a world-writable module file", 0o700, 0o666, None),
                 ("a group-writable module file", 0o700, 0o664, None),
                 ("a module in a world-writable directory", 0o777, 0o644, None),
                 ("a module file owned by nobody", 0o700, 0o644, 65534)]
        for case, dir_mode, file_mode, owner in cases:
            path = lax / "lax.py"
            path.write_text(source)
            lax.chmod(dir_mode)
            path.chmod(file_mode)
            if owner is not None and os.geteuid() == 0:
                os.chown(path, owner, owner)
            done = daemon("load", str(path))
            lines = done.stderr.splitlines()
            rows.append({"case": f"pykld load of {case}", "refused": done.returncode != 0,
                         "errno": "EPERM" if lines and lines[0].endswith("Operation not permitted") else None,
                         "message": lines[1].removeprefix("pykld: ") if len(lines) > 1 else done.stderr.strip()})
            path.unlink()
        lax.chmod(0o700)
        (lax / "lax.py").write_text(source)
        done = daemon("load", str(lax / "lax.py"))
        rows.append({"case": "pykld load of a module only root can write (control)", "refused": done.returncode != 0,
                     "errno": None, "message": (done.stdout or done.stderr).strip()})
    finally:
        daemon.stop()
    return rows


def run(log: Any, race_rounds: int = 200) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="pykld-stress-sec-"))
    try:
        rows = device_names(workdir) + symlink_race(workdir, race_rounds) + other_users(workdir) + module_files(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for row in rows:
        log(f"security: {row}")
    return {"cases": rows}


