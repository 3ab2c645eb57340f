"""Decoding of FUSE and CUSE requests: bytes in, :class:`Request` out.

``parse(buf, nbytes)`` takes one message as read from ``/dev/fuse`` or ``/dev/cuse`` (one
``read`` returns exactly one request) and returns a :class:`Request` whose ``args`` is an
op-specific NamedTuple (or ``None`` for ops without arguments and for opcodes we do not
know; the caller answers those with ENOSYS). READ and WRITE, most of a device's traffic,
also have fused decoders (``parse_read``/``parse_write``: one unpack, a plain tuple);
``decoder_for(opcode)`` says which decoder a request loop calls for each opcode.

Protocol minors: the kernel sizes some request structs after the negotiated minor. Pass
``minor=`` (default :data:`~pykld.fuse.abi.OUR_MINOR`) once INIT has been answered to get
the pre-7.9 READ/WRITE/GETATTR and pre-7.12 MKNOD/CREATE layouts right. INIT and CUSE_INIT
are decoded from whatever size the kernel sent. SETXATTR is decoded with the compat
(8-byte) ``fuse_setxattr_in``; FUSE_SETXATTR_EXT must not be negotiated.

Buffers: ``Write.data``, ``Ioctl.data`` and ``NotifyReply.data`` are memoryviews into
``buf``. They are valid only until the caller reuses the buffer for the next read; copy
(``bytes(data)``) what must outlive the request. Names are ``bytes`` copies without the
trailing NUL.

Errors: a message that cannot be decoded raises :class:`ProtocolError` with ``errno`` EIO
when the framing is wrong (header short or ``len`` not matching the bytes received) and
EINVAL when the body of an otherwise well-framed message is malformed (too short, name
without NUL, ...). ``unique`` is set whenever the header could be read so the caller can
answer the request with ``-errno`` instead of leaving the caller hanging.
"""

from __future__ import annotations

import errno as _errno
import struct
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

from pykld.fuse.abi import (
    FUSE_INIT_EXT,
    FUSE_KERNEL_VERSION,
    OUR_MINOR,
    Opcode,
)

__all__ = [
    "Access",
    "Args",
    "BatchForget",
    "Bmap",
    "CopyFileRange",
    "Create",
    "CuseInit",
    "Fallocate",
    "Flush",
    "Forget",
    "Fsync",
    "Getattr",
    "Getxattr",
    "Init",
    "Interrupt",
    "Ioctl",
    "Link",
    "Listxattr",
    "Lk",
    "Lookup",
    "Lseek",
    "Mkdir",
    "Mknod",
    "NotifyReply",
    "Open",
    "Poll",
    "ProtocolError",
    "Read",
    "Release",
    "Removexattr",
    "Rename",
    "Request",
    "Rmdir",
    "Setattr",
    "Setxattr",
    "Symlink",
    "Unlink",
    "Write",
    "HEADER_AND_IO",
    "ReadIo",
    "WriteIo",
    "decoder_for",
    "negotiate_minor",
    "parse",
    "parse_read",
    "parse_write",
]


class ProtocolError(Exception):
    """A request that cannot be decoded.

    ``unique`` is the request's id when its header was readable (reply ``-errno`` to it),
    ``None`` otherwise (nothing to answer; the message is lost).
    """

    def __init__(self, message: str, unique: int | None = None, errno: int = _errno.EIO) -> None:
        super().__init__(message)
        self.unique = unique
        self.errno = errno


# --------------------------------------------------------------------------- argument types


class Init(NamedTuple):
    """FUSE_INIT. ``flags`` includes flags2 shifted left by 32 when the kernel sent it."""

    major: int
    minor: int
    max_readahead: int
    flags: int


class CuseInit(NamedTuple):
    major: int
    minor: int
    flags: int


class Lookup(NamedTuple):
    name: bytes


class Forget(NamedTuple):
    nlookup: int


class BatchForget(NamedTuple):
    items: list[tuple[int, int]]  # (nodeid, nlookup)


class Getattr(NamedTuple):
    flags: int  # FUSE_GETATTR_FH: fh is valid
    fh: int


