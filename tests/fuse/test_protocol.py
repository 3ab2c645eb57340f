"""Tests of the sans-I/O FUSE/CUSE protocol layer.

Messages are built here with struct.pack from the layouts in <linux/fuse.h>, independently
of the Structs inside pykld.fuse, and replies are decoded the same way.
"""

from __future__ import annotations

import array
import errno
import struct
from collections.abc import Callable
from typing import Any

import pytest

from pykld.fuse import abi, notify, reply, request
from pykld.fuse.abi import NotifyCode, Opcode
from pykld.fuse.request import ProtocolError, parse

IN_HDR = "<IIQQIIIHH"  # len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
OUT_HDR = "<IiQ"  # len, error, unique
UNIQUE = 0x1122334455667788
NODEID = 0x42
UID, GID, PID = 1000, 100, 4242


def msg(
    opcode: int, body: bytes = b"", *, unique: int = UNIQUE, length: int | None = None, extlen: int = 0
) -> bytes:
    total = 40 + len(body) if length is None else length
    return struct.pack(IN_HDR, total, opcode, unique, NODEID, UID, GID, PID, extlen, 0) + body


def out_header(b: bytes | bytearray) -> tuple[int, int, int]:
    length, err, unique = struct.unpack_from(OUT_HDR, b)
    return length, err, unique


# --------------------------------------------------------------------------- request bodies

SETATTR_BODY = struct.pack(
    "<IIQQQqqqIIIIIIII",
    abi.FATTR_MODE | abi.FATTR_ATIME | abi.FATTR_MTIME, 0, 7, 4096, 99,
    10, 20, 30, 1, 2, 3, 0o100644, 0, 1001, 1002, 0,
)  # fmt: skip
WRITE_DATA = b"hi rust\n"
IOCTL_DATA = b"\x01\x02\x03\x04"

