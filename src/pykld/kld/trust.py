"""Whose code the daemon runs: sshd's StrictModes rule for module files.

Loading a module runs its code as the daemon's user (root, for the system
daemon).  So a module file must be one that only that user or root could have
written: the file, and every directory above it up to /, owned by root or the
daemon's user and writable by no one else.  A directory writable by others is
accepted only with its sticky bit (/tmp): there nobody may rename or replace an
entry they do not own, and the entry below it is checked in turn.  Symbolic
links are resolved first and the real path is checked, and loaded.
"""

from __future__ import annotations

import errno
import os
import stat


def trusted_module_file(path: str) -> str:
    """The real path of module file `path`, once it passes the rule; OSError(EPERM) saying
    which file or directory fails it, and why, otherwise."""
    real = os.path.realpath(path)
    owner = os.geteuid()
    current = real
    while True:
        why = _untrusted(current, os.stat(current), owner)
        if why is not None:
            raise OSError(errno.EPERM, f"refusing to load {real}: {why}; a module file and every directory "
                          f"above it must be owned by root or uid {owner} (the daemon's user) and writable "
                          "by no one else (as sshd's StrictModes)", None)
        parent = os.path.dirname(current)
        if parent == current:
            return real
        current = parent


def _untrusted(path: str, st: os.stat_result, owner: int) -> str | None:
    if st.st_uid not in (0, owner):
        return f"{path} is owned by uid {st.st_uid}"
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        who = "everyone" if st.st_mode & stat.S_IWOTH else f"group {st.st_gid}"
        return f"{path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None
