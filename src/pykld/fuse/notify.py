"""Encoding of unsolicited notifications (server -> kernel, no request).

A notification is a ``fuse_out_header`` with ``unique`` 0 and the notify code (positive)
in the ``error`` field, followed by the code's argument struct. Write it to the same
device fd as replies, in one ``write`` (``writev`` for :func:`store`). The kernel answers
a failed notification with an error from that write (e.g. ENOENT for an unknown node, or
ENOSYS/EINVAL from an old kernel); there is no reply message, except that
:func:`retrieve` later yields a FUSE_NOTIFY_REPLY request.

Invalidation notifications must not be written from inside the handler of a request
that holds the inode's lock in the kernel (e.g. a LOOKUP in the same directory) or they
deadlock; send them from another thread or after the reply.
"""

from __future__ import annotations

import struct

from pykld.fuse.abi import FUSE_NAME_MAX, NotifyCode
from pykld.fuse.reply import Buffer

__all__ = ["delete", "inval_entry", "inval_inode", "poll", "retrieve", "store"]

_HDR = 16
_OUT_HEADER = struct.Struct("<IiQ")
_POLL = struct.Struct("<IiQQ")  # fuse_notify_poll_wakeup_out
_INVAL_INODE = struct.Struct("<IiQQqq")
_INVAL_ENTRY = struct.Struct("<IiQQII")
_DELETE = struct.Struct("<IiQQQI4x")
_STORE = struct.Struct("<IiQQQI4x")
_RETRIEVE = struct.Struct("<IiQQQQI4x")


def _check_name(name: bytes) -> None:
    if not name or len(name) > FUSE_NAME_MAX or b"\0" in name:
        raise ValueError(f"bad name {name!r}")


def poll(kh: int) -> bytes:
    """Wake the pollers of the POLL request that carried this ``kh`` (which asked for it with
    FUSE_POLL_SCHEDULE_NOTIFY). The kernel then polls again."""
    return _POLL.pack(_POLL.size, NotifyCode.POLL, 0, kh)


def inval_inode(nodeid: int, off: int, length: int) -> bytes:
    """Drop cached attributes of ``nodeid`` and its cached data from ``off`` for ``length``
    bytes (``length`` 0: to the end; ``off`` negative: attributes only)."""
    return _INVAL_INODE.pack(_INVAL_INODE.size, NotifyCode.INVAL_INODE, 0, nodeid, off, length)


def inval_entry(parent: int, name: bytes, flags: int = 0) -> bytes:
    """Drop the cached lookup of ``name`` in directory ``parent`` (flags: FUSE_EXPIRE_ONLY)."""
    _check_name(name)
    n = len(name)
    return (
        _INVAL_ENTRY.pack(_INVAL_ENTRY.size + n + 1, NotifyCode.INVAL_ENTRY, 0, parent, n, flags)
        + name
        + b"\0"
    )


def delete(parent: int, child: int, name: bytes) -> bytes:
    """``name`` (node ``child``) was removed from directory ``parent``: invalidate the entry
    and, if it is still cached for that child, delete it."""
    _check_name(name)
    n = len(name)
    return _DELETE.pack(_DELETE.size + n + 1, NotifyCode.DELETE, 0, parent, child, n) + name + b"\0"


def store(nodeid: int, offset: int, data: Buffer) -> list[Buffer]:
    """Put ``data`` into the kernel's page cache of ``nodeid`` at ``offset``. Zero-copy:
    returns ``[header, data]`` for os.writev."""
    n = data.nbytes if type(data) is memoryview else len(data)
    return [_STORE.pack(_STORE.size + n, NotifyCode.STORE, 0, nodeid, offset, n), data]


def retrieve(notify_unique: int, nodeid: int, offset: int, size: int) -> bytes:
    """Ask the kernel for cached data of ``nodeid``; it arrives as a FUSE_NOTIFY_REPLY
    request whose ``unique`` is ``notify_unique``."""
    return _RETRIEVE.pack(_RETRIEVE.size, NotifyCode.RETRIEVE, 0, notify_unique, nodeid, offset, size)
