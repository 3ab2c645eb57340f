"""The two request loops side by side, in user space, stage by stage.

    .venv/bin/python bench/loop_bench.py [--n 20000]

For each loop (PYKLD_LOOP=python, compiled) this loads examples/membuf.py, builds
the FUSE devfs handler and a Session on /dev/null (as bench/hotpath.py does:
replies go nowhere, nothing is mounted) and times one request served whole
(Session.serve: decode, the handler or the entry point, the reply's writev),
the FileOps entry point alone (the driver's operation with pykld's kernel
around it: the part both loops share) and the reader-role bookkeeping a
worker does per request (Session._took + _take_reader_role).  serve minus
entry is the loop's own cost; the FUSE round trip (read(2) of the request,
the wake-ups, the kernel's copies) comes on top.  Microseconds per request.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from common import OPEN_IN, RELEASE_IN, ROOT, RW_IN, fuse_message, membuf_behind_null_channel, per_call

sys.path.insert(0, str(ROOT / "src"))

from pykld.fuse import abi  # noqa: E402


def stages(loop: str, n: int, repeat: int) -> list[tuple[str, float]]:
    os.environ["PYKLD_LOOP"] = loop
    kernel, handler, cdev, session = membuf_behind_null_channel()
    sink = session.fd
    assert session.loop == loop, session.loop_why
    buf = bytearray(abi.read_buffer_size(1 << 20, 256))
    view = memoryview(buf)

    def load(msg: bytearray) -> int:
        buf[: len(msg)] = msg
        return len(msg)

    def serve(msg: bytearray) -> int:
        length = load(msg)
        session.serve(view, length)
        return length

    serve(fuse_message(abi.Opcode.OPEN, cdev.ino, OPEN_IN.pack(os.O_RDWR, 0)))
    fh = max(handler.files)
    handler.files[fh].cdev.device.resize(1 << 20)
    rows: list[tuple[str, float]] = []

    def row(label: str, fn: Callable[[], object], calls: int = n) -> None:
        rows.append((label, per_call(fn, calls, repeat)))

    read4k = load(fuse_message(abi.Opcode.READ, cdev.ino, RW_IN.pack(fh, 0, 4096, 0, 0, os.O_RDWR)))
    row("READ 4 KiB: Session.serve", lambda: session.serve(view, read4k))
    row("READ 4 KiB:   the entry point alone (read_chunks)", lambda: handler.read_chunks(7, fh, 0, 4096, os.O_RDWR))
    payload = bytes(4096)
    write4k = load(fuse_message(abi.Opcode.WRITE, cdev.ino, RW_IN.pack(fh, 0, 4096, 0, 0, os.O_RDWR) + payload))
    row("WRITE 4 KiB: Session.serve", lambda: session.serve(view, write4k))
    row("WRITE 4 KiB:   the entry point alone (write_count)",
        lambda: handler.write_count(7, fh, 0, memoryview(payload), os.O_RDWR))
    open_msg = fuse_message(abi.Opcode.OPEN, cdev.ino, OPEN_IN.pack(os.O_RDWR, 0))
    flush_msg = fuse_message(abi.Opcode.FLUSH, cdev.ino, bytes(24))

    def open_close() -> None:
        serve(open_msg)
        new_fh = max(handler.files)
        serve(flush_msg)
        serve(fuse_message(abi.Opcode.RELEASE, cdev.ino, RELEASE_IN.pack(new_fh, os.O_RDWR, 0, 0)))

    row("OPEN+FLUSH+RELEASE: 3 x Session.serve", open_close, n // 4)

    def entries_open_close() -> None:
        new_fh, _ = handler.open_node(7, cdev.ino, os.O_RDWR, 0, 0, os.getpid())
        handler.release_fh(7, new_fh)

    row("OPEN+RELEASE:   the entry points alone", entries_open_close, n // 4)

    def bookkeeping() -> None:
        session._take_reader_role()
        session._took()

    row("per request: the reader-role bookkeeping", bookkeeping)
    os.close(sink)
    kernel.shutdown()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=7, help="timing runs; the best counts")
    args = parser.parse_args()
    table = {loop: stages(loop, args.n, args.repeat) for loop in ("python", "compiled")}
    print(f"pykld request loops, user space only, microseconds per request (best of {args.repeat} x {args.n:,});"
          f" Python {sys.version.split()[0]}")
    print(f"  {'':<52} {'python':>8} {'compiled':>9} {'ratio':>6}")
    for (label, py), (_, c) in zip(table["python"], table["compiled"], strict=True):
        print(f"  {label:<52} {py:8.2f} {c:9.2f} {py / c:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