class Setattr(NamedTuple):
    """FUSE_SETATTR. Times are int nanoseconds since the epoch; see ``valid`` (FATTR_*)."""

    valid: int
    fh: int
    size: int
    mode: int
    uid: int
    gid: int
    atime: int
    mtime: int
    ctime: int
    lock_owner: int


class Open(NamedTuple):
    """FUSE_OPEN and FUSE_OPENDIR. ``flags`` are the open(2) flags."""

    flags: int
    open_flags: int  # FUSE_OPEN_KILL_SUIDGID


class Create(NamedTuple):
    """FUSE_CREATE and FUSE_TMPFILE."""

    name: bytes
    flags: int
    mode: int
    umask: int
    open_flags: int


class Mknod(NamedTuple):
    name: bytes
    mode: int
    rdev: int
    umask: int


class Mkdir(NamedTuple):
    name: bytes
    mode: int
    umask: int


class Unlink(NamedTuple):
    name: bytes


class Rmdir(NamedTuple):
    name: bytes


class Symlink(NamedTuple):
    name: bytes
    target: bytes


class Rename(NamedTuple):
    """FUSE_RENAME and FUSE_RENAME2 (``flags`` is 0 for RENAME)."""

    newdir: int
    name: bytes
    newname: bytes
    flags: int


class Link(NamedTuple):
    oldnodeid: int
    name: bytes


class Read(NamedTuple):
    """FUSE_READ, FUSE_READDIR, FUSE_READDIRPLUS."""

    fh: int
    offset: int
    size: int
    read_flags: int
    lock_owner: int
    flags: int


class Write(NamedTuple):
    """FUSE_WRITE. ``data`` is a view into the request buffer (``len(data) == size``)."""

    fh: int
    offset: int
    size: int
    write_flags: int
    lock_owner: int
    flags: int
    data: memoryview


class Release(NamedTuple):
    """FUSE_RELEASE and FUSE_RELEASEDIR."""

    fh: int
    flags: int
    release_flags: int
    lock_owner: int


class Flush(NamedTuple):
    fh: int
    lock_owner: int


class Fsync(NamedTuple):
    """FUSE_FSYNC and FUSE_FSYNCDIR."""

    fh: int
    fsync_flags: int


class Setxattr(NamedTuple):
    name: bytes
    value: bytes
    flags: int


class Getxattr(NamedTuple):
    name: bytes
    size: int


class Listxattr(NamedTuple):
    size: int


class Removexattr(NamedTuple):
    name: bytes


class Lk(NamedTuple):
    """FUSE_GETLK, FUSE_SETLK, FUSE_SETLKW."""

    fh: int
    owner: int
    start: int
    end: int
    type: int
    pid: int
    lk_flags: int


class Access(NamedTuple):
    mask: int


class Interrupt(NamedTuple):
    unique: int  # of the request to interrupt


class Bmap(NamedTuple):
    block: int
    blocksize: int


class Ioctl(NamedTuple):
    """FUSE_IOCTL. ``data`` (``in_size`` bytes) is a view into the request buffer."""

    fh: int
    flags: int
    cmd: int
    arg: int
    in_size: int
    out_size: int
    data: memoryview


class Poll(NamedTuple):
    fh: int
    kh: int
    flags: int  # FUSE_POLL_SCHEDULE_NOTIFY: notify.poll(kh) when ready
    events: int


class NotifyReply(NamedTuple):
    """FUSE_NOTIFY_REPLY: the data for a notify.retrieve (request unique = notify_unique)."""

    offset: int
    size: int
    data: memoryview


class Fallocate(NamedTuple):
    fh: int
    offset: int
    length: int
    mode: int


class Lseek(NamedTuple):
    fh: int
    offset: int
    whence: int


class CopyFileRange(NamedTuple):
    fh_in: int
    off_in: int
    nodeid_out: int
    fh_out: int
    off_out: int
    len: int
    flags: int


Args = (
    Init
    | CuseInit
    | Lookup
    | Forget
    | BatchForget
    | Getattr
    | Setattr
    | Open
    | Create
    | Mknod
    | Mkdir
    | Unlink
    | Rmdir
    | Symlink
    | Rename
    | Link
    | Read
    | Write
    | Release
    | Flush
    | Fsync
    | Setxattr
    | Getxattr
    | Listxattr
    | Removexattr
    | Lk
    | Access
    | Interrupt
    | Bmap
    | Ioctl
    | Poll
    | NotifyReply
    | Fallocate
    | Lseek
    | CopyFileRange
)


