"""uio(9): the description of one read or write, and the moves across it.

A Uio carries the caller's file offset and the bytes still to move (resid).
Moves are short when the data runs out and never go past resid; a read that
moves nothing is end of file.  A read Uio collects the outgoing bytes as a
list of buffers so a transport can send them with one writev and no join.
"""

from __future__ import annotations

import enum
from typing import TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview

_EMPTY = memoryview(b"")


class UioRw(enum.Enum):
    READ = "read"  # data moves out of the driver to the caller
    WRITE = "write"  # data moves in from the caller to the driver


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
        self._data = memoryview(data).cast("B") if rw is UioRw.WRITE else _EMPTY
        self._pos = 0

    @classmethod
    def for_read(cls, offset: int, size: int) -> Uio:
        return cls(UioRw.READ, offset, size)

    @classmethod
    def for_write(cls, offset: int, data: Buffer) -> Uio:
        view = memoryview(data)
        return cls(UioRw.WRITE, offset, view.nbytes, view)

    # -- reads: driver -> caller ------------------------------------------------

    def uiomove(self, data: Buffer) -> int:
        """Move the start of `data` to the caller, at most resid bytes (uiomove(9)).

        For stream devices, where the caller's offset means nothing.  Returns the
        count moved.
        """
        self._require(UioRw.READ)
        view = memoryview(data).cast("B")
        count = min(view.nbytes, self.resid)
        if count:
            self._emit(data, view, 0, count)
        return count

    def move_out(self, buf: Buffer) -> int:
        """Move `buf` from the caller's offset on, at most resid bytes (uiomove_frombuf(9)).

        An offset at or past the end of `buf` moves nothing: end of file.
        """
        self._require(UioRw.READ)
        view = memoryview(buf).cast("B")
        start = self.offset
        if start >= view.nbytes:
            return 0
        count = min(view.nbytes - start, self.resid)
        self._emit(buf, view, start, count)
        return count

    def _emit(self, source: Buffer, view: memoryview, start: int, count: int) -> None:
        # Immutable bytes are sent as a view (no copy); anything mutable is copied
        # now, because the driver may change or resize it once its lock is dropped.
        chunk = view[start : start + count]
        self.chunks.append(chunk if isinstance(source, bytes) else chunk.tobytes())
        self.offset += count
        self.resid -= count

    def tobytes(self) -> bytes:
        return b"".join(self.chunks)

    # -- writes: caller -> driver -----------------------------------------------

    def move_in(self, limit: int | None = None) -> bytes:
        """Take the caller's next bytes, all that remain or at most `limit`."""
        self._require(UioRw.WRITE)
        count = self.resid if limit is None else max(0, min(limit, self.resid))
        pos = self._pos
        data = self._data[pos : pos + count].tobytes()
        self._pos = pos + count
        self.offset += count
        self.resid -= count
        return data

    def _require(self, rw: UioRw) -> None:
        if self.rw is not rw:
            raise TypeError(f"this uio describes a {self.rw.value}; it cannot move data the other way")

    def __repr__(self) -> str:
        return f"Uio({self.rw.value}, offset={self.offset}, resid={self.resid})"