# (opcode, body, expected args); expected None for ops without arguments.
CASES: list[tuple[int, bytes, Any]] = [
    (Opcode.INIT, struct.pack("<IIIII44x", 7, 38, 131072, abi.FUSE_ASYNC_READ | abi.FUSE_INIT_EXT, 0b1011),
     request.Init(7, 38, 131072, abi.FUSE_ASYNC_READ | abi.FUSE_INIT_EXT | (0b1011 << 32))),
    (Opcode.CUSE_INIT, struct.pack("<IIII", 7, 38, 0, abi.CUSE_UNRESTRICTED_IOCTL),
     request.CuseInit(7, 38, abi.CUSE_UNRESTRICTED_IOCTL)),
    (Opcode.LOOKUP, b"rustmodule\0", request.Lookup(b"rustmodule")),
    (Opcode.FORGET, struct.pack("<Q", 3), request.Forget(3)),
    (Opcode.BATCH_FORGET, struct.pack("<II", 2, 0) + struct.pack("<QQQQ", 5, 1, 6, 2),
     request.BatchForget([(5, 1), (6, 2)])),
    (Opcode.GETATTR, struct.pack("<IIQ", abi.FUSE_GETATTR_FH, 0, 77), request.Getattr(abi.FUSE_GETATTR_FH, 77)),
    (Opcode.SETATTR, SETATTR_BODY,
     request.Setattr(abi.FATTR_MODE | abi.FATTR_ATIME | abi.FATTR_MTIME, 7, 4096, 0o100644, 1001, 1002,
                     10_000_000_001, 20_000_000_002, 30_000_000_003, 99)),
    (Opcode.READLINK, b"", None),
    (Opcode.SYMLINK, b"link\0target/x\0", request.Symlink(b"link", b"target/x")),
    (Opcode.MKNOD, struct.pack("<IIII", 0o20660, 0x0501, 0o022, 0) + b"dev\0",
     request.Mknod(b"dev", 0o20660, 0x0501, 0o022)),
    (Opcode.MKDIR, struct.pack("<II", 0o755, 0o022) + b"bus\0", request.Mkdir(b"bus", 0o755, 0o022)),
    (Opcode.UNLINK, b"a\0", request.Unlink(b"a")),
    (Opcode.RMDIR, b"d\0", request.Rmdir(b"d")),
    (Opcode.RENAME, struct.pack("<Q", 9) + b"old\0new\0", request.Rename(9, b"old", b"new", 0)),
    (Opcode.RENAME2, struct.pack("<QII", 9, 1, 0) + b"old\0new\0", request.Rename(9, b"old", b"new", 1)),
    (Opcode.LINK, struct.pack("<Q", 12) + b"hard\0", request.Link(12, b"hard")),
    (Opcode.OPEN, struct.pack("<II", 0o2 | 0o4000, 0), request.Open(0o2 | 0o4000, 0)),
    (Opcode.OPENDIR, struct.pack("<II", 0o200000, 0), request.Open(0o200000, 0)),
    (Opcode.READ, struct.pack("<QQIIQII", 5, 1 << 40, 4096, 2, 0xABC, 0o2, 0),
     request.Read(5, 1 << 40, 4096, 2, 0xABC, 0o2)),
    (Opcode.READDIR, struct.pack("<QQIIQII", 1, 3, 4096, 0, 0, 0, 0), request.Read(1, 3, 4096, 0, 0, 0)),
    (Opcode.READDIRPLUS, struct.pack("<QQIIQII", 1, 0, 8192, 0, 0, 0, 0), request.Read(1, 0, 8192, 0, 0, 0)),
    (Opcode.WRITE, struct.pack("<QQIIQII", 5, 100, len(WRITE_DATA), 1, 0xDEF, 0o1, 0) + WRITE_DATA,
     request.Write(5, 100, len(WRITE_DATA), 1, 0xDEF, 0o1, memoryview(WRITE_DATA))),
    (Opcode.STATFS, b"", None),
    (Opcode.RELEASE, struct.pack("<QIIQ", 5, 0o2, abi.FUSE_RELEASE_FLUSH, 0xAA),
     request.Release(5, 0o2, abi.FUSE_RELEASE_FLUSH, 0xAA)),
    (Opcode.RELEASEDIR, struct.pack("<QIIQ", 6, 0, 0, 0), request.Release(6, 0, 0, 0)),
    (Opcode.FSYNC, struct.pack("<QII", 5, abi.FUSE_FSYNC_FDATASYNC, 0), request.Fsync(5, 1)),
    (Opcode.FSYNCDIR, struct.pack("<QII", 6, 0, 0), request.Fsync(6, 0)),
    (Opcode.SETXATTR, struct.pack("<II", 3, 1) + b"user.x\0abc", request.Setxattr(b"user.x", b"abc", 1)),
    (Opcode.GETXATTR, struct.pack("<II", 64, 0) + b"user.x\0", request.Getxattr(b"user.x", 64)),
    (Opcode.LISTXATTR, struct.pack("<II", 0, 0), request.Listxattr(0)),
    (Opcode.REMOVEXATTR, b"user.x\0", request.Removexattr(b"user.x")),
    (Opcode.FLUSH, struct.pack("<QIIQ", 5, 0, 0, 0xBEEF), request.Flush(5, 0xBEEF)),
    (Opcode.GETLK, struct.pack("<QQQQIIII", 5, 7, 0, 99, 1, 321, 0, 0), request.Lk(5, 7, 0, 99, 1, 321, 0)),
    (Opcode.SETLK, struct.pack("<QQQQIIII", 5, 7, 1, 2, 0, 1, 1, 0), request.Lk(5, 7, 1, 2, 0, 1, 1)),
    (Opcode.SETLKW, struct.pack("<QQQQIIII", 5, 7, 1, 2, 0, 1, 0, 0), request.Lk(5, 7, 1, 2, 0, 1, 0)),
    (Opcode.ACCESS, struct.pack("<II", 0o4, 0), request.Access(0o4)),
    (Opcode.CREATE, struct.pack("<IIII", 0o1101, 0o100600, 0o077, 0) + b"new\0",
     request.Create(b"new", 0o1101, 0o100600, 0o077, 0)),
    (Opcode.TMPFILE, struct.pack("<IIII", 0o2, 0o100600, 0, 0) + b"#1\0", request.Create(b"#1", 0o2, 0o100600, 0, 0)),
    (Opcode.INTERRUPT, struct.pack("<Q", 0x5000), request.Interrupt(0x5000)),
    (Opcode.BMAP, struct.pack("<QII", 17, 512, 0), request.Bmap(17, 512)),
    (Opcode.DESTROY, b"", None),
    (Opcode.IOCTL,
     struct.pack("<QIIQII", 5, abi.FUSE_IOCTL_UNRESTRICTED, 0xC0047001, 0x7FFF0000, len(IOCTL_DATA), 8) + IOCTL_DATA,
     request.Ioctl(5, abi.FUSE_IOCTL_UNRESTRICTED, 0xC0047001, 0x7FFF0000, len(IOCTL_DATA), 8, memoryview(IOCTL_DATA))),
    (Opcode.POLL, struct.pack("<QQII", 5, 0x99, abi.FUSE_POLL_SCHEDULE_NOTIFY, 0x1),
     request.Poll(5, 0x99, abi.FUSE_POLL_SCHEDULE_NOTIFY, 1)),
    (Opcode.NOTIFY_REPLY, struct.pack("<QQIIQQ", 0, 4096, 3, 0, 0, 0) + b"xyz",
     request.NotifyReply(4096, 3, memoryview(b"xyz"))),
    (Opcode.FALLOCATE, struct.pack("<QQQII", 5, 10, 20, 1, 0), request.Fallocate(5, 10, 20, 1)),
    (Opcode.LSEEK, struct.pack("<QQII", 5, 10, 3, 0), request.Lseek(5, 10, 3)),
    (Opcode.COPY_FILE_RANGE, struct.pack("<QQQQQQQ", 1, 2, 3, 4, 5, 6, 0),
     request.CopyFileRange(1, 2, 3, 4, 5, 6, 0)),
    (Opcode.SETUPMAPPING, struct.pack("<QQQQQ", 1, 2, 3, 4, 5), None),
    (Opcode.REMOVEMAPPING, struct.pack("<I", 0), None),
    (Opcode.SYNCFS, struct.pack("<Q", 0), None),
]  # fmt: skip

