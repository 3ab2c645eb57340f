"""Where a pykld daemon keeps its control socket, lock, log and FUSE devfs.

    root:      /run/pykld                    (systemd's RuntimeDirectory=pykld)
    others:    $XDG_RUNTIME_DIR/pykld, else /tmp/pykld-UID (as tmux does)
    override:  $PYKLD_RUN_DIR                (tests, or a second daemon)

Client and daemon compute the same directory from the same rules, so the
client finds the daemon of its own user unless told otherwise.
"""

from __future__ import annotations

import errno
import os
import stat

SYSTEM_RUN_DIR = "/run/pykld"


def run_dir() -> str:
    override = os.environ.get("PYKLD_RUN_DIR")
    if override:
        return os.path.abspath(override)
    if os.geteuid() == 0:
        return SYSTEM_RUN_DIR
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "pykld")
    return f"/tmp/pykld-{os.geteuid()}"


def socket_path(directory: str) -> str:
    return os.path.join(directory, "control.sock")


def lock_path(directory: str) -> str:
    """The pidfile; its flock is held for the daemon's lifetime and dies with it."""
    return os.path.join(directory, "daemon.pid")


def log_path(directory: str) -> str:
    return os.path.join(directory, "daemon.log")


def dev_dir(directory: str) -> str:
    """The FUSE devfs mount point."""
    return os.path.join(directory, "dev")


def ensure(directory: str) -> str:
    """Create the runtime directory, or check that the one there is safe to use.

    Root's is 0755 so that other users can reach FUSE device files under dev/
    (the socket itself is 0600).  Another user's directory is 0700.  A directory
    that someone else owns, or that others may write, could hold a planted
    socket or pidfile: refuse it."""
    mode = 0o755 if os.geteuid() == 0 else 0o700
    try:
        os.makedirs(directory, mode)
        os.chmod(directory, mode)  # mkdir's mode is filtered by the umask
    except FileExistsError:
        pass
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{directory} is not a directory", None)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(errno.EPERM, f"{directory} is not owned by uid {os.geteuid()} or is writable by others; "
                      "refusing to keep a control socket there", None)
    return directory
