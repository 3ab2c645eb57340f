"""`pykld replay`: publish a device that answers from a trace (trace.py) instead of hardware.

The Nth open of the device plays the trace's open file N.  Its operations must come
in the recorded order, with the recorded requests (a read may ask for more than the
recorded bytes); each gets the recorded answer, errno included.  Requests that only
ask for state, polls and ioctls that copy out only (status reads), may come any
number of times, or not at all: each gets the last recorded answer to the same request
before the file's next ordered operation (the state that led to it), else the latest
before, so a client that polled until ready finds the device ready.

A request the trace does not have is a divergence: the caller gets EIO, dmesg says
what was asked and what the trace (with its line) expected, and the device keeps the
list (`pykld replay` exits with status 1).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable

from pykld.kpi import CharacterDevice, Module, OpenFile, Uio, ioctl_decode, make_dev, printf
from pykld.testing.record import give_back
from pykld.testing.trace import ACCESS, Op, Trace


def _unordered(op: Op) -> bool:
    if op.op == "poll":
        return True
    decoded = ioctl_decode(op.cmd)
    return op.op == "ioctl" and decoded.copies_out and not decoded.copies_in


class _Playing:
    """One open file's place in its part of the trace."""

    def __init__(self, number: int, ops: list[Op]) -> None:
        self.number = number
        self.ops = ops
        self.cursor = 0  # the next ordered operation is at or after this index
        self.diverged = False

    def next_ordered(self) -> int:
        index = self.cursor
        while index < len(self.ops) and _unordered(self.ops[index]):
            index += 1
        return index


class Replayer(CharacterDevice):
    seekable = False

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.files = trace.files()
        self.order = sorted(self.files)
        self.opened = 0
        self.divergences: list[str] = []
        self._lock = threading.Lock()

    # -- matching --------------------------------------------------------------------

    def _diverge(self, playing: _Playing | None, asked: str, expected: Op | None) -> OSError:
        if playing is not None:
            playing.diverged = True
        where = f"open file {playing.number}" if playing is not None else "a new open"
        has = f"the trace (line {expected.line}) has `{expected.request()}`" if expected is not None \
            else "the trace has nothing more for it"
        text = f"divergence on {where}: the caller asked for `{asked}`; {has}"
        with self._lock:
            self.divergences.append(text)
        printf(f"replay: {text}")
        return OSError(errno.EIO, f"replay {text}", None)

    def _ordered(self, playing: _Playing, asked: Op, matches: Callable[[Op], bool]) -> Op:
        index = playing.next_ordered()
        expected = playing.ops[index] if index < len(playing.ops) else None
        if expected is None or expected.op != asked.op or not matches(expected):
            raise self._diverge(playing, asked.request(), expected)
        playing.cursor = index + 1
        return expected

    def _status(self, playing: _Playing, asked: Op, matches: Callable[[Op], bool]) -> Op:
        same = [i for i, op in enumerate(playing.ops) if op.op == asked.op and matches(op)]
        horizon = playing.next_ordered()
        before = [i for i in same if i < horizon]
        if not before:
            raise self._diverge(playing, asked.request(), None)
        return playing.ops[before[-1]]

    @staticmethod
    def _answer(op: Op) -> None:
        if op.error is not None:
            raise OSError(op.error, "as recorded", None)

    # -- the device ------------------------------------------------------------------

    def open(self, file: OpenFile) -> None:
        asked = Op(0, "open", events=file.flags & 3)
        with self._lock:
            number = self.order[self.opened] if self.opened < len(self.order) else None
            self.opened += 1
        if number is None:
            raise self._diverge(None, f"open {ACCESS[file.flags & 3]}", None)
        playing = _Playing(number, self.files[number])
        asked.file = number
        file.private = playing
        self._answer(self._ordered(playing, asked, lambda op: op.events == asked.events))

    def read(self, file: OpenFile, uio: Uio) -> None:
        asked = Op(file.private.number, "read", size=uio.resid)
        op = self._ordered(file.private, asked, lambda op: op.error is not None or len(op.out) <= asked.size)
        self._answer(op)
        uio.uiomove(op.out)

    def write(self, file: OpenFile, uio: Uio) -> None:
        data = uio.move_in()
        asked = Op(file.private.number, "write", data=data)
        op = self._ordered(file.private, asked, lambda op: op.data == data)
        self._answer(op)
        give_back(uio, len(data) - op.result)

    def ioctl(self, file: OpenFile, cmd: int, data: bytearray | int) -> int:
        asked = Op(file.private.number, "ioctl", cmd=cmd)
        if isinstance(data, bytearray):
            asked.data = bytes(data) if ioctl_decode(cmd).copies_in else b""
        else:
            asked.arg = data
        step = self._status if _unordered(asked) else self._ordered
        op = step(file.private, asked, lambda op: (op.cmd, op.data, op.arg) == (cmd, asked.data, asked.arg))
        self._answer(op)
        if isinstance(data, bytearray) and op.out:
            data[: len(op.out)] = op.out
        return op.result

    def poll(self, file: OpenFile, events: int) -> int:
        asked = Op(file.private.number, "poll", events=events)
        op = self._status(file.private, asked, lambda op: op.events == events)
        return op.result

    def close(self, file: OpenFile) -> None:
        """The recorded close's answer; a close that comes early is a divergence (in the
        list and dmesg) but no error, the caller's file being closed either way, unless
        the file diverged already and said so."""
        playing: _Playing | None = file.private
        if playing is None:
            return
        index = playing.next_ordered()
        expected = playing.ops[index] if index < len(playing.ops) else None
        if expected is not None and expected.op == "close":
            playing.cursor = index + 1
            self._answer(expected)
        elif not playing.diverged:
            self._diverge(playing, Op(playing.number, "close").request(), expected)

    def unplayed(self) -> int:
        """Opens of the trace no caller made."""
        return max(0, len(self.order) - self.opened)


def replayer(trace: Trace, name: str | None = None) -> type[Module]:
    """The module `pykld replay` loads: NAME (the trace's device by default) answering from `trace`."""
    device_name = name or trace.device
    if not device_name:
        raise OSError(errno.EINVAL, f"{trace.path}: the trace names no device; give one (--as NAME)", None)

    class Replay(Module):
        def load(self) -> None:
            self.device = Replayer(trace)
            self.cdev = make_dev(self.device, device_name, mode=0o666)

        def unload(self) -> None:
            self.cdev.destroy()

    Replay.name = "replay"
    return Replay