class Request:
    """One decoded request. ``opcode`` is a plain int (compare with :class:`Opcode`).

    ``args`` is the op's argument tuple (see the table in ``_BY_OPCODE``) or None. It is
    typed ``Any`` because handlers are dispatched by opcode, which fixes its type; code that
    wants the checker's help narrows it: ``assert isinstance(req.args, Read)``. Every
    possible value is one of :data:`Args` or None.
    """

    __slots__ = ("args", "gid", "nodeid", "opcode", "pid", "uid", "unique")
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    args: Any

    def __init__(
        self, opcode: int, unique: int, nodeid: int, uid: int, gid: int, pid: int, args: Args | None
    ) -> None:
        self.opcode = opcode
        self.unique = unique
        self.nodeid = nodeid
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.args = args

    def __repr__(self) -> str:
        try:
            op = Opcode(self.opcode).name
        except ValueError:
            op = str(self.opcode)
        return (
            f"Request({op}, unique={self.unique}, nodeid={self.nodeid}, uid={self.uid}, "
            f"gid={self.gid}, pid={self.pid}, args={self.args!r})"
        )


def negotiate_minor(init: Init | CuseInit) -> int:
    """The minor to speak after this INIT: ``min(kernel's, OUR_MINOR)``.

    Raises ProtocolError(EPROTO) when the kernel's major is older than ours. A newer major
    is answered with our version (reply.init with ``minor=OUR_MINOR``); the kernel then
    sends a new INIT.
    """
    if init.major < FUSE_KERNEL_VERSION:
        raise ProtocolError(f"unsupported FUSE major {init.major}", None, _errno.EPROTO)
    if init.major > FUSE_KERNEL_VERSION:
        return OUR_MINOR
    return min(init.minor, OUR_MINOR)


# --------------------------------------------------------------------------- decoding

_HDR = 40  # body offset
_IN_HEADER = struct.Struct("<IIQQIIIHH")

_U64 = struct.Struct("<Q")

_GETATTR_IN = struct.Struct("<I4xQ")
_SETATTR_IN = struct.Struct("<I4xQQQqqqIIII4xII4x")
_OPEN_IN = struct.Struct("<II")
_CREATE_IN = struct.Struct("<IIII")
_MKNOD_IN = struct.Struct("<III4x")
_MKDIR_IN = struct.Struct("<II")
_RENAME2_IN = struct.Struct("<QI4x")
_READ_IN = struct.Struct("<QQIIQI4x")  # fuse_read_in, and fuse_write_in (the same layout)
#: fuse_in_header followed by fuse_read_in or fuse_write_in, for the hottest requests,
#: READ and WRITE, decoded in one unpack (minor >= 9). A WRITE's data starts at its size.
HEADER_AND_IO = struct.Struct(_IN_HEADER.format + _READ_IN.format[1:])
_READ_IN_COMPAT = struct.Struct("<QQI4x")  # minor < 9
_RELEASE_IN = struct.Struct("<QIIQ")
_RELEASE_IN_COMPAT = struct.Struct("<QII")  # minor < 8
_FLUSH_IN = struct.Struct("<Q8xQ")
_FSYNC_IN = struct.Struct("<QI4x")
_SETXATTR_IN = struct.Struct("<II")  # compat layout, without FUSE_SETXATTR_EXT
_GETXATTR_IN = struct.Struct("<I4x")
_LK_IN = struct.Struct("<QQQQIII4x")
_ACCESS_IN = struct.Struct("<I4x")
_INIT_IN = struct.Struct("<IIII")
_INIT_IN_VERSION = struct.Struct("<II")
_INIT_IN_FLAGS2 = struct.Struct("<I")
_CUSE_INIT_IN = struct.Struct("<II4xI")
_BMAP_IN = struct.Struct("<QI4x")
_IOCTL_IN = struct.Struct("<QIIQII")
_POLL_IN = struct.Struct("<QQII")
_NOTIFY_RETRIEVE_IN = struct.Struct("<8xQI20x")
_BATCH_FORGET_IN = struct.Struct("<I4x")
_FORGET_ONE = struct.Struct("<QQ")
_FALLOCATE_IN = struct.Struct("<QQQI4x")
_LSEEK_IN = struct.Struct("<QQI4x")
_COPY_FILE_RANGE_IN = struct.Struct("<QQQQQQQ")

