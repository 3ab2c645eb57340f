"""The programs pykld starts, and what their absence or failure means.

A program that is not installed is a fact about the machine, not a crash:
`missing()` says so in one line with the Debian package that provides it.
`run()` turns every failure into an OSError that names the program and quotes
what it said, so no exit status is ever ignored and no FileNotFoundError
escapes as a traceback.  Programs are looked up on PATH only, as a shell would.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from collections.abc import Mapping, Sequence

#: The Debian package each program comes from, for the message when it is missing.
PACKAGES = {
    "modprobe": "kmod",
    "fusermount3": "fuse3",
    "sh": "dash",
    "cat": "coreutils",
}


def find(name: str) -> str | None:
    """The program's path on PATH, or None."""
    return shutil.which(name)


def missing(name: str) -> str:
    """One line saying that `name` is not here, and what would provide it."""
    package = PACKAGES.get(name)
    return f"{name} is not installed (not on PATH)" + (f"; Debian package {package}" if package else "")


def run(argv: Sequence[str], env: Mapping[str, str] | None = None, pass_fds: Sequence[int] = ()) -> str:
    """Run a program to completion; its standard output on success.

    OSError(ENOENT) when it is not installed, OSError(EIO) (or the errno its
    message maps to) with its last line of stderr when it fails."""
    path = find(argv[0])
    if path is None:
        raise OSError(errno.ENOENT, missing(argv[0]), None)
    try:
        done = subprocess.run([path, *argv[1:]], env=env, pass_fds=pass_fds, capture_output=True, text=True,
                              check=False, stdin=subprocess.DEVNULL)
    except OSError as exc:  # found but not runnable (permissions, a broken interpreter line)
        raise OSError(exc.errno or errno.EIO, f"{argv[0]}: {exc.strerror}", None) from None
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        detail = said[-1] if said else "no message"
        raise OSError(errno.EIO, f"{' '.join(argv)} failed (exit status {done.returncode}): {detail}", None)
    return done.stdout