RESERVED = {Opcode.CUSE_INIT_BSWAP_RESERVED, Opcode.FUSE_INIT_BSWAP_RESERVED}


def test_cases_cover_every_opcode() -> None:
    assert {op for op, _, _ in CASES} == set(Opcode) - RESERVED


@pytest.mark.parametrize(("opcode", "body", "expected"), CASES, ids=[Opcode(c[0]).name for c in CASES])
def test_decode_round_trip(opcode: int, body: bytes, expected: Any) -> None:
    req = parse(msg(opcode, body))
    assert (req.opcode, req.unique, req.nodeid, req.uid, req.gid, req.pid) == (
        opcode,
        UNIQUE,
        NODEID,
        UID,
        GID,
        PID,
    )
    assert req.args == expected
    if expected is not None:
        assert type(req.args) is type(expected)
    assert Opcode(opcode).name in repr(req)


@pytest.mark.parametrize(
    ("opcode", "body"),
    [(op, body) for op, body, exp in CASES if exp is not None and op != Opcode.INIT],
    ids=[Opcode(op).name for op, _, exp in CASES if exp is not None and op != Opcode.INIT],
)
def test_truncated_body_is_einval_with_unique(opcode: int, body: bytes) -> None:
    with pytest.raises(ProtocolError) as ei:
        parse(msg(opcode, body[:-1]))
    assert ei.value.unique == UNIQUE
    assert ei.value.errno == errno.EINVAL


def test_init_sizes_from_older_kernels() -> None:
    # 7.23..7.35: 16-byte fuse_init_in, no flags2 even with bit 30 set by accident of history
    assert parse(msg(Opcode.INIT, struct.pack("<IIII", 7, 31, 4096, 0x1234))).args == request.Init(
        7, 31, 4096, 0x1234
    )
    # before 7.6: only major and minor
    assert parse(msg(Opcode.INIT, struct.pack("<II", 7, 5))).args == request.Init(7, 5, 0, 0)
    # 7.36+ without FUSE_INIT_EXT: flags2 ignored
    body = struct.pack("<IIIII44x", 7, 36, 0, abi.FUSE_ASYNC_READ, 0xFFFF)
    assert parse(msg(Opcode.INIT, body)).args == request.Init(7, 36, 0, abi.FUSE_ASYNC_READ)
    with pytest.raises(ProtocolError) as ei:
        parse(msg(Opcode.INIT, struct.pack("<I", 7)))
    assert (ei.value.unique, ei.value.errno) == (UNIQUE, errno.EINVAL)


def test_negotiate_minor() -> None:
    assert request.negotiate_minor(request.Init(7, 38, 0, 0)) == abi.OUR_MINOR
    assert request.negotiate_minor(request.Init(7, 26, 0, 0)) == 26
    assert request.negotiate_minor(request.CuseInit(7, 40, 0)) == abi.OUR_MINOR
    assert request.negotiate_minor(request.Init(8, 0, 0, 0)) == abi.OUR_MINOR
    with pytest.raises(ProtocolError) as ei:
        request.negotiate_minor(request.Init(6, 1, 0, 0))
    assert ei.value.errno == errno.EPROTO


# --------------------------------------------------------------------------- framing errors


@pytest.mark.parametrize("n", [0, 1, 39])
def test_short_header_has_no_unique(n: int) -> None:
    raw = msg(Opcode.READ, struct.pack("<QQIIQII", 0, 0, 1, 0, 0, 0, 0))
    with pytest.raises(ProtocolError) as ei:
        parse(raw[:n])
    assert ei.value.unique is None
    assert ei.value.errno == errno.EIO


def test_nbytes_beyond_buffer() -> None:
    with pytest.raises(ProtocolError) as ei:
        parse(msg(Opcode.STATFS), 100)
    assert ei.value.unique is None


def test_header_len_larger_than_received() -> None:
    raw = msg(Opcode.WRITE, struct.pack("<QQIIQII", 1, 0, 4, 0, 0, 0, 0) + b"abcd")
    with pytest.raises(ProtocolError) as ei:
        parse(raw[:-2])  # truncated read
    assert (ei.value.unique, ei.value.errno) == (UNIQUE, errno.EIO)


def test_header_len_smaller_than_received() -> None:
    raw = msg(Opcode.LOOKUP, b"x\0", length=41)
    with pytest.raises(ProtocolError) as ei:
        parse(raw)
    assert (ei.value.unique, ei.value.errno) == (UNIQUE, errno.EIO)


def test_header_len_smaller_than_header() -> None:
    with pytest.raises(ProtocolError) as ei:
        parse(msg(Opcode.STATFS, length=16) + bytes(0))
    assert ei.value.unique == UNIQUE


def test_write_size_exceeding_data() -> None:
    body = struct.pack("<QQIIQII", 1, 0, 100, 0, 0, 0, 0) + b"short"
    with pytest.raises(ProtocolError) as ei:
        parse(msg(Opcode.WRITE, body))
    assert (ei.value.unique, ei.value.errno) == (UNIQUE, errno.EINVAL)