_Decoder = Callable[[memoryview, int, int], Args | None]


def _short(what: str, have: int, need: int) -> ProtocolError:
    return ProtocolError(f"{what}: body of {have} bytes, need {need}", None, _errno.EINVAL)


def _bytes(mv: memoryview) -> memoryview:
    """``mv`` as a flat view of bytes, so that slices are in bytes."""
    return mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")


def _fixed(mv: memoryview, end: int, s: struct.Struct, what: str) -> tuple[int, ...]:
    if end - _HDR < s.size:
        raise _short(what, end - _HDR, s.size)
    return s.unpack_from(mv, _HDR)


def _names(mv: memoryview, start: int, end: int, count: int, what: str) -> list[bytes]:
    """``count`` NUL-terminated names from mv[start:end]."""
    if start > end:
        raise _short(what, end - _HDR, start - _HDR)
    raw = _bytes(mv)[start:end].tobytes()
    out: list[bytes] = []
    pos = 0
    for _ in range(count):
        nul = raw.find(b"\0", pos)
        if nul < 0:
            raise ProtocolError(f"{what}: name without NUL", None, _errno.EINVAL)
        out.append(raw[pos:nul])
        pos = nul + 1
    return out


def _d_init(mv: memoryview, end: int, minor: int) -> Init:
    body = end - _HDR
    if body < 8:
        raise _short("INIT", body, 8)
    major, kminor = _INIT_IN_VERSION.unpack_from(mv, _HDR)
    if body < _INIT_IN.size:  # minor < 6: no max_readahead, no flags
        return Init(major, kminor, 0, 0)
    _, _, max_readahead, flags = _INIT_IN.unpack_from(mv, _HDR)
    if flags & FUSE_INIT_EXT and body >= 20:
        (flags2,) = _INIT_IN_FLAGS2.unpack_from(mv, _HDR + 16)
        flags |= flags2 << 32
    return Init(major, kminor, max_readahead, flags)


def _d_cuse_init(mv: memoryview, end: int, minor: int) -> CuseInit:
    return CuseInit(*_fixed(mv, end, _CUSE_INIT_IN, "CUSE_INIT"))


def _d_lookup(mv: memoryview, end: int, minor: int) -> Lookup:
    return Lookup(_names(mv, _HDR, end, 1, "LOOKUP")[0])


def _d_forget(mv: memoryview, end: int, minor: int) -> Forget:
    return Forget(*_fixed(mv, end, _U64, "FORGET"))


def _d_batch_forget(mv: memoryview, end: int, minor: int) -> BatchForget:
    (count,) = _fixed(mv, end, _BATCH_FORGET_IN, "BATCH_FORGET")
    start = _HDR + _BATCH_FORGET_IN.size
    need = count * _FORGET_ONE.size
    if end - start < need:
        raise _short("BATCH_FORGET", end - _HDR, _BATCH_FORGET_IN.size + need)
    items: list[tuple[int, int]] = list(_FORGET_ONE.iter_unpack(_bytes(mv)[start : start + need]))
    return BatchForget(items)


def _d_getattr(mv: memoryview, end: int, minor: int) -> Getattr:
    if minor < 9:  # no fuse_getattr_in before 7.9
        return Getattr(0, 0)
    return Getattr(*_fixed(mv, end, _GETATTR_IN, "GETATTR"))


def _d_setattr(mv: memoryview, end: int, minor: int) -> Setattr:
    (valid, fh, size, lock_owner, atime, mtime, ctime, atimensec, mtimensec, ctimensec, mode, uid, gid) = (
        _fixed(mv, end, _SETATTR_IN, "SETATTR")
    )
    return Setattr(
        valid,
        fh,
        size,
        mode,
        uid,
        gid,
        atime * 1_000_000_000 + atimensec,
        mtime * 1_000_000_000 + mtimensec,
        ctime * 1_000_000_000 + ctimensec,
        lock_owner,
    )


