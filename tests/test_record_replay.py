"""Record and replay in process: a trace of a real device file (/dev/urandom, a regular
file) replayed gives the same client the same bytes; divergences are EIO, dmesg and a
list; unordered polls and status reads; the trace format and its malformed lines."""

from __future__ import annotations

import errno
import io
import os
import select
from pathlib import Path

import pytest

from pykld import Kernel
from pykld.testing.record import recorder
from pykld.testing.replay import replayer
from pykld.testing.trace import Op, Trace, TraceError

RNDGETENTCNT = 0x80045200  # _IOR('R', 0x00, int): the entropy count, copied out by its encoded size


def record(kernel: Kernel, source: str, name: str, client) -> Trace:  # type: ignore[no-untyped-def]
    stream = io.StringIO()
    kernel.kldload(recorder(source, name, stream))
    client(kernel, f"/dev/{name}")
    kernel.kldunload("record")
    return Trace.parse(stream.getvalue())


def test_a_replay_gives_the_client_the_recorded_bytes(kernel: Kernel) -> None:
    def client(k: Kernel, path: str) -> list[object]:
        with k.open(path) as f:
            return [f.read(16), f.ioctl(RNDGETENTCNT, bytearray(4)).data, f.poll(select.POLLIN), f.read(7)]
    seen: list[list[object]] = []
    trace = record(kernel, "/dev/urandom", "rnd", lambda k, path: seen.append(client(k, path)))
    assert (trace.source, trace.device) == ("/dev/urandom", "rnd")
    assert [op.op for op in trace.ops] == ["open", "read", "ioctl", "poll", "read", "close"]
    ioctl = trace.ops[2]
    assert (ioctl.cmd, len(ioctl.out), ioctl.data) == (RNDGETENTCNT, 4, b"")  # by the encoded size
    assert trace.ops[1].out == seen[0][0] and len(trace.ops[1].out) == 16

    replaying = Kernel()
    try:
        replaying.kldload(replayer(trace))
        assert client(replaying, "/dev/rnd") == seen[0]
        assert replaying.module("replay").instance.device.divergences == []
    finally:
        replaying.shutdown()


def test_writes_and_their_counts_replay_and_others_diverge(kernel: Kernel, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"")

    def client(k: Kernel, path: str) -> None:
        with k.open(path, os.O_WRONLY) as f:
            assert f.write(b"hello\n") == 6

    trace = record(kernel, str(target), "out", client)
    assert target.read_bytes() == b"hello\n"  # forwarded to the source
    assert trace.ops[1].format() == "1 write 68656c6c6f0a -> 6"
    replaying = Kernel()
    try:
        replaying.kldload(replayer(trace))
        client(replaying, "/dev/out")
        with pytest.raises(OSError) as caught:
            replaying.open("/dev/out", os.O_WRONLY)  # a second open: the trace has none
        assert caught.value.errno == errno.EIO
        [divergence] = replaying.module("replay").instance.device.divergences
        assert divergence == ("divergence on a new open: the caller asked for `open O_WRONLY`; "
                              "the trace has nothing more for it")
        assert any(line.endswith(f"replay: {divergence}") for line in replaying.dmesg())
        replaying.kldunload("replay")
        replaying.kldload(replayer(trace))
        with replaying.open("/dev/out", os.O_WRONLY) as f, pytest.raises(OSError) as caught:
            f.write(b"HELLO\n")  # not the bytes recorded
        assert caught.value.errno == errno.EIO
    finally:
        replaying.shutdown()


def trace_of(*lines: str) -> Trace:
    return Trace.parse("\n".join(["pykld-trace 1", "device dev", *lines]) + "\n", "t.trace")


def test_a_different_request_is_eio_naming_the_trace_line(kernel: Kernel) -> None:
    kernel.kldload(replayer(trace_of("1 open O_RDONLY -> 0", "1 read 4 -> 4 01020304", "1 close -> 0")))
    with kernel.open("/dev/dev") as f:
        with pytest.raises(OSError) as caught:
            f.ioctl(0x40045201, b"\0\0\0\0")
        assert caught.value.errno == errno.EIO
        assert "the caller asked for `1 ioctl 0x40045201 in=00000000`; the trace (line 4) has `1 read 4`" \
            in str(caught.value)
        assert f.read(100) == b"\x01\x02\x03\x04"  # a larger read takes the recorded bytes; order resumes
    assert len(kernel.module("replay").instance.device.divergences) == 1


def test_a_close_before_the_trace_ends_is_a_divergence_but_no_error(kernel: Kernel) -> None:
    kernel.kldload(replayer(trace_of("1 open O_RDONLY -> 0", "1 read 4 -> 4 01020304", "1 close -> 0")))
    kernel.open("/dev/dev").close()
    assert kernel.module("replay").instance.device.divergences == [
        "divergence on open file 1: the caller asked for `1 close`; the trace (line 4) has `1 read 4`"]