def test_ioctl_in_size_exceeding_data() -> None:
    body = struct.pack("<QIIQII", 1, 0, 0x5401, 0, 64, 0) + b"1234"
    with pytest.raises(ProtocolError) as ei:
        parse(msg(Opcode.IOCTL, body))
    assert ei.value.unique == UNIQUE


def test_batch_forget_count_exceeding_data() -> None:
    body = struct.pack("<II", 3, 0) + struct.pack("<QQ", 1, 1)
    with pytest.raises(ProtocolError) as ei:
        parse(msg(Opcode.BATCH_FORGET, body))
    assert ei.value.unique == UNIQUE


@pytest.mark.parametrize(
    ("opcode", "body"),
    [
        (Opcode.LOOKUP, b"no-nul"),
        (Opcode.SYMLINK, b"one\0two"),
        (Opcode.RENAME, struct.pack("<Q", 1) + b"old\0"),
        (Opcode.MKDIR, struct.pack("<II", 0, 0) + b"d"),
        (Opcode.SETXATTR, struct.pack("<II", 10, 0) + b"user.x\0abc"),
    ],
)
def test_malformed_names_and_values(opcode: int, body: bytes) -> None:
    with pytest.raises(ProtocolError) as ei:
        parse(msg(opcode, body))
    assert (ei.value.unique, ei.value.errno) == (UNIQUE, errno.EINVAL)


@pytest.mark.parametrize("opcode", [7, 19, 52, 999, 4097, 0xFFFFFFFF, *sorted(RESERVED)])
def test_unknown_opcode_parses_with_args_none(opcode: int) -> None:
    req = parse(msg(opcode, b"\xff" * 13))
    assert req.opcode == opcode
    assert req.unique == UNIQUE
    assert req.args is None
    repr(req)


def test_extensions_are_not_part_of_the_body() -> None:
    ext = struct.pack("<II", 8, 32)  # one fuse_ext_header, 8 bytes
    req = parse(msg(Opcode.WRITE, struct.pack("<QQIIQII", 1, 0, 2, 0, 0, 0, 0) + b"ok" + ext, extlen=1))
    assert isinstance(req.args, request.Write)
    assert bytes(req.args.data) == b"ok"
    req = parse(msg(Opcode.LOOKUP, b"name\0\0\0\0" + ext, extlen=1))
    assert req.args == request.Lookup(b"name")
    with pytest.raises(ProtocolError) as ei:
        parse(msg(Opcode.LOOKUP, b"name\0\0\0\0", extlen=2))
    assert ei.value.unique == UNIQUE


# --------------------------------------------------------------------------- buffers


def test_reused_buffer_and_zero_copy_write_data() -> None:
    raw = msg(Opcode.WRITE, struct.pack("<QQIIQII", 3, 0, 5, 0, 0, 0, 0) + b"hello")
    buf = bytearray(1 << 20)
    buf[: len(raw)] = raw
    req = parse(memoryview(buf), len(raw))
    assert isinstance(req.args, request.Write)
    data = req.args.data
    assert isinstance(data, memoryview)
    assert data.obj is buf
    assert bytes(data) == b"hello"
    buf[80] = ord("j")
    assert bytes(data) == b"jello"  # a view, not a copy


def test_ioctl_data_is_a_view() -> None:
    buf = bytearray(msg(Opcode.IOCTL, struct.pack("<QIIQII", 1, 0, 0x5401, 0, 2, 0) + b"ab"))
    req = parse(buf)
    assert isinstance(req.args, request.Ioctl)
    assert req.args.data.obj is buf


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_accepts_bytes_bytearray_memoryview(kind: Callable[[bytes], Any]) -> None:
    req = parse(kind(msg(Opcode.ACCESS, struct.pack("<II", 2, 0))))
    assert req.args == request.Access(2)


def test_accepts_non_byte_memoryview_format() -> None:
    raw = msg(Opcode.FORGET, struct.pack("<Q", 9))
    req = parse(memoryview(raw).cast("I"))
    assert req.args == request.Forget(9)
    raw = msg(Opcode.WRITE, struct.pack("<QQIIQII", 1, 0, 4, 0, 0, 0, 0) + b"abcd")
    req = parse(memoryview(raw).cast("I"))
    assert isinstance(req.args, request.Write)
    assert bytes(req.args.data) == b"abcd"


# --------------------------------------------------------------------------- older minors