def _d_open(mv: memoryview, end: int, minor: int) -> Open:
    return tuple.__new__(Open, _fixed(mv, end, _OPEN_IN, "OPEN"))


def _d_create(mv: memoryview, end: int, minor: int) -> Create:
    if minor < 12:  # fuse_open_in {flags, mode}, no umask
        flags, mode = _fixed(mv, end, _OPEN_IN, "CREATE")
        umask = open_flags = 0
        start = _HDR + _OPEN_IN.size
    else:
        flags, mode, umask, open_flags = _fixed(mv, end, _CREATE_IN, "CREATE")
        start = _HDR + _CREATE_IN.size
    return Create(_names(mv, start, end, 1, "CREATE")[0], flags, mode, umask, open_flags)


def _d_mknod(mv: memoryview, end: int, minor: int) -> Mknod:
    if minor < 12:  # FUSE_COMPAT_MKNOD_IN_SIZE: {mode, rdev}
        mode, rdev = _fixed(mv, end, _OPEN_IN, "MKNOD")
        umask = 0
        start = _HDR + 8
    else:
        mode, rdev, umask = _fixed(mv, end, _MKNOD_IN, "MKNOD")
        start = _HDR + _MKNOD_IN.size
    return Mknod(_names(mv, start, end, 1, "MKNOD")[0], mode, rdev, umask)


def _d_mkdir(mv: memoryview, end: int, minor: int) -> Mkdir:
    mode, umask = _fixed(mv, end, _MKDIR_IN, "MKDIR")
    return Mkdir(_names(mv, _HDR + _MKDIR_IN.size, end, 1, "MKDIR")[0], mode, umask)


def _d_unlink(mv: memoryview, end: int, minor: int) -> Unlink:
    return Unlink(_names(mv, _HDR, end, 1, "UNLINK")[0])


def _d_rmdir(mv: memoryview, end: int, minor: int) -> Rmdir:
    return Rmdir(_names(mv, _HDR, end, 1, "RMDIR")[0])


def _d_symlink(mv: memoryview, end: int, minor: int) -> Symlink:
    name, target = _names(mv, _HDR, end, 2, "SYMLINK")
    return Symlink(name, target)


def _d_rename(mv: memoryview, end: int, minor: int) -> Rename:
    (newdir,) = _fixed(mv, end, _U64, "RENAME")
    name, newname = _names(mv, _HDR + _U64.size, end, 2, "RENAME")
    return Rename(newdir, name, newname, 0)


def _d_rename2(mv: memoryview, end: int, minor: int) -> Rename:
    newdir, flags = _fixed(mv, end, _RENAME2_IN, "RENAME2")
    name, newname = _names(mv, _HDR + _RENAME2_IN.size, end, 2, "RENAME2")
    return Rename(newdir, name, newname, flags)


def _d_link(mv: memoryview, end: int, minor: int) -> Link:
    (oldnodeid,) = _fixed(mv, end, _U64, "LINK")
    return Link(oldnodeid, _names(mv, _HDR + _U64.size, end, 1, "LINK")[0])


# Hot path: one size check, one unpack_from, one tuple construction.
def _d_read(mv: memoryview, end: int, minor: int) -> Read:
    if minor >= 9:
        if end - _HDR >= 40:
            return tuple.__new__(Read, _READ_IN.unpack_from(mv, _HDR))
        raise _short("READ", end - _HDR, 40)
    fh, offset, size = _fixed(mv, end, _READ_IN_COMPAT, "READ")
    return Read(fh, offset, size, 0, 0, 0)


def _d_write(mv: memoryview, end: int, minor: int) -> Write:
    if minor >= 9:
        if end - _HDR >= 40:
            fh, offset, size, write_flags, lock_owner, flags = _READ_IN.unpack_from(mv, _HDR)
            if size <= end - 80:
                return Write(fh, offset, size, write_flags, lock_owner, flags, _bytes(mv)[80 : 80 + size])
            raise _short("WRITE", end - _HDR, 40 + size)
        raise _short("WRITE", end - _HDR, 40)
    fh, offset, size = _fixed(mv, end, _READ_IN_COMPAT, "WRITE")  # FUSE_COMPAT_WRITE_IN_SIZE
    if size > end - 64:
        raise _short("WRITE", end - _HDR, 24 + size)
    return Write(fh, offset, size, 0, 0, 0, _bytes(mv)[64 : 64 + size])


