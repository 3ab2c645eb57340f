"""The benchmark's Python peer: pykld's membuf device written directly with pyfuse3.

One file, MOUNT/membuf, a resizable in-memory buffer: pread/pwrite at any
offset, writing past the end grows it, truncation (setattr size) resizes it.
Opened with direct_io so every read and write reaches this daemon, as in pykld
(pyfuse3 has no ioctl handler, so FIOC_GET_SIZE/SET_SIZE have no equivalent;
the benchmark does not use them).  close() reaches the device (flush answered)
as a character device's close does in pykld, so an open+close costs the same
three requests (OPEN, FLUSH, RELEASE) here as there.

    python bench/pyfuse3_membuf.py MOUNTPOINT

Runs in the foreground; prints "pyfuse3: serving" when mounted; unmounts on
SIGINT/SIGTERM.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
import time

import pyfuse3
import trio

NAME = b"membuf"
FILE_INO = pyfuse3.ROOT_INODE + 1
LIMIT = int(os.environ.get("PYKLD_MEMBUF_LIMIT", str(64 << 20)))
TIMEOUT = 1.0  # seconds the kernel may cache names and attributes, as in pykld


class Membuf(pyfuse3.Operations):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.started = time.time_ns()
        self.next_fh = 1

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_nlink = 2
        elif inode == FILE_INO:
            attr.st_mode = stat.S_IFREG | 0o666
            attr.st_nlink = 1
            attr.st_size = len(self.data)
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attr.st_ino = inode
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self.started
        attr.entry_timeout = attr.attr_timeout = TIMEOUT
        return attr

    def _resize(self, size: int) -> None:
        if size > LIMIT:
            raise pyfuse3.FUSEError(errno.ENOMEM)
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))

    async def lookup(self, parent_inode, name, ctx):  # type: ignore[no-untyped-def]
        if parent_inode != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(FILE_INO)

    async def getattr(self, inode, ctx):  # type: ignore[no-untyped-def]
        return self._attr(inode)

    async def setattr(self, inode, attr, fields, fh, ctx):  # type: ignore[no-untyped-def]
        if inode != FILE_INO:
            raise pyfuse3.FUSEError(errno.EPERM)
        if fields.update_size:
            self._resize(attr.st_size)
        return self._attr(inode)

    async def opendir(self, inode, ctx):  # type: ignore[no-untyped-def]
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):  # type: ignore[no-untyped-def]
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, self._attr(FILE_INO), 1)

    async def releasedir(self, fh):  # type: ignore[no-untyped-def]
        pass

    async def open(self, inode, flags, ctx):  # type: ignore[no-untyped-def]
        if inode != FILE_INO:
            raise pyfuse3.FUSEError(errno.EISDIR)
        fh = self.next_fh
        self.next_fh += 1
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    async def read(self, fh, off, size):  # type: ignore[no-untyped-def]
        return bytes(self.data[off : off + size])

    async def write(self, fh, off, buf):  # type: ignore[no-untyped-def]
        end = off + len(buf)
        if end > len(self.data):
            self._resize(end)
        self.data[off:end] = buf
        return len(buf)

    async def flush(self, fh):  # type: ignore[no-untyped-def]
        pass

    async def release(self, fh):  # type: ignore[no-untyped-def]
        pass

    async def fsync(self, fh, datasync):  # type: ignore[no-untyped-def]
        pass


async def serve(mountpoint: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pyfuse3.main)
        print("pyfuse3: serving", mountpoint, flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    mountpoint = sys.argv[1]
    options = set(pyfuse3.default_options)
    options.add("fsname=pyfuse3_membuf")
    pyfuse3.init(Membuf(), mountpoint, options)
    try:
        trio.run(serve, mountpoint)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
