"""What the FUSE benchmark needs beyond Debian's libfuse 3.14: libfuse 3.18.2 built from its tarball, the
kernel's FUSE-over-io_uring switch, and the facts that tell whether a contender serves the way it claims.

Used by membuf_bench.py (imported by name, like common.py).  Everything that can be missing here (the
tarball, meson, liburing, the kernel parameter, pykld's compiled loop) is a reason, a sentence the
benchmark prints in place of that contender's figures, never an exception that ends the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from common import OUT, ROOT

LIBFUSE_318 = "libfuse-3.18.2"
# The peers' sources sit in shared/ beside the repository (../shared from the main checkout and from CI's
# clone, ../../shared from a worktree under wt/); PYKLD_LIBFUSE_TARBALL overrides.
TARBALL_PLACES = [ROOT.parent / "shared" / "peers", ROOT.parent.parent / "shared" / "peers"]
URING_PARAMETER = Path("/sys/module/fuse/parameters/enable_uring")


class Unavailable(Exception):
    """A contender cannot run here; the message says why (shown as n/a in the tables)."""


# -- libfuse 3.18.2's fioc, built with meson and ninja ---------------------------------------------------


def libfuse_tarball() -> Path:
    named = os.environ.get("PYKLD_LIBFUSE_TARBALL")
    candidates = [Path(named)] if named else [place / f"{LIBFUSE_318}.tar.gz" for place in TARBALL_PLACES]
    for path in candidates:
        if path.is_file():
            return path
    raise Unavailable(f"no {LIBFUSE_318}.tar.gz (looked in {', '.join(str(p.parent) for p in candidates)}; "
                      "PYKLD_LIBFUSE_TARBALL names another)")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_fioc_318(log: Callable[[str], None], out: Path = OUT) -> tuple[Path, bool]:
    """libfuse 3.18.2's example/ioctl.c (fioc) and the libfuse it links (its RUNPATH is $ORIGIN/../lib,
    meson's own, so it never picks up Debian's 3.14), built in out/libfuse-3.18.2/ and reused while the
    tarball is the same; returns (the binary, whether this libfuse has io_uring support).
    Raises Unavailable with the reason when it cannot be built."""
    tarball = libfuse_tarball()
    for tool in ("meson", "ninja"):
        if not shutil.which(tool):
            raise Unavailable(f"{tool} missing (Debian packages meson, ninja-build)")
    home = out / LIBFUSE_318
    build = home / "build"
    fioc = build / "example" / "ioctl"
    stamp = home / "tarball.sha256"
    digest = sha256(tarball)
    if not (fioc.exists() and stamp.exists() and stamp.read_text().strip() == digest):
        log(f"building {LIBFUSE_318}'s fioc from {tarball} into {build}")
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(home, filter="data")
        source = home / LIBFUSE_318
        # Only the library and the examples: no fusermount3 (the benchmark mounts as root or through
        # Debian's), no tests; io_uring explicitly on (meson_options.txt), found if liburing and libnuma are.
        setup = ["meson", "setup", str(build), str(source), "-Dexamples=true", "-Dutils=false", "-Dtests=false",
                 "-Denable-io-uring=true", "-Duseroot=false"]
        for argv in (setup, ["ninja", "-C", str(build), "example/ioctl"]):
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise Unavailable(f"{' '.join(argv[:2])} failed: {(proc.stdout + proc.stderr).strip()[-800:]}")
        stamp.write_text(digest + "\n")
    config = (build / "fuse_config.h").read_text(errors="replace")
    return fioc, re.search(r"^#define HAVE_URING\b", config, re.M) is not None


# -- the kernel's switch for FUSE over io_uring -------------------------------------------------------------


def uring_parameter() -> str | None:
    """Y or N, or None when the kernel has no FUSE over io_uring."""
    try:
        return URING_PARAMETER.read_text().strip()
    except OSError:
        return None


@contextlib.contextmanager
def uring_enabled(log: Callable[[str], None]) -> Iterator[str | None]:
    """Yield None with fuse.enable_uring = Y for the duration, set by us if need be (as root) and put
    back to what it was on the way out, failures, Ctrl-C and SIGTERM included (the caller turns those
    into exceptions); or yield the reason it cannot be Y.  Said on stderr both ways: the switch is
    global, and every FUSE mount made meanwhile is offered the ring."""
    found = uring_parameter()
    if found is None:
        yield f"the kernel has no FUSE over io_uring ({URING_PARAMETER} missing)"
        return
    if found == "Y":
        yield None
        return
    if os.geteuid() != 0:
        yield f"{URING_PARAMETER} is {found}, and only root may set it"
        return
    try:
        URING_PARAMETER.write_text("Y\n")
    except OSError as exc:
        yield f"could not set {URING_PARAMETER}: {exc}"
        return
    log(f"set {URING_PARAMETER} to Y (it was {found}); it goes back to {found} when the run ends")
    try:
        yield None
    finally:
        try:
            URING_PARAMETER.write_text(f"{found}\n")
            log(f"put {URING_PARAMETER} back to {uring_parameter()}")
        except OSError as exc:
            log(f"could not put {URING_PARAMETER} back to {found}: {exc}; do: echo {found} > {URING_PARAMETER}")


# -- what a running daemon really does ---------------------------------------------------------------------


def compiled_loop_missing(python: str = sys.executable) -> str | None:
    """None when pykld's compiled request loop (the extension pykld._loop) imports in the interpreter the
    daemon runs; else why not (the exception's last line)."""
    proc = subprocess.run([python, "-c", "import pykld._loop"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return f"pykld._loop does not import ({lines[-1] if lines else f'exit {proc.returncode}'})"


def io_uring_instances(pid: int) -> int:
    """How many io_uring instances the process holds open (0 when it is gone): a daemon serving FUSE over
    the ring holds one per queue."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[io_uring]"
    return count


def read_calls(pid: int) -> int:
    """The process's read system calls so far (/proc/PID/io syscr, all threads): a classic FUSE daemon
    makes one per request it reads from /dev/fuse, a daemon served by the ring next to none."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("syscr:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def mapped_objects(pid: int, part: str) -> list[str]:
    """The files mapped into the process whose path contains `part` (e.g. the compiled loop's .so)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and part in fields[5]:
                found.add(fields[5])
    return sorted(found)