def _d_release(mv: memoryview, end: int, minor: int) -> Release:
    if minor >= 8:
        return tuple.__new__(Release, _fixed(mv, end, _RELEASE_IN, "RELEASE"))
    fh, flags, release_flags = _fixed(mv, end, _RELEASE_IN_COMPAT, "RELEASE")
    return Release(fh, flags, release_flags, 0)


def _d_flush(mv: memoryview, end: int, minor: int) -> Flush:
    return tuple.__new__(Flush, _fixed(mv, end, _FLUSH_IN, "FLUSH"))


def _d_fsync(mv: memoryview, end: int, minor: int) -> Fsync:
    return tuple.__new__(Fsync, _fixed(mv, end, _FSYNC_IN, "FSYNC"))


def _d_setxattr(mv: memoryview, end: int, minor: int) -> Setxattr:
    size, flags = _fixed(mv, end, _SETXATTR_IN, "SETXATTR")
    start = _HDR + _SETXATTR_IN.size
    (name,) = _names(mv, start, end, 1, "SETXATTR")
    vstart = start + len(name) + 1
    if end - vstart < size:
        raise _short("SETXATTR", end - _HDR, vstart - _HDR + size)
    return Setxattr(name, _bytes(mv)[vstart : vstart + size].tobytes(), flags)


def _d_getxattr(mv: memoryview, end: int, minor: int) -> Getxattr:
    (size,) = _fixed(mv, end, _GETXATTR_IN, "GETXATTR")
    return Getxattr(_names(mv, _HDR + _GETXATTR_IN.size, end, 1, "GETXATTR")[0], size)


def _d_listxattr(mv: memoryview, end: int, minor: int) -> Listxattr:
    return tuple.__new__(Listxattr, _fixed(mv, end, _GETXATTR_IN, "LISTXATTR"))


def _d_removexattr(mv: memoryview, end: int, minor: int) -> Removexattr:
    return Removexattr(_names(mv, _HDR, end, 1, "REMOVEXATTR")[0])


def _d_lk(mv: memoryview, end: int, minor: int) -> Lk:
    return tuple.__new__(Lk, _fixed(mv, end, _LK_IN, "LK"))


def _d_access(mv: memoryview, end: int, minor: int) -> Access:
    return tuple.__new__(Access, _fixed(mv, end, _ACCESS_IN, "ACCESS"))


def _d_interrupt(mv: memoryview, end: int, minor: int) -> Interrupt:
    return tuple.__new__(Interrupt, _fixed(mv, end, _U64, "INTERRUPT"))


def _d_bmap(mv: memoryview, end: int, minor: int) -> Bmap:
    return tuple.__new__(Bmap, _fixed(mv, end, _BMAP_IN, "BMAP"))


def _d_ioctl(mv: memoryview, end: int, minor: int) -> Ioctl:
    fh, flags, cmd, arg, in_size, out_size = _fixed(mv, end, _IOCTL_IN, "IOCTL")
    start = _HDR + _IOCTL_IN.size
    if end - start < in_size:
        raise _short("IOCTL", end - _HDR, _IOCTL_IN.size + in_size)
    return Ioctl(fh, flags, cmd, arg, in_size, out_size, _bytes(mv)[start : start + in_size])


def _d_poll(mv: memoryview, end: int, minor: int) -> Poll:
    return tuple.__new__(Poll, _fixed(mv, end, _POLL_IN, "POLL"))


def _d_notify_reply(mv: memoryview, end: int, minor: int) -> NotifyReply:
    offset, size = _fixed(mv, end, _NOTIFY_RETRIEVE_IN, "NOTIFY_REPLY")
    start = _HDR + _NOTIFY_RETRIEVE_IN.size
    if end - start < size:
        raise _short("NOTIFY_REPLY", end - _HDR, _NOTIFY_RETRIEVE_IN.size + size)
    return NotifyReply(offset, size, _bytes(mv)[start : start + size])


