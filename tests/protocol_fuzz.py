"""Generated FUSE and CUSE messages, fed to the decoder and to a session's dispatch over a fake channel.

Shared by the smoke test (tests/fuse/test_fuzz.py, a few thousand messages) and the stress run
(bench/stress.py, 100,000 and more).  The rig is the real thing minus the kernel's side of the
channel: a Kernel with hello, membuf and fifo loaded, the real FUSE devfs handler and a CUSE
handler, each behind a real Session whose channel fd is one end of a SOCK_SEQPACKET pair, so each
reply the session writes arrives as one datagram on the other end.  Messages go through
Session.serve exactly as read(2) hands them over: into the reused request buffer, which holds the
stale bytes of earlier (longer) messages beyond `nbytes`.

What a message may do, and what counts as a failure:
  - an exception out of parse() other than ProtocolError, or out of Session.serve at all: escaped;
  - a request with a readable header, and an opcode that is answered, that gets neither exactly one
    reply carrying its unique nor a logged drop: unanswered;
  - a reply whose length field is not its size, or whose error is not 0 or -errno: malformed reply.
The sessions run with max_workers=0, no thread of their own: a request that would sleep (a fifo read
with nothing in it) is answered EAGAIN at once instead of waiting for a reader thread that cannot
exist, so nothing here can block.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pykld import Kernel
from pykld.fuse import request as fuse_request
from pykld.fuse.abi import FUSE_KERNEL_VERSION, OUR_MINOR, Opcode
from pykld.transport.cuse import CuseHandler
from pykld.transport.fuse import DevfsHandler
from pykld.transport.session import Session

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
IN_HEADER = struct.Struct("<IIQQIIIHH")
OUT_HEADER = struct.Struct("<IiQ")
BUFSIZE = 1 << 17
NO_REPLY = {Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT, Opcode.NOTIFY_REPLY}
FIOC_GET_SIZE = 0x80084500  # _IOR('E', 0, 8)
FIOC_SET_SIZE = 0x40084501  # _IOW('E', 1, 8)
# The argument structures' sizes at our minor, for the requests valid() builds exactly.
ARGUMENT_SIZES = {Opcode.READ: 40, Opcode.WRITE: 40, Opcode.IOCTL: 32, Opcode.POLL: 24, Opcode.GETATTR: 16,
                  Opcode.FLUSH: 24, Opcode.READDIR: 40, Opcode.OPEN: 8}
KINDS = ("valid", "truncated", "oversized", "wrong_opcode", "lying_length", "unknown_unique",
         "interrupted", "random_bytes")


@dataclass
class Tally:
    messages: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    replies: int = 0
    errnos: Counter[int] = field(default_factory=Counter)
    logged_drops: int = 0
    no_reply_ops: int = 0
    escaped: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    malformed_replies: list[str] = field(default_factory=list)
    served_short: list[str] = field(default_factory=list)
    parse_errors: Counter[str] = field(default_factory=Counter)

    def failures(self) -> int:
        return len(self.escaped) + len(self.unanswered) + len(self.malformed_replies) + len(self.served_short)

    def as_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "kinds": dict(self.kinds), "replies": self.replies,
                "errnos": {errno.errorcode.get(k, str(k)): v for k, v in sorted(self.errnos.items())},
                "logged_drops": self.logged_drops, "no_reply_ops": self.no_reply_ops,
                "escaped": len(self.escaped), "unanswered": len(self.unanswered),
                "malformed_replies": len(self.malformed_replies), "served_short": len(self.served_short),
                "first_failures": (self.escaped + self.unanswered + self.malformed_replies + self.served_short)[:5],
                "parse_errors": dict(self.parse_errors)}


def header(opcode: int, unique: int, body_len: int, nodeid: int = 1, length: int | None = None,
           extlen: int = 0) -> bytes:
    size = 40 + body_len if length is None else length
    return IN_HEADER.pack(size & 0xFFFFFFFF, opcode & 0xFFFFFFFF, unique, nodeid, 0, 0, os.getpid(), extlen, 0)


class Channel:
    """One session over a fake channel: serve a message, collect what it wrote back."""

    def __init__(self, handler: Any, name: str, tally: Tally) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.theirs.setblocking(False)
        self.tally = tally
        self.logs = 0
        self.session = Session(self.ours.fileno(), handler.handlers(), BUFSIZE, name=name, max_workers=0,
                               log=self._log)
        handler.attach(self.session)
        self.buffer = bytearray(os.urandom(BUFSIZE))  # stale bytes, as a reused read buffer has
        self.view = memoryview(self.buffer)

    def _log(self, text: str) -> None:
        self.logs += 1

    def serve(self, message: bytes) -> list[bytes]:
        """Serve one message, as read(2) returned it; the replies written for it."""
        nbytes = min(len(message), BUFSIZE)  # read(2) never returns more than the buffer
        self.buffer[:nbytes] = message[:nbytes]
        try:
            self.session.serve(self.view, nbytes)
        except BaseException as exc:  # noqa: BLE001 - counting what escapes is the point
            self.tally.escaped.append(f"{self.session.name}: {exc!r} on {message[:48].hex()}")
        replies = []
        while True:
            try:
                replies.append(self.theirs.recv(1 << 21))
            except BlockingIOError:
                return replies

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


class Rig:
    """A kernel with hello, membuf and fifo, served by a FUSE devfs handler and a CUSE handler."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.tally = Tally()
        self.kernel = Kernel()
        before = os.environ.get("PYKLD_MEMBUF_LIMIT")
        os.environ["PYKLD_MEMBUF_LIMIT"] = str(1 << 20)  # generated sizes hit the limit
        try:
            for name in ("hello", "membuf", "fifo"):
                self.kernel.kldload(str(EXAMPLES / f"{name}.py"))
        finally:
            if before is None:
                del os.environ["PYKLD_MEMBUF_LIMIT"]
            else:
                os.environ["PYKLD_MEMBUF_LIMIT"] = before
        fuse = DevfsHandler(self.kernel)
        for cdev in self.kernel.devfs:
            fuse.track("create", cdev)
        self.inos = [cdev.ino for cdev in self.kernel.devfs]
        self.fuse = Channel(fuse, "fuse", self.tally)
        self.cuse = Channel(CuseHandler(self.kernel, self.kernel.devfs.lookup("membuf")), "cuse", self.tally)
        self.unique = 1000
        self.short_body = False  # the message being fed is framed right around a body cut short
        self.fhs: dict[str, list[int]] = {"fuse": [], "cuse": []}
        self._init(self.fuse, Opcode.INIT)
        self._init(self.cuse, Opcode.CUSE_INIT)

    def close(self) -> None:
        self.fuse.close()
        self.cuse.close()
        self.kernel.shutdown()

    def next_unique(self) -> int:
        self.unique += 2
        return self.unique

    def _init(self, channel: Channel, opcode: int) -> None:
        body = struct.pack("<IIII", FUSE_KERNEL_VERSION, OUR_MINOR, 1 << 17, 0xFFFFFFFF)
        channel.serve(header(opcode, self.next_unique(), len(body)) + body)

    # -- messages --------------------------------------------------------------------------

    def _fh(self, channel: Channel) -> int:
        fhs = self.fhs[channel.session.name]
        if len(fhs) < 4 or self.rng.random() < 0.02:
            self._open(channel)
        return self.rng.choice(fhs) if fhs and self.rng.random() < 0.95 else self.rng.getrandbits(16)

    def _open(self, channel: Channel) -> None:
        flags = self.rng.choice([os.O_RDWR, os.O_RDWR | os.O_NONBLOCK, os.O_RDONLY, os.O_WRONLY])
        self.open(channel, self.rng.choice(self.inos) if channel is self.fuse else 1, flags)

    def open(self, channel: Channel, nodeid: int, flags: int) -> int | None:
        """OPEN through the channel: the new fh, None when refused."""
        for raw in channel.serve(header(Opcode.OPEN, self.next_unique(), 8, nodeid) + struct.pack("<II", flags, 0)):
            if len(raw) >= 32 and OUT_HEADER.unpack_from(raw)[1] == 0:
                fh: int = struct.unpack_from("<Q", raw, 16)[0]
                self.fhs[channel.session.name].append(fh)
                return fh
        return None

    def valid(self, channel: Channel) -> bytes:
        """A well-formed request of a random kind for this channel."""
        rng, unique = self.rng, self.next_unique()
        nodeid = rng.choice([1, *self.inos, rng.getrandbits(40)])
        choice = rng.randrange(14)
        if choice == 0:
            name = rng.choice([b"rustmodule", b"membuf", b"fifo", b"nosuch", b"..", b"a" * rng.randrange(300)])
            return header(Opcode.LOOKUP, unique, len(name) + 1) + name + b"\0"
        if choice == 1:
            return header(Opcode.GETATTR, unique, 16, nodeid) + struct.pack("<I4xQ", 0, 0)
        if choice == 2:
            self._open(channel)
            fh = self._fh(channel)
            return header(Opcode.RELEASE, unique, 24) + struct.pack("<QIIQ", fh, 0, 0, 0)
        if choice in (3, 4, 5):
            body = struct.pack("<QQIIQI4x", self._fh(channel), rng.choice([0, rng.getrandbits(20), 1 << 62]),
                               rng.choice([0, 1, 4096, rng.getrandbits(17)]), 0, 0,
                               rng.choice([0, os.O_NONBLOCK]))
            return header(Opcode.READ, unique, len(body)) + body
        if choice in (6, 7):
            data = rng.randbytes(rng.choice([0, 1, 100, 4096, 20000]))
            body = struct.pack("<QQIIQI4x", self._fh(channel), rng.getrandbits(rng.choice([4, 16, 21])), len(data),
                               0, 0, os.O_NONBLOCK)
            return header(Opcode.WRITE, unique, len(body) + len(data)) + body + data
        if choice == 8:
            cmd = rng.choice([FIOC_GET_SIZE, FIOC_SET_SIZE, 0x5401, rng.getrandbits(32)])
            data = rng.randbytes(rng.choice([0, 8, 16]))
            body = struct.pack("<QIIQII", self._fh(channel), rng.choice([0, 0, 4]), cmd, rng.getrandbits(48),
                               len(data), rng.choice([0, 8, 64]))
            return header(Opcode.IOCTL, unique, len(body) + len(data)) + body + data
        if choice == 9:
            body = struct.pack("<QQII", self._fh(channel), rng.getrandbits(64), rng.choice([0, 1]), 0x1F)
            return header(Opcode.POLL, unique, len(body)) + body
        if choice == 10:
            return header(Opcode.FLUSH, unique, 24) + struct.pack("<Q8xQ", self._fh(channel), 0)
        if choice == 11:
            return header(Opcode.READDIR, unique, 40, nodeid) + struct.pack("<QQIIQI4x", 0, rng.randrange(8),
                                                                            4096, 0, 0, 0)
        if choice == 12:
            return header(Opcode.FORGET, unique, 8, nodeid) + struct.pack("<Q", 1)
        opcode = rng.choice([Opcode.STATFS, Opcode.FSYNC, Opcode.ACCESS, Opcode.SETATTR, Opcode.OPENDIR,
                             Opcode.MKNOD, Opcode.GETXATTR, Opcode.LSEEK, Opcode.DESTROY])
        body = rng.randbytes(rng.choice([0, 8, 16, 88]))
        return header(opcode, unique, len(body), nodeid) + body

    def message(self, channel: Channel, kind: str) -> bytes:
        rng = self.rng
        if kind == "valid":
            return self.valid(channel)
        if kind == "truncated":
            message = self.valid(channel)
            cut = rng.randrange(len(message))
            if rng.random() < 0.5 and cut >= 40:  # a header that agrees with the cut: a short body
                message = struct.pack("<I", cut) + message[4:]
                self.short_body = True
            return message[:cut]
        if kind == "oversized":
            message = self.valid(channel)
            extra = rng.randbytes(rng.choice([1, 8, 4096, BUFSIZE]))
            grown = message + extra
            if rng.random() < 0.5:
                grown = struct.pack("<I", len(grown)) + grown[4:]
            return grown
        if kind == "wrong_opcode":
            opcode = rng.choice([0, 7, 19, 52, 4095, 4097, Opcode.CUSE_INIT if channel is self.fuse else Opcode.INIT,
                                 Opcode.CUSE_INIT_BSWAP_RESERVED, Opcode.FUSE_INIT_BSWAP_RESERVED,
                                 rng.getrandbits(32)])
            body = rng.randbytes(rng.choice([0, 8, 40, 200]))
            return header(opcode, self.next_unique(), len(body)) + body
        if kind == "lying_length":
            message = bytearray(self.valid(channel))
            struct.pack_into("<I", message, 0, rng.choice([0, 39, 40, len(message) - 1, len(message) + 1,
                                                           0xFFFFFFFF, rng.getrandbits(32)]) & 0xFFFFFFFF)
            if rng.random() < 0.3:
                struct.pack_into("<H", message, 36, rng.getrandbits(16))  # extlen
            return bytes(message)
        if kind == "unknown_unique":
            opcode = rng.choice([Opcode.INTERRUPT, Opcode.NOTIFY_REPLY, Opcode.RELEASE, Opcode.READ])
            body = struct.pack("<QQII", rng.getrandbits(64), rng.getrandbits(64), rng.getrandbits(16), 0)
            return header(opcode, rng.getrandbits(64), len(body)) + body + rng.randbytes(rng.choice([0, 16]))
        if kind == "random_bytes":
            return rng.randbytes(rng.choice([0, 1, 39, 40, 41, 80, 200, 5000]))
        raise ValueError(kind)

    def interrupted(self, channel: Channel) -> list[bytes]:
        """An INTERRUPT for the request that follows, then that request: a fifo read with nothing in it
        (it would sleep; the interrupt must end it with EINTR), or another request."""
        interrupt_unique = self.next_unique()
        interrupt = header(Opcode.INTERRUPT, interrupt_unique, 8) + struct.pack("<Q", self.unique + 2)
        return [interrupt, self.valid(channel)]

    # -- running ------------------------------------------------------------------------------

    def check(self, channel: Channel, message: bytes, replies: list[bytes], logs_before: int,
              short_body: bool) -> None:
        tally = self.tally
        tally.replies += len(replies)
        logged = channel.logs > logs_before
        tally.logged_drops += logged and not replies
        for raw in replies:
            if len(raw) < 16:
                tally.malformed_replies.append(f"{channel.session.name}: {len(raw)}-byte reply")
                continue
            length, error, _ = OUT_HEADER.unpack_from(raw)
            if length != len(raw) or error > 0 or error < -4095:
                tally.malformed_replies.append(f"{channel.session.name}: reply len {length} error {error} "
                                               f"in {len(raw)} bytes")
            if error:
                tally.errnos[-error] += 1
        nbytes = min(len(message), BUFSIZE)
        if nbytes < 40:
            if not replies and not logged:
                tally.unanswered.append(f"{channel.session.name}: {nbytes}-byte message neither answered nor logged")
            return
        length, opcode, unique, *_ = IN_HEADER.unpack_from(message)
        if opcode in NO_REPLY and length == nbytes:
            tally.no_reply_ops += 1
            return
        mine = [raw for raw in replies if len(raw) >= 16 and OUT_HEADER.unpack_from(raw)[2] == unique]
        notifications = [raw for raw in replies if len(raw) >= 16 and OUT_HEADER.unpack_from(raw)[2] == 0]
        if len(mine) > 1 or (not mine and not logged and not notifications):
            tally.unanswered.append(f"{channel.session.name}: opcode {opcode} unique {unique}: "
                                    f"{len(mine)} replies, logged={logged}: {message[:64].hex()}")
        if (short_body and nbytes < 40 + ARGUMENT_SIZES.get(opcode, 0)
                and any(OUT_HEADER.unpack_from(raw)[1] == 0 for raw in mine)):
            # A body too short for its arguments must be refused, not decoded from stale bytes.
            tally.served_short.append(f"{channel.session.name}: opcode {opcode}, {nbytes} bytes, served: "
                                      f"{message[:64].hex()}")

    def feed(self, channel: Channel, message: bytes, kind: str) -> None:
        self.tally.messages += 1
        self.tally.kinds[kind] += 1
        try:
            fuse_request.parse(message, minor=channel.session.minor)
        except fuse_request.ProtocolError as exc:
            self.tally.parse_errors[errno.errorcode.get(exc.errno, str(exc.errno))] += 1
        except BaseException as exc:  # noqa: BLE001
            self.tally.escaped.append(f"parse: {exc!r} on {message[:48].hex()}")
        logs, short_body, self.short_body = channel.logs, self.short_body, False
        replies = channel.serve(message)
        self.check(channel, message, replies, logs, short_body)

    def run(self, count: int) -> Tally:
        while self.tally.messages < count:
            channel = self.fuse if self.rng.random() < 0.7 else self.cuse
            kind = self.rng.choice(KINDS)
            if kind == "interrupted":
                for message in self.interrupted(channel):
                    self.feed(channel, message, kind)
            else:
                self.feed(channel, self.message(channel, kind), kind)
        return self.tally


def fuzz(count: int, seed: int = 0) -> Tally:
    """Feed `count` generated messages to a fresh rig; the tally of what happened."""
    rig = Rig(seed)
    try:
        return rig.run(count)
    finally:
        rig.close()
