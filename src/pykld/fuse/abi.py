"""Constants of the Linux FUSE/CUSE kernel ABI (``<linux/fuse.h>``, protocol 7.x).

Only numbers live here: opcodes, notification codes, flag bits, struct sizes and
limits. The struct layouts themselves are private to :mod:`pykld.fuse.request`,
:mod:`pykld.fuse.reply` and :mod:`pykld.fuse.notify`, which precompile them.

All structures are little-endian with the x86_64 layout (the kernel pads every
struct to a multiple of 8 bytes, so the layout is the same for 32- and 64-bit
userspace).
"""

from __future__ import annotations

import enum

# --------------------------------------------------------------------------- versions

#: Major protocol version; the kernel and we must agree on it exactly.
FUSE_KERNEL_VERSION = 7
#: Highest minor version this package implements. The minor spoken on a
#: connection is ``min(kernel_minor, OUR_MINOR)`` (see ``request.negotiate_minor``).
OUR_MINOR = 31
#: Lowest minor the reply encoders support (fuse_attr with blksize, 7.9, Linux 2.6.24).
#: CUSE itself requires 7.11.
MIN_MINOR = 9
#: CUSE refuses an init reply with a smaller minor.
CUSE_MIN_MINOR = 11

FUSE_ROOT_ID = 1

# --------------------------------------------------------------------------- opcodes


class Opcode(enum.IntEnum):
    """``enum fuse_opcode``."""

    LOOKUP = 1
    FORGET = 2  # no reply
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36  # no reply (except EAGAIN, see module notes)
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41  # no reply
    BATCH_FORGET = 42  # no reply
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51

    # CUSE specific
    CUSE_INIT = 4096

    # Reserved opcodes: they show up when the peer has the other endianness.
    CUSE_INIT_BSWAP_RESERVED = 1048576  # CUSE_INIT << 8
    FUSE_INIT_BSWAP_RESERVED = 436207616  # FUSE_INIT << 24


#: Requests the kernel expects no reply to. Replying to FORGET/BATCH_FORGET/NOTIFY_REPLY
#: is an error. An INTERRUPT may only be answered with EAGAIN ("target not seen yet, send the
#: interrupt again"); answering it with ENOSYS disables interrupts for the whole connection.
NO_REPLY_OPCODES = frozenset({Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT, Opcode.NOTIFY_REPLY})

#: Interrupt requests carry ``unique | FUSE_INT_REQ_BIT`` of the request they target.
FUSE_INT_REQ_BIT = 1


class NotifyCode(enum.IntEnum):
    """``enum fuse_notify_code``: sent in the ``error`` field of an unsolicited message."""

    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4
    RETRIEVE = 5
    DELETE = 6


# --------------------------------------------------------------------------- INIT flags

FUSE_ASYNC_READ = 1 << 0
FUSE_POSIX_LOCKS = 1 << 1
FUSE_FILE_OPS = 1 << 2
FUSE_ATOMIC_O_TRUNC = 1 << 3
FUSE_EXPORT_SUPPORT = 1 << 4
FUSE_BIG_WRITES = 1 << 5
FUSE_DONT_MASK = 1 << 6
FUSE_SPLICE_WRITE = 1 << 7
FUSE_SPLICE_MOVE = 1 << 8
FUSE_SPLICE_READ = 1 << 9
FUSE_FLOCK_LOCKS = 1 << 10
FUSE_HAS_IOCTL_DIR = 1 << 11
FUSE_AUTO_INVAL_DATA = 1 << 12
FUSE_DO_READDIRPLUS = 1 << 13
FUSE_READDIRPLUS_AUTO = 1 << 14
FUSE_ASYNC_DIO = 1 << 15
FUSE_WRITEBACK_CACHE = 1 << 16
FUSE_NO_OPEN_SUPPORT = 1 << 17
FUSE_PARALLEL_DIROPS = 1 << 18
FUSE_HANDLE_KILLPRIV = 1 << 19
FUSE_POSIX_ACL = 1 << 20
FUSE_ABORT_ERROR = 1 << 21
FUSE_MAX_PAGES = 1 << 22
FUSE_CACHE_SYMLINKS = 1 << 23
FUSE_NO_OPENDIR_SUPPORT = 1 << 24
FUSE_EXPLICIT_INVAL_DATA = 1 << 25
FUSE_MAP_ALIGNMENT = 1 << 26
FUSE_SUBMOUNTS = 1 << 27
FUSE_HANDLE_KILLPRIV_V2 = 1 << 28
FUSE_SETXATTR_EXT = 1 << 29
FUSE_INIT_EXT = 1 << 30
FUSE_INIT_RESERVED = 1 << 31
# Bits 32..63 travel in the flags2 field (minor >= 36, with FUSE_INIT_EXT).
FUSE_SECURITY_CTX = 1 << 32
FUSE_HAS_INODE_DAX = 1 << 33
FUSE_HAS_EXPIRE_ONLY = 1 << 35

# CUSE INIT flags
CUSE_UNRESTRICTED_IOCTL = 1 << 0

# --------------------------------------------------------------------------- per-op flags

# fuse_open_out.open_flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_CACHE_DIR = 1 << 3
FOPEN_STREAM = 1 << 4
FOPEN_NOFLUSH = 1 << 5
FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6

