"""The trace of a device's traffic: what `pykld record` writes and `pykld replay` answers from.

Text, one operation a line, so a person can read, edit and diff it:

    pykld-trace 1
    # recorded from /dev/urandom
    source /dev/urandom
    device rnd
    1 open O_RDONLY -> 0
    1 read 16 -> 16 3f9a0b...           the count the caller got, then the bytes in hex
    1 write 68690a -> 3                 the bytes written, in hex; the count taken
    1 ioctl 0x80045200 -> 0 out=00010000   an _IOC-encoded command: its encoded size of bytes
    1 ioctl 0x40045201 in=01000000 -> 0    copied in and/or out, in hex
    1 ioctl 0x5401 arg=0 -> ENOTTY      a command without a size: its integer argument
    1 poll 0x1 -> 0x1                   events asked, events ready
    1 close -> 0

The first field numbers the open file (the Nth open of the device); a result is a
count or value, or an errno name.  Blank lines and lines starting with # are
comments.  The first line names the format's version; a trace of another
version, or a line that does not parse, is refused with its line number.

Decoding of the ABIs pykld emulates (I2C messages, SPI transfers, termios) would
add lines of their own kind, written and parsed beside `ioctl` in OPS below.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass, field
from typing import IO

VERSION = 1
MAGIC = "pykld-trace"
OPS = ("open", "read", "write", "ioctl", "poll", "close")
ACCESS = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR", 3: "O_ACCMODE"}
_ACCESS_NAMES = {name: mode for mode, name in ACCESS.items()}


class TraceError(ValueError):
    """A trace that cannot be read: names the file, the line and what is wrong with it."""


@dataclass
class Op:
    file: int  # the Nth open of the device, from 1
    op: str
    size: int = 0  # read: bytes asked for
    data: bytes = b""  # write: bytes written; ioctl: bytes copied in
    cmd: int = 0  # ioctl
    arg: int | None = None  # ioctl without a size: its integer argument
    events: int = 0  # poll: asked; open: the access mode
    result: int = 0  # count, return value or ready events; meaningless when error is set
    error: int | None = None  # the errno the caller got
    out: bytes = b""  # read: the bytes; ioctl: the bytes copied out
    line: int = 0  # where in the trace (0: not from a file)

    def format(self) -> str:
        head = f"{self.file} {self.op}"
        if self.op == "open":
            head += f" {ACCESS[self.events & 3]}"
        elif self.op == "read":
            head += f" {self.size}"
        elif self.op == "write":
            head += f" {self.data.hex()}"
        elif self.op == "ioctl":
            head += f" {self.cmd:#x}" + (f" arg={self.arg}" if self.arg is not None else "")
            head += f" in={self.data.hex()}" if self.data else ""
        elif self.op == "poll":
            head += f" {self.events:#x}"
        if self.error is not None:
            return f"{head} -> {errno.errorcode.get(self.error, str(self.error))}"
        result = f"{self.result:#x}" if self.op == "poll" else str(self.result)
        if self.op == "read" and self.out:
            result += f" {self.out.hex()}"
        if self.op == "ioctl" and self.out:
            result += f" out={self.out.hex()}"
        return f"{head} -> {result}"

    def request(self) -> str:
        """The request alone, as a divergence report shows it."""
        return self.format().split(" -> ")[0]


@dataclass
class Trace:
    source: str = ""
    device: str = ""
    ops: list[Op] = field(default_factory=list)
    path: str = "<trace>"

    @classmethod
    def load(cls, path: str) -> Trace:
        with open(path, encoding="utf-8") as f:
            return cls.parse(f.read(), path)

    @classmethod
    def parse(cls, text: str, path: str = "<trace>") -> Trace:
        trace = cls(path=path)
        lines = text.splitlines()
        if not lines or lines[0].split() != [MAGIC, str(VERSION)]:
            first = lines[0] if lines else ""
            words = first.split()
            why = (f"unsupported trace version {words[1]!r} (this pykld reads version {VERSION})"
                   if len(words) == 2 and words[0] == MAGIC else f"not a pykld trace (expected '{MAGIC} {VERSION}')")
            raise TraceError(f"{path}:1: {why}: {first!r}")
        for number, line in enumerate(lines[1:], start=2):
            text_line = line.strip()
            if not text_line or text_line.startswith("#"):
                continue
            try:
                trace._take(text_line, number)
            except (ValueError, IndexError) as exc:
                raise TraceError(f"{path}:{number}: {exc}: {line!r}") from None
        return trace

    def _take(self, line: str, number: int) -> None:
        words = line.split()
        if words[0] in ("source", "device"):
            setattr(self, words[0], line.split(None, 1)[1] if len(words) > 1 else "")
            return
        if "->" not in words:
            raise ValueError("an operation needs '-> RESULT'")
        arrow = words.index("->")
        request, answer = words[:arrow], words[arrow + 1:]
        if len(request) < 2 or not request[0].isdigit() or int(request[0]) < 1:
            raise ValueError("an operation starts with its open file's number (1, 2, ...) and its name")
        op = Op(int(request[0]), request[1], line=number)
        if op.op not in OPS:
            raise ValueError(f"unknown operation {op.op!r}; one of {', '.join(OPS)}")
        _parse_request(op, request[2:])
        _parse_answer(op, answer)
        self.ops.append(op)

    def dump(self) -> str:
        lines = [f"{MAGIC} {VERSION}"]
        if self.source:
            lines.append(f"source {self.source}")
        if self.device:
            lines.append(f"device {self.device}")
        lines += [op.format() for op in self.ops]
        return "\n".join(lines) + "\n"

    def files(self) -> dict[int, list[Op]]:
        """The operations of each open file, in order."""
        by_file: dict[int, list[Op]] = {}
        for op in self.ops:
            by_file.setdefault(op.file, []).append(op)
        return by_file


def _parse_request(op: Op, args: list[str]) -> None:
    wanted = {"open": 1, "read": 1, "write": 1, "poll": 1, "close": 0}
    if op.op in wanted and len(args) != wanted[op.op]:
        raise ValueError(f"{op.op} takes {wanted[op.op]} argument(s), not {len(args)}")
    if op.op == "open":
        if args[0] not in _ACCESS_NAMES:
            raise ValueError(f"open: access mode {args[0]!r} is none of {', '.join(_ACCESS_NAMES)}")
        op.events = _ACCESS_NAMES[args[0]]
    elif op.op == "read":
        op.size = _count(args[0], "read size")
    elif op.op == "write":
        op.data = _hex(args[0], "write data")
    elif op.op == "poll":
        op.events = int(args[0], 0)
    elif op.op == "ioctl":
        if not args:
            raise ValueError("ioctl needs its command")
        op.cmd = int(args[0], 0)
        for arg in args[1:]:
            key, _, value = arg.partition("=")
            if key == "arg":
                op.arg = int(value, 0)
            elif key == "in":
                op.data = _hex(value, "ioctl in")
            else:
                raise ValueError(f"ioctl: unknown field {arg!r} (arg=N, in=HEX)")


def _parse_answer(op: Op, answer: list[str]) -> None:
    if not answer:
        raise ValueError("no result after '->'")
    first = answer[0]
    if first.startswith("E") and first in errno.__dict__:
        if len(answer) != 1:
            raise ValueError("nothing may follow an errno")
        op.error = int(errno.__dict__[first])
        return
    op.result = int(first, 0)
    rest = answer[1:]
    if op.op == "read":
        op.out = _hex(rest[0], "read data") if rest else b""
        if len(rest) > 1 or len(op.out) != op.result or op.result > op.size:
            raise ValueError(f"read: {op.result} bytes answered, {len(op.out)} given, {op.size} asked for")
    elif op.op == "ioctl":
        for word in rest:
            if not word.startswith("out="):
                raise ValueError(f"ioctl: unknown result field {word!r} (out=HEX)")
            op.out = _hex(word[4:], "ioctl out")
    elif rest:
        raise ValueError(f"{op.op}: unexpected {' '.join(rest)!r} after the result")


def _count(text: str, what: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"{what} {value} is negative")
    return value


def _hex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{what} is not hex: {text[:40]!r}") from None


class TraceWriter:
    """Appends operations to a trace file as they happen, a line each, flushed: a
    recorder killed midway leaves every line before."""

    def __init__(self, stream: IO[str], source: str, device: str) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._opens = 0
        stream.write(f"{MAGIC} {VERSION}\nsource {source}\ndevice {device}\n")
        stream.flush()

    def next_file(self) -> int:
        with self._lock:
            self._opens += 1
            return self._opens

    def write(self, op: Op) -> None:
        line = op.format() + "\n"
        with self._lock:
            self.stream.write(line)
            self.stream.flush()