def _d_fallocate(mv: memoryview, end: int, minor: int) -> Fallocate:
    return tuple.__new__(Fallocate, _fixed(mv, end, _FALLOCATE_IN, "FALLOCATE"))


def _d_lseek(mv: memoryview, end: int, minor: int) -> Lseek:
    return tuple.__new__(Lseek, _fixed(mv, end, _LSEEK_IN, "LSEEK"))


def _d_copy_file_range(mv: memoryview, end: int, minor: int) -> CopyFileRange:
    return tuple.__new__(CopyFileRange, _fixed(mv, end, _COPY_FILE_RANGE_IN, "COPY_FILE_RANGE"))


_BY_OPCODE: dict[Opcode, _Decoder] = {
    Opcode.LOOKUP: _d_lookup,
    Opcode.FORGET: _d_forget,
    Opcode.GETATTR: _d_getattr,
    Opcode.SETATTR: _d_setattr,
    Opcode.SYMLINK: _d_symlink,
    Opcode.MKNOD: _d_mknod,
    Opcode.MKDIR: _d_mkdir,
    Opcode.UNLINK: _d_unlink,
    Opcode.RMDIR: _d_rmdir,
    Opcode.RENAME: _d_rename,
    Opcode.LINK: _d_link,
    Opcode.OPEN: _d_open,
    Opcode.READ: _d_read,
    Opcode.WRITE: _d_write,
    Opcode.RELEASE: _d_release,
    Opcode.FSYNC: _d_fsync,
    Opcode.SETXATTR: _d_setxattr,
    Opcode.GETXATTR: _d_getxattr,
    Opcode.LISTXATTR: _d_listxattr,
    Opcode.REMOVEXATTR: _d_removexattr,
    Opcode.FLUSH: _d_flush,
    Opcode.INIT: _d_init,
    Opcode.OPENDIR: _d_open,
    Opcode.READDIR: _d_read,
    Opcode.RELEASEDIR: _d_release,
    Opcode.FSYNCDIR: _d_fsync,
    Opcode.GETLK: _d_lk,
    Opcode.SETLK: _d_lk,
    Opcode.SETLKW: _d_lk,
    Opcode.ACCESS: _d_access,
    Opcode.CREATE: _d_create,
    Opcode.INTERRUPT: _d_interrupt,
    Opcode.BMAP: _d_bmap,
    Opcode.IOCTL: _d_ioctl,
    Opcode.POLL: _d_poll,
    Opcode.NOTIFY_REPLY: _d_notify_reply,
    Opcode.BATCH_FORGET: _d_batch_forget,
    Opcode.FALLOCATE: _d_fallocate,
    Opcode.READDIRPLUS: _d_read,
    Opcode.RENAME2: _d_rename2,
    Opcode.LSEEK: _d_lseek,
    Opcode.COPY_FILE_RANGE: _d_copy_file_range,
    Opcode.TMPFILE: _d_create,
    Opcode.CUSE_INIT: _d_cuse_init,
}
# Keyed by plain int: the raw opcode from the header then compares without IntEnum.
_DECODERS: dict[int, _Decoder] = {int(op): fn for op, fn in _BY_OPCODE.items()}

# Opcodes whose request carries no arguments (args is None): READLINK, STATFS, DESTROY,
# SYNCFS (its fuse_syncfs_in is padding), SETUPMAPPING/REMOVEMAPPING (virtiofs only).


