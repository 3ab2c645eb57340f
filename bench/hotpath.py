"""pykld's per-request cost in user space, stage by stage, without the kernel's FUSE.

    .venv/bin/python bench/hotpath.py [--n 200000]

Loads examples/membuf.py into a Kernel, builds the FUSE devfs handler and a
Session on a descriptor of /dev/null (replies go nowhere, nothing is mounted),
then times the stages of one request in a loop: decode (request.parse), the
handler (dispatch, the open-file lookup, curthread, the driver, the reply
encoding) and Session.serve (all of it plus the reply writev).  The figures are
microseconds per request on this machine, Python-side only: the FUSE round trip
(the client's syscall, the wake-ups, the copies) comes on top.  Compare them
with the daemon CPU per operation in bench/out/results.json to see what share
of a request is pykld's own Python.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from collections.abc import Callable

from common import OPEN_IN, RELEASE_IN, ROOT, RW_IN, fuse_message, membuf_behind_null_channel, per_call

sys.path.insert(0, str(ROOT / "src"))

from pykld.fuse import abi, request  # noqa: E402
from pykld.kernel.uio import Uio  # noqa: E402

FLUSH_IN = struct.Struct("<Q8xQ")  # fuse_flush_in: fh, unused, padding, lock_owner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=11, help="timing runs; the best counts")
    args = parser.parse_args()
    n, repeat = args.n, args.repeat

    _kernel, handler, cdev, session = membuf_behind_null_channel()
    sink = session.fd
    session.minor = abi.OUR_MINOR

    # open the device as FUSE would, and fill 1 MiB
    handler.do_open(request.parse(fuse_message(abi.Opcode.OPEN, cdev.ino, OPEN_IN.pack(os.O_RDWR, 0))))
    fh = max(handler.files)
    handler.files[fh].cdev.device.resize(1 << 20)

    buf = bytearray(abi.read_buffer_size(1 << 20, 256))
    view = memoryview(buf)

    def load(msg: bytearray) -> int:
        buf[: len(msg)] = msg
        return len(msg)

    rows: list[tuple[str, float]] = []

    def row(label: str, fn: Callable[[], object], calls: int = n) -> None:
        rows.append((label, per_call(fn, calls, repeat)))

    read4k = load(fuse_message(abi.Opcode.READ, cdev.ino, RW_IN.pack(fh, 0, 4096, 0, 0, os.O_RDWR)))
    file = handler.files[fh]
    device = file.cdev.device
    chunk = [b"x" * 40, b"y" * 4096]
    row("READ 4 KiB: request.parse (the general decoder)", lambda: request.parse(view, read4k))
    row("READ 4 KiB: request.parse_read (the fused decoder)", lambda: request.parse_read(view, read4k))
    row("READ 4 KiB: parse_read + do_read (.. reply list)", lambda: handler.do_read(request.parse_read(view, read4k)))
    row("READ 4 KiB:   of which OpenFile.read", lambda: file.read(0, 4096, None))
    row("READ 4 KiB:   of which Uio + Membuf.read (no _run)", lambda: device.read(file, Uio.for_read(0, 4096)))
    row("READ 4 KiB: Session.serve (table, decode, handle, writev)", lambda: session.serve(view, read4k))
    row("  for scale: os.writev of 40+4096 B to /dev/null", lambda: os.writev(sink, chunk))

    write4k = load(fuse_message(abi.Opcode.WRITE, cdev.ino, RW_IN.pack(fh, 0, 4096, 0, 0, os.O_RDWR) + bytes(4096)))
    row("WRITE 4 KiB: Session.serve", lambda: session.serve(view, write4k))

    open_msg = fuse_message(abi.Opcode.OPEN, cdev.ino, OPEN_IN.pack(os.O_RDWR, 0))

    def open_close() -> None:
        length = load(open_msg)
        session.serve(view, length)
        new_fh = max(handler.files)
        length = load(fuse_message(abi.Opcode.FLUSH, cdev.ino, FLUSH_IN.pack(new_fh, 0)))
        session.serve(view, length)
        length = load(fuse_message(abi.Opcode.RELEASE, cdev.ino, RELEASE_IN.pack(new_fh, os.O_RDWR, 0, 0)))
        session.serve(view, length)

    row("OPEN+FLUSH+RELEASE: 3 x Session.serve (FLUSH: ENOSYS)", open_close, n // 4)

    print(f"pykld hot path, user space only, microseconds per request (best of {repeat} x {n:,}); "
          f"Python {sys.version.split()[0]}")
    for label, us in rows:
        print(f"  {label:<52} {us:7.2f}")
    os.close(sink)
    return 0


if __name__ == "__main__":
    sys.exit(main())