def test_compat_layouts_for_old_minors() -> None:
    read = parse(msg(Opcode.READ, struct.pack("<QQII", 5, 7, 100, 0)), minor=8)
    assert read.args == request.Read(5, 7, 100, 0, 0, 0)
    write = parse(msg(Opcode.WRITE, struct.pack("<QQII", 5, 7, 3, 0) + b"abc"), minor=8)
    assert write.args == request.Write(5, 7, 3, 0, 0, 0, memoryview(b"abc"))
    assert parse(msg(Opcode.GETATTR), minor=8).args == request.Getattr(0, 0)
    mknod = parse(msg(Opcode.MKNOD, struct.pack("<II", 0o20600, 3) + b"n\0"), minor=11)
    assert mknod.args == request.Mknod(b"n", 0o20600, 3, 0)
    create = parse(msg(Opcode.CREATE, struct.pack("<II", 0o2, 0o100600) + b"c\0"), minor=11)
    assert create.args == request.Create(b"c", 0o2, 0o100600, 0, 0)
    release = parse(msg(Opcode.RELEASE, struct.pack("<QII", 5, 2, 0)), minor=7)
    assert release.args == request.Release(5, 2, 0, 0)
    # and a modern minor insists on the full structs
    with pytest.raises(ProtocolError):
        parse(msg(Opcode.READ, struct.pack("<QQII", 5, 7, 100, 0)))


# --------------------------------------------------------------------------- replies

ATTR = reply.Attr(
    ino=42, size=1234, blocks=3, atime=1_700_000_000_123_456_789, mtime=-1, ctime=5,
    mode=0o20660, nlink=1, uid=1000, gid=100, rdev=0x0501, blksize=512, flags=0,
)  # fmt: skip
ATTR_FMT = "QQQqqqIIIIIIIIII"


def check_attr(fields: tuple[int, ...]) -> None:
    assert fields == (
        42, 1234, 3, 1_700_000_000, -1, 0, 123_456_789, 999_999_999, 5,
        0o20660, 1, 1000, 100, 0x0501, 512, 0,
    )  # fmt: skip


BYTES_REPLIES: list[Callable[[int], bytes]] = [
    lambda u: reply.empty(u),
    lambda u: reply.readlink(u, b"/target"),
    lambda u: reply.init(u, minor=31, max_readahead=0, flags=0, max_write=65536),
    lambda u: reply.init(u, minor=22, max_readahead=0, flags=0, max_write=65536),
    lambda u: reply.init(u, minor=4, max_readahead=0, flags=0, max_write=65536),
    lambda u: reply.cuse_init(
        u, minor=31, flags=0, max_read=1, max_write=1, dev_major=0, dev_minor=0, devname="x"
    ),
    lambda u: reply.entry(u, 2, ATTR, 1.0, 1.0),
    lambda u: reply.negative_entry(u, 1.0),
    lambda u: reply.attr(u, ATTR, 1.0),
    lambda u: reply.open(u, 1, abi.FOPEN_DIRECT_IO),
    lambda u: reply.create(u, 2, ATTR, 1.0, 1.0, 3, 0),
    lambda u: reply.write(u, 10),
    lambda u: reply.statfs(u),
    lambda u: reply.poll(u, 1),
    lambda u: reply.xattr_size(u, 5),
    lambda u: reply.lseek(u, 5),
    lambda u: reply.bmap(u, 5),
    lambda u: reply.lk(u, 0, 10, 1, 99),
    lambda u: reply.ioctl(u, 0, b"abc"),
    lambda u: reply.ioctl(u, -1),
    lambda u: reply.ioctl_retry(u, [(1, 2)], [(3, 4), (5, 6)]),
    lambda u: reply.dirents(u, [reply.DirEntry(1, 1, abi.DT_DIR, b".")], 4096),
    lambda u: reply.direntplus(u, [(reply.DirEntry(2, 1, abi.DT_CHR, b"rustmodule"), ATTR)], 4096, 1.0, 1.0),
]


@pytest.mark.parametrize("encode", BYTES_REPLIES)
def test_reply_header_len_is_total(encode: Callable[[int], bytes]) -> None:
    b = encode(UNIQUE)
    assert isinstance(b, bytes)
    assert out_header(b) == (len(b), 0, UNIQUE)


@pytest.mark.parametrize("err", [errno.ENOENT, errno.EIO, errno.ENOSYS, errno.EINTR, errno.ENOTTY, 511])
def test_error_reply_carries_negative_errno(err: int) -> None:
    b = reply.error(UNIQUE, err)
    assert len(b) == 16
    assert out_header(b) == (16, -err, UNIQUE)


@pytest.mark.parametrize("err", [0, -5, 512, 100000])
def test_error_reply_rejects_errnos_the_kernel_refuses(err: int) -> None:
    with pytest.raises(ValueError):
        reply.error(UNIQUE, err)


def test_data_reply_is_zero_copy() -> None:
    a = b"hello "
    b = bytearray(b"world")
    c = memoryview(bytearray(100))[10:30]
    d = memoryview(array.array("I", [1, 2, 3]))  # 12 bytes, len() == 3
    out = reply.data(UNIQUE, [a, b, c, d])
    assert out[1] is a and out[2] is b and out[3] is c and out[4] is d
    total = sum(memoryview(x).nbytes for x in out)
    assert out_header(bytes(out[0])) == (total, 0, UNIQUE)
    assert total == 16 + 6 + 5 + 20 + 12
    empty = reply.data(UNIQUE, [])
    assert empty == [reply.empty(UNIQUE)]