# fuse_setattr_in.valid
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_LOCKOWNER = 1 << 9
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

# fuse_release_in.release_flags
FUSE_RELEASE_FLUSH = 1 << 0
FUSE_RELEASE_FLOCK_UNLOCK = 1 << 1

# fuse_getattr_in.getattr_flags
FUSE_GETATTR_FH = 1 << 0

# fuse_lk_in.lk_flags
FUSE_LK_FLOCK = 1 << 0

# fuse_write_in.write_flags
FUSE_WRITE_CACHE = 1 << 0
FUSE_WRITE_LOCKOWNER = 1 << 1
FUSE_WRITE_KILL_SUIDGID = 1 << 2
FUSE_WRITE_KILL_PRIV = FUSE_WRITE_KILL_SUIDGID

# fuse_read_in.read_flags
FUSE_READ_LOCKOWNER = 1 << 1

# fuse_ioctl_in.flags / fuse_ioctl_out.flags
FUSE_IOCTL_COMPAT = 1 << 0
FUSE_IOCTL_UNRESTRICTED = 1 << 1
FUSE_IOCTL_RETRY = 1 << 2
FUSE_IOCTL_32BIT = 1 << 3
FUSE_IOCTL_DIR = 1 << 4
FUSE_IOCTL_COMPAT_X32 = 1 << 5
#: Maximum of in_iovs + out_iovs in a FUSE_IOCTL_RETRY reply.
FUSE_IOCTL_MAX_IOV = 256

# fuse_poll_in.flags
FUSE_POLL_SCHEDULE_NOTIFY = 1 << 0

# fuse_fsync_in.fsync_flags
FUSE_FSYNC_FDATASYNC = 1 << 0

# fuse_attr.flags
FUSE_ATTR_SUBMOUNT = 1 << 0
FUSE_ATTR_DAX = 1 << 1

# fuse_open_in.open_flags / fuse_create_in.open_flags
FUSE_OPEN_KILL_SUIDGID = 1 << 0

# fuse_setxattr_in.setxattr_flags
FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0

# fuse_notify_inval_entry_out.flags
FUSE_EXPIRE_ONLY = 1 << 0

# fuse_dirent.type: d_type values, ``(mode >> 12) & 0xF``
DT_UNKNOWN = 0
DT_FIFO = 1
DT_CHR = 2
DT_DIR = 4
DT_BLK = 6
DT_REG = 8
DT_LNK = 10
DT_SOCK = 12

# --------------------------------------------------------------------------- sizes and limits

IN_HEADER_SIZE = 40  # struct fuse_in_header
OUT_HEADER_SIZE = 16  # struct fuse_out_header
ATTR_SIZE = 88  # struct fuse_attr
ENTRY_OUT_SIZE = 128  # struct fuse_entry_out
ATTR_OUT_SIZE = 104  # struct fuse_attr_out
DIRENT_HEADER_SIZE = 24  # offsetof(struct fuse_dirent, name)
DIRENTPLUS_HEADER_SIZE = ENTRY_OUT_SIZE + DIRENT_HEADER_SIZE
INIT_OUT_SIZE = 64  # struct fuse_init_out, minor >= 23
FUSE_COMPAT_INIT_OUT_SIZE = 8  # minor < 5
FUSE_COMPAT_22_INIT_OUT_SIZE = 24  # 5 <= minor < 23
CUSE_INIT_OUT_SIZE = 72  # struct cuse_init_out
IOCTL_OUT_SIZE = 16  # struct fuse_ioctl_out
IOCTL_IOVEC_SIZE = 16  # struct fuse_ioctl_iovec

#: The kernel refuses reads from /dev/fuse with a smaller buffer.
FUSE_MIN_READ_BUFFER = 8192
#: Longest CUSE init info string ("DEVNAME=...\\0...").
CUSE_INIT_INFO_MAX = 4096
#: Longest name the kernel accepts in a dirent or an invalidation.
FUSE_NAME_MAX = 1024
#: Pages per request when FUSE_MAX_PAGES is not negotiated (and always for CUSE).
FUSE_DEFAULT_MAX_PAGES_PER_REQ = 32
#: Upper bound on init_out.max_pages (kernel's FUSE_MAX_MAX_PAGES).
FUSE_MAX_MAX_PAGES = 256
PAGE_SIZE = 4096

#: ioctl on /dev/fuse to clone a session fd for another reader thread: _IOR(229, 0, uint32_t).
FUSE_DEV_IOC_CLONE = 0x8004E500


def read_buffer_size(max_write: int, max_pages: int = FUSE_DEFAULT_MAX_PAGES_PER_REQ) -> int:
    """Size of the buffer to read requests from /dev/fuse or /dev/cuse into.

    The kernel rejects reads shorter than ``max(FUSE_MIN_READ_BUFFER, 80 + max_write)`` and
    fails any request that does not fit the buffer with EIO. Besides WRITE (``max_write``
    bytes of data) the biggest requests are IOCTLs, whose input is at most ``max_pages``
    pages. One extra page covers headers and argument structs.
    """
    return max(FUSE_MIN_READ_BUFFER, max(max_write, max_pages * PAGE_SIZE) + PAGE_SIZE)
