"""pykld's per-operation cost over CUSE in user space, without CUSE: the companion of cuse_bench.py.

    .venv/bin/python bench/cuse_hotpath.py [--n 20000] [--profile fiocread4k]

Runs on the host (no VM, no /dev/cuse): loads examples/membuf.py into a
Kernel, builds the CUSE transport's request handler (CuseHandler) and a
Session on a descriptor of /dev/null (replies go nowhere), then feeds it the
exact request sequences the kernel sends for each operation of
bench/cuse_bench.py -- including the unrestricted-ioctl retry rounds, which are
checked against the protocol (the reply of each round must ask for the next).
The ioctls are measured both ways the transport reaches the caller's memory:
through the kernel's retry rounds (PYKLD_FUSE_USER_MEMORY=off, or a daemon
that may not trace its callers), and directly (process_vm_readv/writev of the
request's pid, here this process's own buffers), one request per ioctl.
The figures are microseconds per operation on this machine, pykld's Python
only: the kernel's round trips and the thread wake-ups come on top.  Divide by
the requests to compare with the READ fast path.  --profile OP prints cProfile's
top functions for one operation.
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import os
import pstats
import struct
import sys
from collections.abc import Callable

from common import OPEN_IN, RELEASE_IN, ROOT, RW_IN, fuse_message, per_call

sys.path.insert(0, str(ROOT / "src"))

from pykld.fuse import abi  # noqa: E402
from pykld.kernel.kernel import Kernel  # noqa: E402
from pykld.transport.cuse import CuseHandler  # noqa: E402
from pykld.transport.session import Session  # noqa: E402

OUT_HEADER = struct.Struct("<IiQ")
IOCTL_IN = struct.Struct("<QIIQII")
IOCTL_OUT = struct.Struct("<iIII")  # result, flags, in_iovs, out_iovs
FIOC_RW_ARG = struct.Struct("=qQQQQ")
FIOC_GET_SIZE, FIOC_READ, FIOC_WRITE = 0x80084500, 0x4502, 0x4503  # _IOR('E',0,8), _IO('E',2), _IO('E',3)
ADDR, BUF = 0x7000_0000, 0x7100_0000  # the caller's argument and buffer: never touched, only named
RETRY = abi.FUSE_IOCTL_RETRY


NODEID = 1  # CUSE has one node, the device: every request names it


def message(opcode: int, body: bytes) -> bytearray:
    return fuse_message(opcode, NODEID, body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="operations per timing run")
    parser.add_argument("--repeat", type=int, default=7, help="timing runs; the best counts")
    parser.add_argument("--profile", metavar="OP", help="cProfile one operation (read4k, openclose, getsize, "
                        "fiocread4k, fiocwrite4k, and direct-getsize, direct-fiocread4k, direct-fiocwrite4k)")
    parser.add_argument("--stages", action="store_true", help="the direct FIOC_READ's stages, each timed alone")
    args = parser.parse_args()

    kernel = Kernel()
    kernel.kldload(str(ROOT / "examples" / "membuf.py"))
    cdev = kernel.devfs.lookup("membuf")
    assert cdev is not None
    handler = CuseHandler(kernel, cdev)
    sink = os.open("/dev/null", os.O_WRONLY)
    session = Session(sink, handler.handlers(), abi.read_buffer_size(1 << 20), entries=handler.compiled_entries())
    handler.attach(session)
    session.minor = abi.OUR_MINOR
    # the same device through a handler that reaches callers' memory directly, as a real channel does
    direct = CuseHandler(kernel, cdev, caller_memory=True)
    direct_session = Session(sink, direct.handlers(), abi.read_buffer_size(1 << 20),
                             entries=direct.compiled_entries())
    direct.attach(direct_session)
    direct_session.minor = abi.OUR_MINOR
    buf = bytearray(abi.read_buffer_size(1 << 20))
    view = memoryview(buf)

    def serve(msg: bytearray) -> None:
        buf[: len(msg)] = msg
        session.serve(view, len(msg))

    def serve_direct(msg: bytearray) -> None:
        buf[: len(msg)] = msg
        direct_session.serve(view, len(msg))

    serve(message(abi.Opcode.OPEN, OPEN_IN.pack(os.O_RDWR, 0)))
    fh = max(handler.files)
    handler.files[fh].cdev.device.resize(8 << 20)
    serve_direct(message(abi.Opcode.OPEN, OPEN_IN.pack(os.O_RDWR, 0)))
    direct_fh = max(direct.files)
    # the caller's memory for the direct ioctls: this process's own buffers
    size_out = ctypes.create_string_buffer(8)
    data_buf = ctypes.create_string_buffer(4096)
    rw_arg = ctypes.create_string_buffer(FIOC_RW_ARG.pack(0, ctypes.addressof(data_buf), 4096, 0, 0), 40)

    unr = abi.FUSE_IOCTL_UNRESTRICTED
    arg = FIOC_RW_ARG.pack(0, BUF, 4096, 0, 0)

    def ioctl(cmd: int, in_data: bytes, out_size: int) -> bytearray:
        return message(abi.Opcode.IOCTL, IOCTL_IN.pack(fh, unr, cmd, ADDR, len(in_data), out_size) + in_data)

    # The kernel's rounds (fuse_do_ioctl): the first without data; each retry sends what the reply asked for.
    sequences = {
        "getsize": [ioctl(FIOC_GET_SIZE, b"", 0), ioctl(FIOC_GET_SIZE, b"", 8)],
        # pykld asks for the 40-byte argument as an out-iovec as soon as it reads it
        "fiocread4k": [ioctl(FIOC_READ, b"", 0), ioctl(FIOC_READ, arg, 40), ioctl(FIOC_READ, arg, 4096 + 40)],
        "fiocwrite4k": [ioctl(FIOC_WRITE, b"", 0), ioctl(FIOC_WRITE, arg, 40),
                        ioctl(FIOC_WRITE, arg + bytes(4096), 40)],
    }
    def direct_ioctl(cmd: int, addr: int) -> bytearray:
        return message(abi.Opcode.IOCTL, IOCTL_IN.pack(direct_fh, unr, cmd, addr, 0, 0))

    direct_sequences = {
        "direct-getsize": [direct_ioctl(FIOC_GET_SIZE, ctypes.addressof(size_out))],
        "direct-fiocread4k": [direct_ioctl(FIOC_READ, ctypes.addressof(rw_arg))],
        "direct-fiocwrite4k": [direct_ioctl(FIOC_WRITE, ctypes.addressof(rw_arg))],
    }
    read_msg = message(abi.Opcode.READ, RW_IN.pack(fh, 0, 4096, 0, 0, os.O_RDWR))
    open_msg = message(abi.Opcode.OPEN, OPEN_IN.pack(os.O_RDWR, 0))
    release: dict[int, bytearray] = {}
    positions = handler.positions
    assert positions is not None

    def read4k() -> None:
        positions[fh] = 0  # as after a reopen: the position stays inside the buffer
        serve(read_msg)

    def openclose() -> None:
        serve(open_msg)
        new = max(handler.files)
        msg = release.get(new)
        if msg is None:
            msg = release[new] = message(abi.Opcode.RELEASE, RELEASE_IN.pack(new, os.O_RDWR, 0, 0))
        serve(msg)

    def rounds(msgs: list[bytearray], serve: Callable[[bytearray], None] = serve) -> Callable[[], None]:
        def run() -> None:
            for msg in msgs:
                serve(msg)
        return run

    operations: dict[str, tuple[str, int, Callable[[], None]]] = {
        "read4k": ("read 4 KiB: READ", 1, read4k),
        "openclose": ("open+close: OPEN, RELEASE", 2, openclose),
        "getsize": ("FIOC_GET_SIZE: 2 IOCTL", 2, rounds(sequences["getsize"])),
        "fiocread4k": ("FIOC_READ 4 KiB: 3 IOCTL", 3, rounds(sequences["fiocread4k"])),
        "fiocwrite4k": ("FIOC_WRITE 4 KiB: 3 IOCTL", 3, rounds(sequences["fiocwrite4k"])),
        "direct-getsize": ("FIOC_GET_SIZE direct: 1 IOCTL", 1,
                           rounds(direct_sequences["direct-getsize"], serve_direct)),
        "direct-fiocread4k": ("FIOC_READ 4 KiB direct: 1 IOCTL", 1,
                              rounds(direct_sequences["direct-fiocread4k"], serve_direct)),
        "direct-fiocwrite4k": ("FIOC_WRITE 4 KiB direct: 1 IOCTL", 1,
                               rounds(direct_sequences["direct-fiocwrite4k"], serve_direct)),
    }

    # Check the ioctl rounds against pykld's replies: every round but the last asks for a retry.
    def answers(msgs: list[bytearray], session: Session) -> list[bytes]:
        got = []
        for msg in msgs:
            buf[: len(msg)] = msg
            reply = session.answer(view, len(msg))
            got.append(reply if isinstance(reply, bytes) else b"".join(bytes(part) for part in reply or []))
        return got

    checks = [(name, msgs, session) for name, msgs in sequences.items()]
    checks += [(name, msgs, direct_session) for name, msgs in direct_sequences.items()]
    for name, msgs, answering in checks:
        sent = answers(msgs, answering)
        flags = [IOCTL_OUT.unpack_from(r, OUT_HEADER.size)[1] if OUT_HEADER.unpack_from(r)[1] == 0 else -1
                 for r in sent]
        want = [RETRY] * (len(msgs) - 1) + [0]
        if flags != want:
            sys.exit(f"cuse_hotpath: {name}: reply flags {flags}, expected {want}: the sequence is out of date")
    if struct.unpack("Q", size_out.raw) != (8 << 20,) or FIOC_RW_ARG.unpack(rw_arg.raw)[3:] != (8 << 20, 8 << 20):
        sys.exit("cuse_hotpath: the direct ioctls did not write the caller's memory")

    if args.stages:
        stages(direct, direct_fh, direct_sequences["direct-fiocread4k"][0], ctypes.addressof(rw_arg), args)
        return 0
    if args.profile:
        if args.profile not in operations:
            parser.error(f"--profile: one of {', '.join(operations)}")
        fn = operations[args.profile][2]
        profile = cProfile.Profile()
        profile.runcall(lambda: [fn() for _ in range(args.n)])
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
        return 0

    print(f"pykld over CUSE, user space only, µs (best of {args.repeat} x {args.n:,}); "
          f"Python {sys.version.split()[0]}; {session.loop} request loop (PYKLD_LOOP)")
    print(f"  {'operation: requests':<30} {'per op':>8} {'per request':>12}")
    for _, (label, nreq, fn) in operations.items():
        us = per_call(fn, args.n, args.repeat)
        print(f"  {label:<34} {us:8.2f} {us / nreq:12.2f}")
    os.close(sink)
    return 0


def stages(handler: CuseHandler, fh: int, msg: bytearray, arg: int, args: argparse.Namespace) -> None:
    """Where a direct FIOC_READ 4 KiB's microseconds go, each stage timed on its own."""
    from pykld.fuse import reply
    from pykld.fuse.request import parse
    from pykld.transport import cuse

    file = handler.files[fh]
    pid = os.getpid()
    view = memoryview(msg)
    req = parse(view, len(msg))
    serve = handler.handlers()[abi.Opcode.IOCTL]
    memory = cuse._CallerMemory(pid)
    chunk = bytes(4096)

    def one_read() -> None:
        cuse._CallerMemory(pid).read(arg, 40)

    def two_writes() -> None:
        m = cuse._CallerMemory(pid)
        m.write(BUF_REAL, chunk)
        m.write(arg, bytes(40))
        m.flush()

    BUF_REAL = FIOC_RW_ARG.unpack(ctypes.string_at(arg, 40))[1]
    rows = [
        ("decode the request (fuse/request.parse)", lambda: parse(view, len(msg))),
        ("the whole ioctl, decoded (handler)", lambda: serve(req)),
        ("  kernel + driver, its copyin and copyouts too", lambda: file.ioctl(FIOC_READ, arg, None, memory)),
        ("  copyin of the 40-byte argument", one_read),
        ("  copyouts: 4 KiB and 40 bytes, one writev", two_writes),
        ("  the reply (fuse/reply.ioctl)", lambda: reply.ioctl(1, 4096)),
    ]
    print(f"direct FIOC_READ 4 KiB by stage, µs (best of {args.repeat} x {args.n:,}); the driver's own copyin and")
    print("copyouts run inside 'kernel + driver' too (its memory there is this process's, reached the same way)")
    for label, fn in rows:
        print(f"  {label:<46} {per_call(fn, args.n, args.repeat):8.2f}")


if __name__ == "__main__":
    sys.exit(main())