def test_entry_layout() -> None:
    b = reply.entry(UNIQUE, 77, ATTR, 1.5, 0.25, generation=3)
    assert len(b) == 16 + 40 + 88
    nodeid, gen, ev, av, evn, avn = struct.unpack_from("<QQQQII", b, 16)
    assert (nodeid, gen, ev, av, evn, avn) == (77, 3, 1, 0, 500_000_000, 250_000_000)
    check_attr(struct.unpack_from("<" + ATTR_FMT, b, 56))


def test_timeouts_clamped() -> None:
    b = reply.entry(UNIQUE, 1, ATTR, -5.0, float("inf"))
    _, _, ev, av, evn, avn = struct.unpack_from("<QQQQII", b, 16)
    assert (ev, evn) == (0, 0)
    assert av == 1 << 32 and avn == 0


def test_negative_entry() -> None:
    b = reply.negative_entry(UNIQUE, 2.0)
    nodeid, _, ev, _, _, _ = struct.unpack_from("<QQQQII", b, 16)
    assert (nodeid, ev) == (0, 2)


def test_attr_layout() -> None:
    b = reply.attr(UNIQUE, ATTR, 3.75)
    assert len(b) == 16 + 16 + 88
    assert struct.unpack_from("<QII", b, 16) == (3, 750_000_000, 0)
    check_attr(struct.unpack_from("<" + ATTR_FMT, b, 32))


def test_open_and_create_layout() -> None:
    b = reply.open(UNIQUE, 0xFEED, abi.FOPEN_DIRECT_IO | abi.FOPEN_NONSEEKABLE)
    assert len(b) == 32
    assert struct.unpack_from("<QII", b, 16) == (0xFEED, abi.FOPEN_DIRECT_IO | abi.FOPEN_NONSEEKABLE, 0)
    c = reply.create(UNIQUE, 9, ATTR, 1.0, 1.0, 0xFEED, abi.FOPEN_KEEP_CACHE)
    assert len(c) == 16 + 128 + 16
    assert struct.unpack_from("<Q", c, 16) == (9,)
    check_attr(struct.unpack_from("<" + ATTR_FMT, c, 56))
    assert struct.unpack_from("<QII", c, 144) == (0xFEED, abi.FOPEN_KEEP_CACHE, 0)


def test_small_fixed_replies() -> None:
    assert struct.unpack_from("<II", reply.write(UNIQUE, 8), 16) == (8, 0)
    assert struct.unpack_from("<II", reply.poll(UNIQUE, 0x41), 16) == (0x41, 0)
    assert struct.unpack_from("<II", reply.xattr_size(UNIQUE, 33), 16) == (33, 0)
    assert struct.unpack_from("<Q", reply.lseek(UNIQUE, 1 << 40), 16) == (1 << 40,)
    assert struct.unpack_from("<QQII", reply.lk(UNIQUE, 1, 2, 3, 4), 16) == (1, 2, 3, 4)
    assert reply.readlink(UNIQUE, b"tgt")[16:] == b"tgt"
    s = reply.statfs(
        UNIQUE, blocks=10, bfree=5, bavail=4, files=3, ffree=2, bsize=512, namelen=200, frsize=1024
    )
    assert len(s) == 16 + 80
    assert struct.unpack_from("<QQQQQIIII", s, 16) == (10, 5, 4, 3, 2, 512, 200, 1024, 0)
    assert s[16 + 56 :] == bytes(24)


@pytest.mark.parametrize(("minor", "size"), [(4, 8), (5, 24), (22, 24), (23, 64), (31, 64), (38, 64)])
def test_init_reply_size_matches_minor(minor: int, size: int) -> None:
    b = reply.init(UNIQUE, minor=minor, max_readahead=131072, flags=abi.FUSE_ASYNC_READ, max_background=12,
                   congestion_threshold=9, max_write=1 << 20, time_gran=1)  # fmt: skip
    assert len(b) == 16 + size
    assert struct.unpack_from("<II", b, 16) == (7, minor)
    if size >= 24:
        fields = struct.unpack_from("<IIHHI", b, 24)
        assert fields == (131072, abi.FUSE_ASYNC_READ, 12, 9, 1 << 20)
    if size == 64:
        time_gran, max_pages, map_alignment, flags2 = struct.unpack_from("<IHHI", b, 40)
        assert (time_gran, max_pages, map_alignment, flags2) == (1, 0, 0, 0)
        assert b[16 + 36 :] == bytes(28)


def test_init_reply_max_pages_and_flags2() -> None:
    b = reply.init(UNIQUE, minor=31, max_readahead=0, flags=abi.FUSE_MAX_PAGES, max_write=1 << 20)
    assert struct.unpack_from("<H", b, 16 + 28) == (256,)
    b = reply.init(UNIQUE, minor=31, max_readahead=0, flags=abi.FUSE_MAX_PAGES, max_write=5000)
    assert struct.unpack_from("<H", b, 16 + 28) == (2,)
    b = reply.init(UNIQUE, minor=31, max_readahead=0, flags=abi.FUSE_MAX_PAGES, max_write=1, max_pages=7)
    assert struct.unpack_from("<H", b, 16 + 28) == (7,)
    # flags2 only from 7.36, and then with FUSE_INIT_EXT
    b = reply.init(
        UNIQUE, minor=38, max_readahead=0, flags=abi.FUSE_ASYNC_READ | abi.FUSE_SECURITY_CTX, max_write=4096
    )
    flags, flags2 = struct.unpack_from("<I", b, 16 + 12)[0], struct.unpack_from("<I", b, 16 + 32)[0]
    assert flags == abi.FUSE_ASYNC_READ | abi.FUSE_INIT_EXT
    assert flags2 == 1
    b = reply.init(
        UNIQUE, minor=31, max_readahead=0, flags=abi.FUSE_ASYNC_READ | abi.FUSE_SECURITY_CTX, max_write=4096
    )
    assert struct.unpack_from("<I", b, 16 + 12)[0] == abi.FUSE_ASYNC_READ
    assert struct.unpack_from("<I", b, 16 + 32)[0] == 0