def parse(
    buf: memoryview | bytes | bytearray, nbytes: int | None = None, minor: int = OUR_MINOR
) -> Request:
    """Decode one request from ``buf[:nbytes]`` (``nbytes`` defaults to ``len(buf)``).

    ``buf`` may be a larger, reused buffer; only the first ``nbytes`` bytes (the return value
    of the read) are looked at. ``minor`` is the negotiated protocol minor.
    """
    # Byte-level slicing (Write.data, ...) needs format "B"; _bytes() fixes other views lazily.
    mv = buf if type(buf) is memoryview else memoryview(buf)
    if nbytes is None:
        nbytes = mv.nbytes
    elif nbytes > mv.nbytes:
        raise ProtocolError(f"nbytes {nbytes} larger than the buffer ({mv.nbytes})", None, _errno.EIO)
    if nbytes < _HDR:
        raise ProtocolError(f"short message: {nbytes} bytes, header needs {_HDR}", None, _errno.EIO)
    length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = _IN_HEADER.unpack_from(mv)
    if length != nbytes:
        raise ProtocolError(f"header len {length} but {nbytes} bytes received", unique, _errno.EIO)
    # Extensions (7.38, e.g. security context) follow the body; we never negotiate them,
    # but keep them out of the body if a kernel sends them anyway.
    end = length - (extlen << 3)
    if end < _HDR:
        raise ProtocolError(f"extension length {extlen * 8} exceeds the message", unique, _errno.EIO)
    decoder = _DECODERS.get(opcode)
    if decoder is None:
        return Request(opcode, unique, nodeid, uid, gid, pid, None)
    try:
        args = decoder(mv, end, minor)
    except ProtocolError as e:
        e.unique = unique
        raise
    return Request(opcode, unique, nodeid, uid, gid, pid, args)


# --------------------------------------------------------------------------- READ and WRITE

#: A decoded READ: (unique, fh, offset, size, file flags).
ReadIo: TypeAlias = tuple[int, int, int, int, int]
#: A decoded WRITE: (unique, fh, offset, data, file flags); data is a view into the buffer.
WriteIo: TypeAlias = tuple[int, int, int, memoryview, int]

_HEADER_AND_IO = HEADER_AND_IO.unpack_from
_IO_SIZE = HEADER_AND_IO.size


# The requests that carry data are most of a device's traffic: one unpack of header and
# arguments, one length check, a plain tuple and no Request.
def parse_read(view: memoryview, nbytes: int, minor: int = OUR_MINOR) -> ReadIo:
    """Decode a READ from ``view[:nbytes]``, as :func:`parse` would but faster."""
    if nbytes < _IO_SIZE or minor < 9:
        return _io_from_request(parse(view, nbytes, minor))  # type: ignore[return-value]
    length, _, unique, _, _, _, _, _, _, fh, offset, size, _, _, flags = _HEADER_AND_IO(view)
    if length != nbytes:
        raise ProtocolError(f"header len {length} but {nbytes} bytes received", unique, _errno.EIO)
    return unique, fh, offset, size, flags


def parse_write(view: memoryview, nbytes: int, minor: int = OUR_MINOR) -> WriteIo:
    """Decode a WRITE from ``view[:nbytes]``, as :func:`parse` would but faster."""
    if nbytes < _IO_SIZE or minor < 9:
        return _io_from_request(parse(view, nbytes, minor))  # type: ignore[return-value]
    length, _, unique, _, _, _, _, _, _, fh, offset, size, _, _, flags = _HEADER_AND_IO(view)
    if length != nbytes or _IO_SIZE + size > nbytes:
        raise ProtocolError(f"{size}-byte WRITE in a message of {nbytes} bytes", unique, _errno.EIO)
    return unique, fh, offset, view[_IO_SIZE : _IO_SIZE + size], flags


def _io_from_request(req: Request) -> ReadIo | WriteIo:
    """Short messages and old minors: the general decoder's verdict, in the fast tuple."""
    if not isinstance(req.args, (Read, Write)):
        raise ProtocolError(f"not a READ or WRITE: opcode {req.opcode}", req.unique, _errno.EIO)
    args = req.args
    if isinstance(args, Write):
        return req.unique, args.fh, args.offset, args.data, args.flags
    return req.unique, args.fh, args.offset, args.size, args.flags


_FUSED: dict[int, Callable[[memoryview, int, int], Any]] = {
    int(Opcode.READ): parse_read,
    int(Opcode.WRITE): parse_write,
}


def decoder_for(opcode: int) -> Callable[[memoryview, int, int], Any]:
    """The decoder for requests with this opcode: :func:`parse`, or the fused one for READ
    and WRITE (whose handlers take :data:`ReadIo` / :data:`WriteIo` instead of a Request)."""
    return _FUSED.get(opcode, parse)
