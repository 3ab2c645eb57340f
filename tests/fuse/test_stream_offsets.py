"""The FUSE/CUSE file operations give a stream device offset 0, whatever the request says:
its caller's file position means nothing (FOPEN_STREAM), and drivers treat a nonzero
offset as end of file (move_out) or a seek."""

from __future__ import annotations

import os
import struct
import textwrap
from pathlib import Path

from pykld import Kernel
from pykld.fuse import abi
from pykld.fuse.request import HEADER_AND_IO, parse_read, parse_write
from pykld.transport.fileops import FileOps

DRIVER = textwrap.dedent('''
    from pykld import CharacterDevice, Module, make_dev

    class Where(CharacterDevice):
        seekable = SEEKABLE

        def read(self, file, uio):
            uio.uiomove(b"%d" % uio.offset)

        def write(self, file, uio):
            self.offset = uio.offset
            uio.move_in()

    class Drv(Module):
        name = "drv"

        def load(self):
            self.dev = Where()
            make_dev(self.dev, "where", mode=0o666)
''')

_IO_ARGS = struct.Struct("<QQIIQI4x")  # fuse_read_in / fuse_write_in: fh, offset, size, flags..., flags


def message(opcode: int, fh: int, offset: int, size: int, data: bytes = b"") -> bytearray:
    body = _IO_ARGS.pack(fh, offset, size, 0, 0, os.O_RDWR) + data
    header = struct.pack("<IIQQIIIHH", abi.IN_HEADER_SIZE + len(body), opcode, 7, 2, 0, 0, 1, 0, 0)
    assert len(header) + _IO_ARGS.size == HEADER_AND_IO.size
    return bytearray(header + body)


def serve(seekable: bool, tmp_path: Path) -> tuple[bytes, int]:
    path = tmp_path / "where.py"
    path.write_text(DRIVER.replace("SEEKABLE", str(seekable)))
    kernel = Kernel()
    kernel.kldload(str(path))
    try:
        ops = FileOps(kernel)
        ops.files[1] = kernel.open_cdev("/dev/where", os.O_RDWR)
        read = message(abi.Opcode.READ, 1, 4096, 16)
        replied = ops.do_read(parse_read(memoryview(read), len(read)))
        write = message(abi.Opcode.WRITE, 1, 4096, 2, b"hi")
        ops.do_write(parse_write(memoryview(write), len(write)))
        assert isinstance(replied, list)
        return b"".join(bytes(chunk) for chunk in replied[1:]), kernel.module("drv").instance.dev.offset
    finally:
        kernel.shutdown()


def test_a_stream_device_sees_offset_zero(tmp_path: Path) -> None:
    assert serve(False, tmp_path) == (b"0", 0)


def test_a_seekable_device_sees_the_callers_offset(tmp_path: Path) -> None:
    assert serve(True, tmp_path) == (b"4096", 4096)


def test_kept_positions_replace_the_requests_offset(tmp_path: Path) -> None:
    """CUSE passes every read at offset 0: FileOps keeps each open's position instead."""
    path = tmp_path / "where.py"
    path.write_text(DRIVER.replace("SEEKABLE", "True"))
    kernel = Kernel()
    kernel.kldload(str(path))
    try:
        ops = FileOps(kernel)
        ops.positions = {}
        ops.files[1] = kernel.open_cdev("/dev/where", os.O_RDWR)
        seen = []
        for _ in range(2):
            read = message(abi.Opcode.READ, 1, 0, 16)
            replied = ops.do_read(parse_read(memoryview(read), len(read)))
            assert isinstance(replied, list)
            seen.append(b"".join(bytes(chunk) for chunk in replied[1:]))
        assert seen == [b"0", b"1"]  # the second read starts where the first ended
    finally:
        kernel.shutdown()


def test_every_open_is_noflush_and_a_streams_writers_run_in_parallel(tmp_path: Path) -> None:
    # NOFLUSH: close(2) never waits on the server (see FileOps.open_flags);
    # PARALLEL_DIRECT_WRITES: one stream writer asleep in its driver does not hold the others.
    for seekable in (True, False):
        path = tmp_path / f"where{seekable}.py"
        path.write_text(DRIVER.replace("SEEKABLE", str(seekable)))
        kernel = Kernel()
        kernel.kldload(str(path))
        try:
            cdev = kernel.devfs.lookup("where")
            assert cdev is not None
            flags = FileOps.open_flags(cdev)
        finally:
            kernel.shutdown()
        assert flags & abi.FOPEN_NOFLUSH and flags & abi.FOPEN_DIRECT_IO
        stream = abi.FOPEN_NONSEEKABLE | abi.FOPEN_STREAM | abi.FOPEN_PARALLEL_DIRECT_WRITES
        assert flags & stream == (0 if seekable else stream)