def test_cuse_init_reply_layout() -> None:
    b = reply.cuse_init(UNIQUE, minor=31, flags=abi.CUSE_UNRESTRICTED_IOCTL, max_read=65536, max_write=32768,
                        dev_major=240, dev_minor=3, devname="bus/i2c-1")  # fmt: skip
    assert out_header(b) == (len(b), 0, UNIQUE)
    assert struct.unpack_from("<IIIIIIII", b, 16) == (7, 31, 0, 1, 65536, 32768, 240, 3)
    assert b[16 + 32 : 16 + 72] == bytes(40)
    assert b[16 + 72 :] == b"DEVNAME=bus/i2c-1\0"


@pytest.mark.parametrize("name", ["", "a\0b", "x" * 4096])
def test_cuse_init_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        reply.cuse_init(
            UNIQUE, minor=31, flags=0, max_read=1, max_write=1, dev_major=0, dev_minor=0, devname=name
        )


def test_ioctl_reply_layout() -> None:
    b = reply.ioctl(UNIQUE, -22, memoryview(b"outdata"))
    assert struct.unpack_from("<iIII", b, 16) == (-22, 0, 0, 0)
    assert b[32:] == b"outdata"
    assert out_header(b)[0] == 16 + 16 + 7


def test_ioctl_retry_layout() -> None:
    ins = [(0x7000, 4), (0x8000, 16)]
    outs = [(0x9000, 8)]
    b = reply.ioctl_retry(UNIQUE, ins, outs)
    assert len(b) == 16 + 16 + 3 * 16
    assert out_header(b) == (len(b), 0, UNIQUE)
    assert struct.unpack_from("<iIII", b, 16) == (0, abi.FUSE_IOCTL_RETRY, 2, 1)
    assert list(struct.iter_unpack("<QQ", b[32:])) == [*ins, *outs]


def test_ioctl_retry_iov_limit() -> None:
    half = [(0, 1)] * 128
    assert len(reply.ioctl_retry(UNIQUE, half, half)) == 32 + 256 * 16
    with pytest.raises(ValueError):
        reply.ioctl_retry(UNIQUE, half, [*half, (0, 1)])


def decode_dirents(payload: bytes) -> list[tuple[int, int, int, bytes]]:
    out = []
    pos = 0
    while pos < len(payload):
        ino, off, namelen, typ = struct.unpack_from("<QQII", payload, pos)
        name = payload[pos + 24 : pos + 24 + namelen]
        reclen = (24 + namelen + 7) // 8 * 8
        assert payload[pos + 24 + namelen : pos + reclen] == bytes(reclen - 24 - namelen)  # zero padding
        out.append((ino, off, typ, name))
        pos += reclen
    assert pos == len(payload)
    return out


ENTRIES = [
    reply.DirEntry(1, 1, abi.DT_DIR, b"."),
    reply.DirEntry(1, 2, abi.DT_DIR, b".."),
    reply.DirEntry(5, 3, abi.DT_CHR, b"rustmodule"),  # 24 + 10 -> 40
    reply.DirEntry(6, 4, abi.DT_DIR, b"bus"),
    reply.DirEntry(7, 5, abi.DT_CHR, b"12345678"),  # 24 + 8 -> 32, no padding
]


def test_dirents_all_fit() -> None:
    b = reply.dirents(UNIQUE, ENTRIES, 4096)
    assert out_header(b) == (len(b), 0, UNIQUE)
    assert (len(b) - 16) % 8 == 0
    assert decode_dirents(b[16:]) == [tuple(e) for e in ENTRIES]


