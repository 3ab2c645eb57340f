"""Load: many client processes on one host over FUSE (or CUSE, in the VM), every byte accounted for.

fifo: writers and readers in equal numbers.  Every transfer is a multiple of UNIT (8) bytes, and so
is the fifo's capacity, so the fifo only ever holds whole units however reads and writes split; each
unit is (writer, sequence number, check) and names itself.  Readers check their own stream (a
writer's units arrive in increasing order in any one reader: the fifo keeps order), and the parent
adds up per writer what all readers got (count, sum and sum of squares of the sequence numbers):
lost, duplicated and reordered units are counted, and corrupt ones (a check that does not match).

membuf: each process owns a disjoint region, does random pwrite/pread in it against its own copy,
and compares every read and, at the end, the whole region.  Over CUSE the kernel passes every read
and write at offset 0 (see the README), so there the clients reach their offsets with membuf's
FIOC_WRITE/FIOC_READ ioctls instead, which carry an offset and a pointer to the bytes.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import random
import select
import struct
import time
from typing import Any

from stress_host import EXAMPLES, Host, gather, reap

UNIT = struct.Struct("<HIH")  # writer, sequence, check
END = 0xFFFF  # the writer id of no writer
REGION = 64 * 1024
FIOC_READ, FIOC_WRITE = 0x4502, 0x4503  # examples/membuf.py's _IO("E", 2), _IO("E", 3)
_libc = ctypes.CDLL(None, use_errno=True)


class FiocRwArg(ctypes.Structure):
    _fields_ = [("offset", ctypes.c_int64), ("buf", ctypes.c_void_p), ("size", ctypes.c_size_t),
                ("prev_size", ctypes.c_size_t), ("new_size", ctypes.c_size_t)]


def _fioc(fd: int, cmd: int, offset: int, buf: Any, size: int) -> int:
    arg = FiocRwArg(offset, ctypes.addressof(buf), size, 0, 0)
    result = _libc.ioctl(fd, ctypes.c_ulong(cmd), ctypes.byref(arg))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(result)


def pwrite_at(fd: int, data: bytes, offset: int, transport: str) -> int:
    if transport != "cuse":
        return os.pwrite(fd, data, offset)
    return _fioc(fd, FIOC_WRITE, offset, ctypes.create_string_buffer(data, len(data)), len(data))


def pread_at(fd: int, size: int, offset: int, transport: str) -> bytes:
    if transport != "cuse":
        return os.pread(fd, size, offset)
    buf = ctypes.create_string_buffer(size)
    return buf.raw[: _fioc(fd, FIOC_READ, offset, buf, size)]


def _unit(writer: int, seq: int) -> bytes:
    return UNIT.pack(writer, seq, (writer * 40503 + seq * 2654435761) & 0xFFFF)


def fifo_writer(path: str, writer: int, ops: int, seed: int, out: Any) -> None:
    rng = random.Random(seed)
    fd = os.open(path, os.O_WRONLY)
    seq = 0
    try:
        for _ in range(ops):
            count = rng.randint(1, 64)
            data = b"".join(_unit(writer, s) for s in range(seq, seq + count))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            seq += count
    finally:
        os.close(fd)
    out.put(("writer", writer, {"units": seq, "ops": ops}))


def fifo_reader(path: str, reader: int, seed: int, writers_done: Any, out: Any) -> None:
    """Read until the writers are done and the fifo stays empty: poll, then a non-blocking read."""
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    per_writer: dict[int, list[int]] = {}  # writer -> [count, sum, sum of squares, last seq]
    reordered = corrupt = ops = 0
    pending = b""
    try:
        while True:
            if not poller.poll(200):
                if writers_done.is_set():
                    break
                continue
            try:
                data = os.read(fd, UNIT.size * rng.randint(1, 96))
            except BlockingIOError:
                continue  # another reader took it
            ops += 1
            data = pending + data
            whole = len(data) - len(data) % UNIT.size
            pending = data[whole:]
            for writer, seq, check in UNIT.iter_unpack(data[:whole]):
                if _unit(writer, seq)[6:] != struct.pack("<H", check):
                    corrupt += 1
                    continue
                stats = per_writer.setdefault(writer, [0, 0, 0, -1])
                if seq <= stats[3]:
                    reordered += 1
                stats[0] += 1
                stats[1] += seq
                stats[2] += seq * seq
                stats[3] = seq
    finally:
        os.close(fd)
    out.put(("reader", reader, {"per_writer": per_writer, "reordered": reordered, "corrupt": corrupt,
                                "partial_bytes": len(pending), "ops": ops}))


def run_fifo(processes: int, ops: int, log: Any, transport: str = "fuse") -> dict[str, Any]:
    writers = processes // 2
    readers = processes - writers
    host = Host(str(EXAMPLES / "fifo.py"), "stress-fifo", transport=transport).start("fifo")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    done = ctx.Event()
    started = time.monotonic()
    try:
        procs = [ctx.Process(target=fifo_reader, args=(host.path("fifo"), r, 1000 + r, done, out))
                 for r in range(readers)]
        procs += [ctx.Process(target=fifo_writer, args=(host.path("fifo"), w, ops, w, out)) for w in range(writers)]
        for proc in procs:
            proc.start()
        results: dict[str, dict[int, Any]] = {"writer": {}, "reader": {}}
        for kind, index, result in gather(out, writers, 600):  # readers report only once writers are done
            results[kind][index] = result
        done.set()
        for kind, index, result in gather(out, readers, 60):
            results[kind][index] = result
        hung = reap(procs, 10)
        resources = host.resources()
    finally:
        host.stop()
    elapsed = time.monotonic() - started
    lost = duplicated = mismatched = 0
    for writer, result in results["writer"].items():
        n = result["units"]
        count = sum(r["per_writer"].get(writer, [0])[0] for r in results["reader"].values())
        total = sum(r["per_writer"].get(writer, [0, 0])[1] for r in results["reader"].values())
        squares = sum(r["per_writer"].get(writer, [0, 0, 0])[2] for r in results["reader"].values())
        lost += max(0, n - count)
        duplicated += max(0, count - n)
        if count == n and (total != n * (n - 1) // 2 or squares != (n - 1) * n * (2 * n - 1) // 6):
            mismatched += 1  # as many units as written, but not the same ones
    units = sum(r["units"] for r in results["writer"].values())
    reader_ops = sum(r["ops"] for r in results["reader"].values())
    figures = {
        "processes": processes, "writers": writers, "readers": readers, "ops_per_writer": ops,
        "writer_ops": writers * ops, "reader_ops": reader_ops, "bytes": units * UNIT.size,
        "bytes_lost": lost * UNIT.size, "bytes_duplicated": duplicated * UNIT.size,
        "bytes_reordered": sum(r["reordered"] for r in results["reader"].values()) * UNIT.size,
        "bytes_corrupt": sum(r["corrupt"] for r in results["reader"].values()) * UNIT.size
        + sum(r["partial_bytes"] for r in results["reader"].values()),
        "writers_with_other_units": mismatched, "clients_missing": writers + readers
        - len(results["writer"]) - len(results["reader"]), "hung": hung,
        "seconds": round(elapsed, 1), "ops_per_s": round((writers * ops + reader_ops) / elapsed),
        "host_at_end": resources,
    }
    log(f"fifo: {figures}")
    return figures


def _differing(got: bytes, want: bytearray) -> int:
    """Bytes that differ, missing ones included (counted one by one only when they differ: the
    clients share the CPUs with the host)."""
    if got == want:
        return 0
    return sum(a != b for a, b in zip(got, want, strict=False)) + abs(len(want) - len(got))


def membuf_client(path: str, index: int, ops: int, seed: int, out: Any, transport: str = "fuse") -> None:
    rng = random.Random(seed)
    base = index * REGION
    mine = bytearray(REGION)
    fd = os.open(path, os.O_RDWR)
    wrong = errors = 0
    try:
        for _ in range(ops):
            offset = rng.randrange(REGION)
            size = rng.randint(1, min(8192, REGION - offset))
            try:
                if rng.random() < 0.5:
                    data = rng.randbytes(size)
                    if pwrite_at(fd, data, base + offset, transport) != size:
                        errors += 1
                    mine[offset : offset + size] = data
                else:
                    got = pread_at(fd, size, base + offset, transport)
                    wrong += _differing(got, mine[offset : offset + size])
            except OSError:
                errors += 1
        final_wrong = _differing(pread_at(fd, REGION, base, transport), mine)
    finally:
        os.close(fd)
    out.put((index, {"wrong_bytes_read": wrong, "wrong_bytes_final": final_wrong, "errors": errors}))


def run_membuf(processes: int, ops: int, log: Any, transport: str = "fuse") -> dict[str, Any]:
    host = Host(str(EXAMPLES / "membuf.py"), "stress-membuf", transport=transport).start("membuf")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    started = time.monotonic()
    try:
        # Every region exists before the clients start: nobody grows the buffer under another.
        fd = os.open(host.path("membuf"), os.O_RDWR)
        pwrite_at(fd, b"\0", processes * REGION - 1, transport)
        os.close(fd)
        procs = [ctx.Process(target=membuf_client, args=(host.path("membuf"), i, ops, 500 + i, out, transport))
                 for i in range(processes)]
        for proc in procs:
            proc.start()
        results = dict(gather(out, processes, 600))
        hung = reap(procs, 10)
        resources = host.resources()
    finally:
        host.stop()
    elapsed = time.monotonic() - started
    figures = {
        "processes": processes, "ops_per_process": ops, "ops": processes * ops,
        "bytes_wrong": sum(r["wrong_bytes_read"] + r["wrong_bytes_final"] for r in results.values()),
        "errors": sum(r["errors"] for r in results.values()), "clients_missing": processes - len(results),
        "hung": hung, "seconds": round(elapsed, 1), "ops_per_s": round(processes * ops / elapsed),
        "host_at_end": resources,
    }
    log(f"membuf: {figures}")
    return figures


def run(processes: int, ops: int, log: Any, transport: str = "fuse") -> dict[str, Any]:
    return {"fifo": run_fifo(processes, ops, log, transport), "membuf": run_membuf(processes, ops, log, transport)}