def test_an_ioctl_matches_by_command_and_the_bytes_it_copies_in(kernel: Kernel) -> None:
    kernel.kldload(replayer(trace_of("1 open O_RDONLY -> 0", "1 ioctl 0x40045201 in=01000000 -> 0",
                                     "1 ioctl 0x40045201 in=01000000 -> 0", "1 close -> 0")))
    with kernel.open("/dev/dev") as f:
        assert f.ioctl(0x40045201, b"\1\0\0\0").result == 0
        with pytest.raises(OSError) as caught:
            f.ioctl(0x40045201, b"\2\0\0\0")
        assert caught.value.errno == errno.EIO


def test_an_unsized_ioctl_with_a_pointer_is_not_forwarded(kernel: Kernel) -> None:
    def client(k: Kernel, path: str) -> None:
        with k.open(path) as f, pytest.raises(OSError) as caught:
            f.ioctl(0x5401, 0x7FFF0000)  # TCGETS with what could be a caller's pointer
        assert caught.value.errno == errno.ENOTTY and "may be a pointer" in str(caught.value)
    trace = record(kernel, "/dev/urandom", "rnd", client)
    assert trace.ops[1].format() == "1 ioctl 0x5401 arg=2147418112 -> ENOTTY"


def test_polls_and_status_reads_match_in_any_number(kernel: Kernel) -> None:
    kernel.kldload(replayer(trace_of(
        "1 open O_RDWR -> 0", "1 poll 0x1 -> 0x0", "1 poll 0x1 -> 0x0", "1 poll 0x1 -> 0x1",
        f"1 ioctl {RNDGETENTCNT:#x} -> 0 out=00010000", "1 read 2 -> 2 abcd",
        "1 poll 0x1 -> 0x0", "1 read 2 -> EAGAIN", "1 close -> 0")))
    with kernel.open("/dev/dev", os.O_RDWR) as f:
        assert f.poll(select.POLLIN) == select.POLLIN  # the state that led to the read: ready
        assert f.poll(select.POLLIN) == select.POLLIN
        assert f.ioctl(RNDGETENTCNT, bytearray(4)).data == b"\x00\x01\x00\x00"
        assert f.read(2) == b"\xab\xcd"
        assert f.ioctl(RNDGETENTCNT, bytearray(4)).data == b"\x00\x01\x00\x00"  # the latest before, again
        assert f.poll(select.POLLIN, timeout=0) == 0
        with pytest.raises(OSError) as caught:
            f.read(2)
        assert caught.value.errno == errno.EAGAIN  # a recorded errno is answered as recorded
    assert kernel.module("replay").instance.device.divergences == []


def test_the_format_round_trips_and_reads_as_data() -> None:
    text = ("pykld-trace 1\nsource /dev/ttyUSB0\ndevice tty\n# a comment\n\n1 open O_RDWR -> 0\n"
            "1 write 41 -> 1\n1 read 8 -> 2 4f4b\n1 ioctl 0x5401 arg=0 -> ENOTTY\n"
            "1 ioctl 0xc0045202 in=01000000 -> 3 out=02000000\n1 poll 0x5 -> 0x4\n1 close -> 0\n")
    trace = Trace.parse(text)
    assert trace.dump() == text.replace("# a comment\n\n", "")
    assert trace.ops[2] == Op(1, "read", size=8, result=2, out=b"OK", line=8)
    assert trace.ops[3].error == errno.ENOTTY and trace.ops[4].out == b"\x02\0\0\0"


@pytest.mark.parametrize(("text", "where", "why"), [
    ("", 1, "not a pykld trace"),
    ("pykld-trace 2\n", 1, "unsupported trace version '2' (this pykld reads version 1)"),
    ("pykld-trace 1\n1 open O_RDONLY\n", 2, "an operation needs '-> RESULT'"),
    ("pykld-trace 1\n1 open O_RDONLY -> 0\n1 seek 4 -> 0\n", 3, "unknown operation 'seek'"),
    ("pykld-trace 1\n# ok\n1 read 4 -> 4 0102\n", 3, "read: 4 bytes answered, 2 given, 4 asked for"),
    ("pykld-trace 1\n1 write zz -> 1\n", 2, "write data is not hex: 'zz'"),
    ("pykld-trace 1\n1 close -> EBOGUS\n", 2, "invalid literal"),
    ("pykld-trace 1\nx open O_RDONLY -> 0\n", 2, "starts with its open file's number"),
    ("pykld-trace 1\n1 ioctl 0x10 bad=1 -> 0\n", 2, "ioctl: unknown field 'bad=1'"),
    ("pykld-trace 1\n1 open O_SIDEWAYS -> 0\n", 2, "access mode 'O_SIDEWAYS'"),
])
def test_a_malformed_trace_is_refused_naming_its_line(text: str, where: int, why: str) -> None:
    with pytest.raises(TraceError) as caught:
        Trace.parse(text, "bad.trace")
    assert str(caught.value).startswith(f"bad.trace:{where}: ")
    assert why in str(caught.value)