@pytest.mark.parametrize("limit", range(0, 170, 3))
def test_dirents_honour_size_limit(limit: int) -> None:
    b = reply.dirents(UNIQUE, iter(ENTRIES), limit)
    payload = b[16:]
    assert len(payload) <= limit
    got = decode_dirents(payload)
    assert got == [tuple(e) for e in ENTRIES[: len(got)]]
    sizes = [(24 + len(e.name) + 7) // 8 * 8 for e in ENTRIES]
    if len(got) < len(ENTRIES):  # stopped only because the next record did not fit
        assert sum(sizes[: len(got) + 1]) > limit


def test_dirents_exact_fit_and_plain_tuples() -> None:
    b = reply.dirents(UNIQUE, [(9, 1, abi.DT_REG, b"12345678")], 32)
    assert len(b) == 16 + 32
    assert reply.dirents(UNIQUE, [(9, 1, abi.DT_REG, b"12345678")], 31) == reply.empty(UNIQUE)


@pytest.mark.parametrize("name", [b"", b"a/b", b"a\0b", b"x" * 1025])
def test_dirents_reject_bad_names(name: bytes) -> None:
    with pytest.raises(ValueError):
        reply.dirents(UNIQUE, [(1, 1, 0, name)], 1 << 16)


def test_direntplus_layout_and_limit() -> None:
    entries = [(ENTRIES[2], ATTR), (ENTRIES[3], None)]
    b = reply.direntplus(UNIQUE, entries, 4096, 1.0, 2.0)
    assert out_header(b) == (len(b), 0, UNIQUE)
    first = (152 + 10 + 7) // 8 * 8
    assert len(b) == 16 + first + (152 + 3 + 7) // 8 * 8
    nodeid, gen, ev, av, _, _ = struct.unpack_from("<QQQQII", b, 16)
    assert (nodeid, gen, ev, av) == (5, 0, 1, 2)
    check_attr(struct.unpack_from("<" + ATTR_FMT, b, 16 + 40))
    assert struct.unpack_from("<QQII", b, 16 + 128) == (5, 3, 10, abi.DT_CHR)
    assert b[16 + 152 : 16 + 162] == b"rustmodule"
    assert struct.unpack_from("<Q", b, 16 + first) == (0,)  # no attributes: nodeid 0
    assert struct.unpack_from("<QQII", b, 16 + first + 128) == (6, 4, 3, abi.DT_DIR)
    assert len(reply.direntplus(UNIQUE, entries, first, 1.0, 1.0)) == 16 + first
    assert len(reply.direntplus(UNIQUE, entries, first - 1, 1.0, 1.0)) == 16


# --------------------------------------------------------------------------- notifications


def test_notify_poll() -> None:
    b = notify.poll(0xABCDEF)
    assert struct.unpack("<IiQQ", b) == (24, NotifyCode.POLL, 0, 0xABCDEF)


def test_notify_inval_inode() -> None:
    b = notify.inval_inode(42, -1, 0)
    assert struct.unpack("<IiQQqq", b) == (40, NotifyCode.INVAL_INODE, 0, 42, -1, 0)


def test_notify_inval_entry() -> None:
    b = notify.inval_entry(1, b"rustmodule")
    assert out_header(b) == (len(b), NotifyCode.INVAL_ENTRY, 0)
    assert struct.unpack_from("<QII", b, 16) == (1, 10, 0)
    assert b[32:] == b"rustmodule\0"
    assert len(b) == 16 + 16 + 11
    assert struct.unpack_from("<QII", notify.inval_entry(1, b"x", abi.FUSE_EXPIRE_ONLY), 16)[2] == 1


def test_notify_delete() -> None:
    b = notify.delete(1, 5, b"gone")
    assert out_header(b) == (len(b), NotifyCode.DELETE, 0)
    assert struct.unpack_from("<QQII", b, 16) == (1, 5, 4, 0)
    assert b[40:] == b"gone\0"


def test_notify_store_is_zero_copy() -> None:
    data = memoryview(bytearray(b"cached"))
    out = notify.store(3, 4096, data)
    assert out[1] is data
    head = bytes(out[0])
    assert struct.unpack("<IiQQQII", head) == (16 + 24 + 6, NotifyCode.STORE, 0, 3, 4096, 6, 0)


def test_notify_retrieve() -> None:
    b = notify.retrieve(77, 3, 0, 8192)
    assert struct.unpack("<IiQQQQII", b) == (len(b), NotifyCode.RETRIEVE, 0, 77, 3, 0, 8192, 0)


@pytest.mark.parametrize("name", [b"", b"a\0"])
def test_notify_rejects_bad_names(name: bytes) -> None:
    with pytest.raises(ValueError):
        notify.inval_entry(1, name)
    with pytest.raises(ValueError):
        notify.delete(1, 2, name)


# --------------------------------------------------------------------------- abi


def test_abi_values() -> None:
    assert abi.FUSE_KERNEL_VERSION == 7
    assert abi.MIN_MINOR <= abi.OUR_MINOR
    assert (Opcode.LOOKUP, Opcode.INTERRUPT, Opcode.BATCH_FORGET, Opcode.READDIRPLUS) == (1, 36, 42, 44)
    assert int(Opcode.CUSE_INIT) == 4096
    assert [int(c) for c in NotifyCode] == [1, 2, 3, 4, 5, 6]
    assert abi.FUSE_IOCTL_MAX_IOV == 256
    assert abi.FUSE_DEV_IOC_CLONE == (2 << 30) | (4 << 16) | (229 << 8)
    assert abi.read_buffer_size(4096) == 32 * 4096 + 4096
    assert abi.read_buffer_size(1 << 20, 256) == (1 << 20) + 4096
    assert abi.read_buffer_size(0, 0) == abi.FUSE_MIN_READ_BUFFER
