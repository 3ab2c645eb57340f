"""uio(9): the description of one read or write, and the moves across it.

A Uio carries the caller's file offset and the bytes still to move (resid).
Moves are short when the data runs out and never go past resid; a read that
moves nothing is end of file.  A read Uio collects the outgoing bytes as a
list of buffers so a transport can send them with one writev and no join.

Every request passes through here, so the moves avoid needless work: bytes
go out as views (no copy), mutable buffers are copied once, by slicing.
"""

from __future__ import annotations

import enum
from typing import TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview

_EMPTY = memoryview(b"")


class UioRw(enum.Enum):
    READ = "read"  # data moves out of the driver to the caller
    WRITE = "write"  # data moves in from the caller to the driver


_READ = UioRw.READ
_WRITE = UioRw.WRITE


def _byte_view(data: Buffer) -> memoryview:
    """A memoryview of `data` by byte; `data` itself when it is one already."""
    view = data if type(data) is memoryview else memoryview(data)
    if view.format != "B" or view.ndim != 1:
        return view.cast("B")
    return view


def _bytes_view(data: Buffer) -> Buffer:
    """`data` indexable by byte: memoryviews of other formats are cast."""
    if type(data) is memoryview and (data.itemsize != 1 or data.ndim != 1):
        return data.cast("B")
    return data


class Uio:
    __slots__ = ("offset", "resid", "size", "rw", "chunks", "_data", "_pos")

    def __init__(self, rw: UioRw, offset: int, resid: int, data: Buffer = b"") -> None:
        if offset < 0 or resid < 0:
            raise ValueError("uio offset and resid must not be negative")
        self.rw = rw
        self.offset = offset
        self.resid = resid
        self.size = resid  # what the caller asked for; size - resid is what moved
        self.chunks: list[Buffer] = []  # READ: what the driver moved out, in order
        self._data = _byte_view(data) if rw is _WRITE else _EMPTY
        self._pos = 0

    @classmethod
    def for_read(cls, offset: int, size: int) -> Uio:
        return cls(_READ, offset, size)

    @classmethod
    def for_write(cls, offset: int, data: Buffer) -> Uio:
        uio = cls(_WRITE, offset, 0, data)
        uio.resid = uio.size = len(uio._data)
        return uio

    # -- reads: driver -> caller ------------------------------------------------

    def uiomove(self, data: Buffer) -> int:
        """uiomove(9): move between `data` and the caller, in this uio's direction, at
        most resid bytes; for stream devices, where the caller's offset means nothing.

        A read moves the start of `data` out to the caller; a write copies the
        caller's next bytes into `data` (a bytearray or writable memoryview) from
        its start.  Returns the count moved.
        """
        if self.rw is _WRITE:
            if isinstance(data, bytes) or (type(data) is memoryview and data.readonly):
                raise TypeError("uiomove on a write copies into `data`: pass a bytearray or writable memoryview")
            target = _bytes_view(data)
            return self.move_into(target, 0, len(target))  # type: ignore[arg-type]
        data = _bytes_view(data)
        count = min(len(data), self.resid)
        if count:
            self._emit(data, 0, count)
        return count

    def move_out(self, buf: Buffer) -> int:
        """Move `buf` from the caller's offset on, at most resid bytes (uiomove_frombuf(9)).

        An offset at or past the end of `buf` moves nothing: end of file.
        """
        if self.rw is not _READ:
            self._wrong_way()
        if type(buf) is memoryview:
            buf = _bytes_view(buf)
        start = self.offset
        size = len(buf)
        if start >= size:
            return 0
        count = size - start
        if count > self.resid:
            count = self.resid
        if isinstance(buf, bytearray):  # _emit's copy, here: the usual driver's buffer (malloc's Memory)
            self.chunks.append(buf[start : start + count])
            self.offset = start + count
            self.resid -= count
        else:
            self._emit(buf, start, count)
        return count

    def _emit(self, source: Buffer, start: int, count: int) -> None:
        # Immutable bytes go out as a view, without a copy; anything mutable is
        # copied now (a slice), because the driver may change or resize it once
        # its lock is dropped, before the transport sends it.
        if type(source) is bytes:
            chunk: Buffer = source if start == 0 and count == len(source) else \
                memoryview(source)[start : start + count]
        elif isinstance(source, bytearray):  # malloc's Memory too
            chunk = source[start : start + count]
        else:
            chunk = bytes(source[start : start + count])
        self.chunks.append(chunk)
        self.offset += count
        self.resid -= count

    def tobytes(self) -> bytes:
        chunks = self.chunks
        if len(chunks) == 1:  # the usual read: one move, and one copy here at most
            chunk = chunks[0]
            return chunk if type(chunk) is bytes else bytes(chunk)
        return b"".join(chunks)

    # -- writes: caller -> driver -----------------------------------------------

    def move_in(self, limit: int | None = None) -> bytes:
        """Take the caller's next bytes, all that remain or at most `limit` (a write only)."""
        count = self._take(limit)
        pos = self._pos - count
        return self._data[pos : pos + count].tobytes()

    def move_into(self, buf: bytearray | memoryview, at: int, limit: int | None = None) -> int:
        """Copy the caller's next bytes straight into `buf` from index `at` (one copy,
        for drivers that keep a buffer); `buf` must be long enough.  Returns the count."""
        if limit is None and self.rw is _WRITE:  # all that remains, the usual write: _take inline
            count = self.resid
            pos = self._pos
            self._pos = pos + count
            self.offset += count
            self.resid = 0
        else:
            count = self._take(limit)
            pos = self._pos - count
        data = self._data
        buf[at : at + count] = data if pos == 0 and count == len(data) else data[pos : pos + count]
        return count

    def _take(self, limit: int | None) -> int:
        if self.rw is not _WRITE:
            self._wrong_way()
        count = self.resid if limit is None else max(0, min(limit, self.resid))
        self._pos += count
        self.offset += count
        self.resid -= count
        return count

    def _wrong_way(self) -> None:
        raise TypeError(f"this uio describes a {self.rw.value}; it cannot move data the other way")

    def __repr__(self) -> str:
        return f"Uio({self.rw.value}, offset={self.offset}, resid={self.resid})"
