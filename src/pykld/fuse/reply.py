"""Encoding of replies: reply arguments in, bytes (or a list of buffers) out.

Every reply starts with a ``fuse_out_header`` (len, error, unique) whose ``len`` is the
total size of the message. Write each result to the device in one system call:
``os.write(fd, b)`` for ``bytes``, ``os.writev(fd, bufs)`` for the ``list`` returned by
:func:`data` and :func:`pykld.fuse.notify.store` (header first, payload buffers as given,
nothing copied).

Conventions:

* Times in :class:`Attr` are **int nanoseconds** since the epoch (``os.stat().st_mtime_ns``,
  ``time.time_ns()``); negative values are before 1970. Cache timeouts (``entry_valid``,
  ``attr_valid``) are float seconds, clamped to ``[0, 2**32)``.
* Encoders need a negotiated minor >= 7.9 (fuse_attr with blksize); only :func:`init`
  depends on the minor.
* Out-of-range integers raise ``struct.error``; invalid arguments raise ``ValueError``. Both
  are bugs in the caller: a reply the kernel rejects would leave the caller blocked forever.
* The kernel rejects a reply larger than what the request asked for (READ ``size``,
  IOCTL ``out_size``, GETXATTR ``size``): the caller limits the payload.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from pykld.fuse.abi import (
    CUSE_INIT_INFO_MAX,
    FUSE_COMPAT_22_INIT_OUT_SIZE,
    FUSE_COMPAT_INIT_OUT_SIZE,
    FUSE_INIT_EXT,
    FUSE_IOCTL_MAX_IOV,
    FUSE_IOCTL_RETRY,
    FUSE_KERNEL_VERSION,
    FUSE_MAX_MAX_PAGES,
    FUSE_MAX_PAGES,
    FUSE_NAME_MAX,
    PAGE_SIZE,
)

__all__ = [
    "Attr",
    "Buffer",
    "DirEntry",
    "attr",
    "bmap",
    "create",
    "cuse_init",
    "data",
    "direntplus",
    "dirents",
    "empty",
    "entry",
    "error",
    "init",
    "ioctl",
    "ioctl_retry",
    "lk",
    "lseek",
    "negative_entry",
    "open",
    "poll",
    "readlink",
    "statfs",
    "write",
    "xattr_size",
]

#: Anything os.writev accepts and we can measure with len() / .nbytes.
Buffer = bytes | bytearray | memoryview

_HDR = 16
_OUT_HEADER = struct.Struct("<IiQ")
_ATTR_FMT = "QQQqqqIIIIIIIIII"  # struct fuse_attr, 88 bytes
_ENTRY_OUT_FMT = "QQQQII" + _ATTR_FMT  # struct fuse_entry_out, 128 bytes
_ENTRY = struct.Struct("<IiQ" + _ENTRY_OUT_FMT)
_ATTR_OUT = struct.Struct("<IiQQI4x" + _ATTR_FMT)
_OPEN = struct.Struct("<IiQQI4x")
_CREATE = struct.Struct("<IiQ" + _ENTRY_OUT_FMT + "QI4x")
_WRITE = struct.Struct("<IiQI4x")
_STATFS = struct.Struct("<IiQQQQQQIIII24x")
_POLL = _WRITE  # fuse_poll_out {revents, padding}
_XATTR = _WRITE  # fuse_getxattr_out {size, padding}
_U64 = struct.Struct("<IiQQ")  # fuse_lseek_out, fuse_bmap_out
_LK = struct.Struct("<IiQQQII")
_IOCTL = struct.Struct("<IiQiIII")
_IOVEC = struct.Struct("<QQ")
_INIT = struct.Struct("<IIIIHHIIHHI28x")  # fuse_init_out, 64 bytes
_CUSE_INIT = struct.Struct("<IiQIIIIIIII40x")
_DIRENT = struct.Struct("<QQII")
_DIRENTPLUS = struct.Struct("<" + _ENTRY_OUT_FMT + "QQII")
_PADS = tuple(b"\0" * n for n in range(8))
_NSEC = 1_000_000_000
_MAX_TIMEOUT = 1 << 32


class Attr(NamedTuple):
    """File attributes (``struct fuse_attr``). Times are int nanoseconds since the epoch."""

    ino: int
    size: int = 0
    blocks: int = 0  # in 512-byte units
    atime: int = 0
    mtime: int = 0
    ctime: int = 0
    mode: int = 0  # file type and permission bits (stat.S_IFCHR | 0o660)
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    blksize: int = 4096
    flags: int = 0  # FUSE_ATTR_*


class DirEntry(NamedTuple):
    """One directory entry. ``offset`` is the cookie the kernel sends back in the READDIR that
    continues after this entry; ``type`` is ``mode >> 12`` (abi.DT_*)."""

    ino: int
    offset: int
    type: int
    name: bytes


def _timeout(seconds: float) -> tuple[int, int]:
    if seconds <= 0:
        return 0, 0
    if seconds >= _MAX_TIMEOUT:
        return _MAX_TIMEOUT, 0
    s = int(seconds)
    return s, min(round((seconds - s) * 1e9), 999_999_999)


def _attr_fields(a: Attr) -> tuple[int, ...]:
    asec, ansec = divmod(a.atime, _NSEC)
    msec, mnsec = divmod(a.mtime, _NSEC)
    csec, cnsec = divmod(a.ctime, _NSEC)
    return (
        a.ino, a.size, a.blocks, asec, msec, csec, ansec, mnsec, cnsec,
        a.mode, a.nlink, a.uid, a.gid, a.rdev, a.blksize, a.flags,
    )  # fmt: skip


def _entry_fields(
    nodeid: int, a: Attr, entry_valid: float, attr_valid: float, generation: int
) -> tuple[int, ...]:
    es, ens = _timeout(entry_valid)
    as_, ans = _timeout(attr_valid)
    return (nodeid, generation, es, as_, ens, ans, *_attr_fields(a))


# --------------------------------------------------------------------------- generic


def error(unique: int, errno: int) -> bytes:
    """Failure of request ``unique`` with positive ``errno`` (sent as ``-errno``).

    The kernel accepts 1 <= errno < 512 only; anything else raises ValueError.
    """
    if not 0 < errno < 512:
        raise ValueError(f"errno {errno} out of range 1..511")
    return _OUT_HEADER.pack(_HDR, -errno, unique)


def empty(unique: int) -> bytes:
    """Success without payload (SETXATTR, FLUSH, RELEASE, FSYNC, UNLINK, ACCESS, ...)."""
    return _OUT_HEADER.pack(_HDR, 0, unique)


def data(unique: int, chunks: Sequence[Buffer]) -> list[Buffer]:
    """Success with a payload made of ``chunks`` (READ, READLINK, GETXATTR values, ...).

    Zero-copy: returns ``[header, *chunks]`` for os.writev; the chunk objects themselves are
    in the list, so they must stay unchanged until written.
    """
    total = _HDR
    for c in chunks:
        total += c.nbytes if type(c) is memoryview else len(c)
    out: list[Buffer] = [_OUT_HEADER.pack(total, 0, unique)]
    out.extend(chunks)
    return out


def readlink(unique: int, target: bytes) -> bytes:
    """READLINK: the link target, without NUL."""
    return _OUT_HEADER.pack(_HDR + len(target), 0, unique) + target


# --------------------------------------------------------------------------- INIT


def init(
    unique: int,
    *,
    minor: int,
    max_readahead: int,
    flags: int,
    max_background: int = 0,
    congestion_threshold: int = 0,
    max_write: int,
    time_gran: int = 1,
    max_pages: int | None = None,
    map_alignment: int = 0,
) -> bytes:
    """FUSE_INIT reply; ``fuse_init_out`` is cut to the size the negotiated ``minor`` expects
    (8 bytes below 7.5, 24 below 7.23, 64 from 7.23).

    ``minor`` is the negotiated minor (``request.negotiate_minor``) and is sent as ours.
    ``flags`` are the INIT flags we accept (a subset of the kernel's); bits 32..63 go into
    flags2 (only from 7.36, with FUSE_INIT_EXT, which is then added). ``max_background`` and
    ``congestion_threshold`` 0 keep the kernel's defaults. Without FUSE_MAX_PAGES the kernel
    caps every request at 32 pages (128 KiB) whatever ``max_write`` says; with it,
    ``max_pages`` defaults to ``max_write`` in pages (at most 256).
    """
    if minor < 36:
        flags &= 0xFFFFFFFF
    flags2 = flags >> 32
    if flags2:
        flags |= FUSE_INIT_EXT
    if max_pages is None:
        max_pages = (
            min(FUSE_MAX_MAX_PAGES, max(1, -(-max_write // PAGE_SIZE))) if flags & FUSE_MAX_PAGES else 0
        )
    body = _INIT.pack(
        FUSE_KERNEL_VERSION, minor, max_readahead, flags & 0xFFFFFFFF, max_background,
        congestion_threshold, max_write, time_gran, max_pages, map_alignment, flags2,
    )  # fmt: skip
    if minor < 5:
        body = body[:FUSE_COMPAT_INIT_OUT_SIZE]
    elif minor < 23:
        body = body[:FUSE_COMPAT_22_INIT_OUT_SIZE]
    return _OUT_HEADER.pack(_HDR + len(body), 0, unique) + body


def cuse_init(
    unique: int,
    *,
    minor: int,
    flags: int,
    max_read: int,
    max_write: int,
    dev_major: int,
    dev_minor: int,
    devname: str,
) -> bytes:
    """CUSE_INIT reply: ``cuse_init_out`` then the info string ``"DEVNAME=<devname>\\0"``.

    ``minor`` must be >= 11 (CUSE refuses less). ``dev_major`` 0 lets the kernel allocate a
    dynamic major/minor. ``devname`` may contain "/" (devtmpfs creates subdirectories).
    The kernel raises max_read and max_write to at least 4096.
    """
    name = devname.encode("utf-8", "surrogateescape")
    if not name or b"\0" in name:
        raise ValueError(f"bad CUSE device name {devname!r}")
    info = b"DEVNAME=" + name + b"\0"
    if len(info) > CUSE_INIT_INFO_MAX:
        raise ValueError(f"CUSE device name too long ({len(name)} bytes)")
    head = _CUSE_INIT.pack(
        _CUSE_INIT.size + len(info), 0, unique,
        FUSE_KERNEL_VERSION, minor, 0, flags, max_read, max_write, dev_major, dev_minor,
    )  # fmt: skip
    return head + info


# --------------------------------------------------------------------------- entries and attributes


def entry(
    unique: int, nodeid: int, attr: Attr, entry_valid: float, attr_valid: float, generation: int = 0
) -> bytes:
    """LOOKUP, MKNOD, MKDIR, SYMLINK, LINK success (``fuse_entry_out``).

    Each such reply with a nonzero nodeid adds one to the node's lookup count (see FORGET).
    """
    return _ENTRY.pack(
        _ENTRY.size, 0, unique, *_entry_fields(nodeid, attr, entry_valid, attr_valid, generation)
    )


def negative_entry(unique: int, entry_valid: float) -> bytes:
    """LOOKUP of a missing name, cached for ``entry_valid`` seconds (nodeid 0).
    ``error(unique, ENOENT)`` is the uncached alternative."""
    return entry(unique, 0, Attr(0, nlink=0, blksize=0), entry_valid, 0.0)


def attr(unique: int, attr: Attr, attr_valid: float) -> bytes:
    """GETATTR, SETATTR success (``fuse_attr_out``)."""
    s, ns = _timeout(attr_valid)
    return _ATTR_OUT.pack(_ATTR_OUT.size, 0, unique, s, ns, *_attr_fields(attr))


def open(unique: int, fh: int, open_flags: int = 0) -> bytes:
    """OPEN, OPENDIR success: file handle and FOPEN_* flags."""
    return _OPEN.pack(_OPEN.size, 0, unique, fh, open_flags)


def create(
    unique: int,
    nodeid: int,
    attr: Attr,
    entry_valid: float,
    attr_valid: float,
    fh: int,
    open_flags: int = 0,
    generation: int = 0,
) -> bytes:
    """CREATE success: ``fuse_entry_out`` followed by ``fuse_open_out``."""
    return _CREATE.pack(
        _CREATE.size,
        0,
        unique,
        *_entry_fields(nodeid, attr, entry_valid, attr_valid, generation),
        fh,
        open_flags,
    )


# --------------------------------------------------------------------------- small fixed replies


def write(unique: int, size: int) -> bytes:
    """WRITE success: ``size`` bytes were written."""
    return _WRITE.pack(_WRITE.size, 0, unique, size)


def statfs(
    unique: int,
    *,
    blocks: int = 0,
    bfree: int = 0,
    bavail: int = 0,
    files: int = 0,
    ffree: int = 0,
    bsize: int = 4096,
    namelen: int = 255,
    frsize: int = 4096,
) -> bytes:
    """STATFS success (``fuse_kstatfs``)."""
    return _STATFS.pack(
        _STATFS.size, 0, unique, blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, 0
    )


def poll(unique: int, revents: int) -> bytes:
    """POLL success: the currently ready events (POLLIN, POLLOUT, ...)."""
    return _POLL.pack(_POLL.size, 0, unique, revents)


def xattr_size(unique: int, size: int) -> bytes:
    """GETXATTR/LISTXATTR with size 0 in the request: the size the value would need."""
    return _XATTR.pack(_XATTR.size, 0, unique, size)


def lseek(unique: int, offset: int) -> bytes:
    """LSEEK success: the resulting offset."""
    return _U64.pack(_U64.size, 0, unique, offset)


def bmap(unique: int, block: int) -> bytes:
    return _U64.pack(_U64.size, 0, unique, block)


def lk(unique: int, start: int, end: int, type: int, pid: int) -> bytes:
    """GETLK success (``fuse_lk_out``)."""
    return _LK.pack(_LK.size, 0, unique, start, end, type, pid)


# --------------------------------------------------------------------------- ioctl


def ioctl(unique: int, result: int, out: Buffer = b"") -> bytes:
    """IOCTL success: ``result`` is the ioctl(2) return value, ``out`` the data copied back
    to the caller (at most the request's ``out_size`` bytes)."""
    n = out.nbytes if type(out) is memoryview else len(out)
    return _IOCTL.pack(_IOCTL.size + n, 0, unique, result, 0, 0, 0) + bytes(out)


def ioctl_retry(
    unique: int, in_iovs: Sequence[tuple[int, int]], out_iovs: Sequence[tuple[int, int]]
) -> bytes:
    """IOCTL with FUSE_IOCTL_RETRY: ask the kernel to resend the ioctl with these user memory
    areas, given as ``(address, length)``: ``in_iovs`` are copied in (their concatenated
    contents become ``Ioctl.data``), ``out_iovs`` receive the data of the final reply, in
    order.

    Only valid when the request had FUSE_IOCTL_UNRESTRICTED (CUSE with
    CUSE_UNRESTRICTED_IOCTL); the kernel also caps the total length at max_pages pages.
    Layout: fuse_out_header, fuse_ioctl_out {0, RETRY, n_in, n_out}, n_in then n_out
    ``fuse_ioctl_iovec {u64 base, u64 len}``.
    """
    n_in = len(in_iovs)
    n_out = len(out_iovs)
    if n_in + n_out > FUSE_IOCTL_MAX_IOV:
        raise ValueError(f"{n_in} + {n_out} iovecs exceed FUSE_IOCTL_MAX_IOV ({FUSE_IOCTL_MAX_IOV})")
    parts = [
        _IOCTL.pack(_IOCTL.size + (n_in + n_out) * _IOVEC.size, 0, unique, 0, FUSE_IOCTL_RETRY, n_in, n_out)
    ]
    parts.extend(_IOVEC.pack(base, length) for base, length in in_iovs)
    parts.extend(_IOVEC.pack(base, length) for base, length in out_iovs)
    return b"".join(parts)


# --------------------------------------------------------------------------- directories


def _check_name(name: bytes) -> None:
    if not name or len(name) > FUSE_NAME_MAX or b"/" in name or b"\0" in name:
        raise ValueError(f"bad directory entry name {name!r}")


def dirents(unique: int, entries: Iterable[tuple[int, int, int, bytes]], size_limit: int) -> bytes:
    """READDIR success with as many of ``entries`` (``DirEntry`` or plain
    ``(ino, offset, type, name)`` tuples) as fit in ``size_limit`` bytes of payload (the
    request's ``Read.size``). Records are ``fuse_dirent`` padded to 8 bytes. Entries past the
    limit are dropped; the kernel asks again from the last offset it got. No entries at all
    (an empty payload) means end of directory.
    """
    parts: list[bytes] = [b""]
    total = 0
    pack = _DIRENT.pack
    for ino, offset, typ, name in entries:
        namelen = len(name)
        reclen = (24 + namelen + 7) & ~7
        if total + reclen > size_limit:
            break
        _check_name(name)
        parts.append(pack(ino, offset, namelen, typ))
        parts.append(name)
        parts.append(_PADS[reclen - 24 - namelen])
        total += reclen
    parts[0] = _OUT_HEADER.pack(_HDR + total, 0, unique)
    return b"".join(parts)


def direntplus(
    unique: int,
    entries: Iterable[tuple[tuple[int, int, int, bytes], Attr | None]],
    size_limit: int,
    entry_valid: float,
    attr_valid: float,
) -> bytes:
    """READDIRPLUS success: like :func:`dirents`, each record preceded by a ``fuse_entry_out``.

    ``entries`` yields ``(DirEntry, Attr | None)``. With an Attr the entry's nodeid is
    ``DirEntry.ino`` and, except for "." and "..", the kernel counts it as a lookup (expect a
    FORGET); with None the entry carries no attributes (nodeid 0).
    """
    parts: list[bytes] = [b""]
    total = 0
    pack = _DIRENTPLUS.pack
    zero = _entry_fields(0, Attr(0, nlink=0, blksize=0), 0.0, 0.0, 0)
    for (ino, offset, typ, name), a in entries:
        namelen = len(name)
        reclen = (152 + namelen + 7) & ~7
        if total + reclen > size_limit:
            break
        _check_name(name)
        fields = zero if a is None else _entry_fields(ino, a, entry_valid, attr_valid, 0)
        parts.append(pack(*fields, ino, offset, namelen, typ))
        parts.append(name)
        parts.append(_PADS[reclen - 152 - namelen])
        total += reclen
    parts[0] = _OUT_HEADER.pack(_HDR + total, 0, unique)
    return b"".join(parts)
