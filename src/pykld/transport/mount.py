"""Mounting a FUSE filesystem and bind-mounting its files at /dev, and cleaning up after a crash.

As root, mount(2) on a /dev/fuse descriptor; otherwise fusermount3, which
passes the descriptor back over a socket (_FUSE_COMMFD), as libfuse does.
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import errno
import os
import socket
from collections.abc import Sequence
from typing import NamedTuple

from pykld.transport import programs

MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8
FSTYPE = "fuse.pykld"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", None)


def sys_mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), data.encode() if data else None), f"mount {target}")


def sys_umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


class MountEntry(NamedTuple):
    mount_point: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal
    return field.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")


def mounts() -> list[MountEntry]:
    entries = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 2:
                entries.append(MountEntry(_unescape(fields[4]), tail[0], _unescape(tail[1])))
    return entries


def is_dead(path: str) -> bool:
    """A FUSE mount whose server is gone answers ENOTCONN.  statfs always asks the
    server, where stat may be answered from the attribute cache."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def mount_fuse(mount_point: str, options: str, fsname: str = "pykld") -> int:
    """Mount a FUSE filesystem at `mount_point`; returns the channel descriptor."""
    if os.geteuid() == 0:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        st = os.stat(mount_point)
        data = f"fd={fd},rootmode={st.st_mode & 0o170000:o},user_id=0,group_id=0,{options}"
        try:
            sys_mount(fsname, mount_point, FSTYPE, MS_NOSUID | MS_NODEV, data)
        except OSError:
            os.close(fd)
            raise
        return fd
    return _fusermount(mount_point, options, fsname)


def _fusermount(mount_point: str, options: str, fsname: str) -> int:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        try:
            programs.run(["fusermount3", "-o", f"{options},fsname={fsname},subtype=pykld", "--", mount_point],
                         env=env, pass_fds=(theirs.fileno(),))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot mount {mount_point}: {exc.strerror}", None) from None
        fds = array.array("i")
        _, ancdata, _, _ = ours.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: fds.itemsize])
        if not fds:
            raise OSError(errno.EIO, "fusermount3 passed no descriptor", None)
        return fds[0]


def unmount_fuse(mount_point: str) -> None:
    """Detach the FUSE mount; an OSError that says why when that fails.

    As another user this is fusermount3 -u, which checks the mount's owner in
    /etc/mtab: without that file (or with one that lists nothing) it refuses,
    and the mount stays until root unmounts it."""
    if os.geteuid() == 0:
        sys_umount(mount_point, MNT_DETACH)
    else:
        programs.run(["fusermount3", "-u", "-z", "--", mount_point])


def allow_other_permitted() -> bool:
    """allow_other needs root, or user_allow_other in /etc/fuse.conf."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/etc/fuse.conf") as conf:
            return any(line.strip() == "user_allow_other" for line in conf)
    except OSError:
        return False


def bind_file(source: str, target: str) -> list[str]:
    """Bind-mount the file `source` at `target`, creating the placeholder file and
    missing directories.  Returns the directories it created (to remove later).
    Refuses to cover anything that is already there, and to pass through a
    symbolic link: the path is walked one directory descriptor at a time
    (O_NOFOLLOW) and the mount goes onto the placeholder's own descriptor, so a
    link swapped in meanwhile cannot carry the bind outside /dev."""
    created: list[str] = []
    *directories, name = target.lstrip("/").split("/")
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        walked = ""
        for part in directories:
            walked += "/" + part
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                created.append(walked)
            except FileExistsError:
                pass
            try:
                child = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OSError(exc.errno, f"{walked} is a symbolic link or not a directory; "
                                  f"not binding {target} through it", None) from None
                raise
            os.close(fd)
            fd = child
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=fd))
        except FileExistsError:
            raise OSError(errno.EEXIST, f"{target} already exists; not covering it", None) from None
        placeholder = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            sys_mount(source, f"/proc/self/fd/{placeholder}", None, MS_BIND, None)
        except OSError as exc:
            os.unlink(name, dir_fd=fd)
            raise OSError(exc.errno, f"mount {target}: {exc.strerror}", None) from None
        finally:
            os.close(placeholder)
    except BaseException:
        for directory in reversed(created):
            try:
                os.rmdir(directory)
            except OSError:
                break
        raise
    finally:
        os.close(fd)
    return created


def unbind_file(target: str, created_dirs: Sequence[str] = ()) -> None:
    try:
        sys_umount(target, MNT_DETACH | UMOUNT_NOFOLLOW)
    except OSError:
        pass
    try:
        os.unlink(target)
    except OSError:
        pass
    for directory in reversed(created_dirs):
        try:
            os.rmdir(directory)
        except OSError:
            break


def clear_stale(mount_point: str, dev_root: str = "/dev") -> list[tuple[str, str | None]]:
    """Remove what a killed pykld left: its dead FUSE mount at `mount_point` and
    dead bind mounts under `dev_root`.  A live pykld's mounts are left alone.
    Returns (path, None) for each one cleared and (path, why) for each that
    could not be."""
    results: list[tuple[str, str | None]] = []
    for entry in reversed(mounts()):
        if entry.fstype != FSTYPE:
            continue
        here = entry.mount_point
        if (here == mount_point or here.startswith(dev_root + "/")) and is_dead(here):
            try:
                sys_umount(here, MNT_DETACH) if os.geteuid() == 0 else unmount_fuse(here)
            except OSError as exc:
                results.append((here, exc.strerror or str(exc)))
                continue
            if here != mount_point:
                try:
                    if os.path.isfile(here) and os.path.getsize(here) == 0:
                        os.unlink(here)
                except OSError:
                    pass
            results.append((here, None))
    return results
