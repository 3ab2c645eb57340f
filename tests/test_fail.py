"""fail(9) fault points in process (sim): every operation, every action, every trigger,
and what a user sees of them (the errno, dmesg, the device's counter).  Over FUSE and
through the daemon: tests/transport/test_fail_fuse.py and tests/test_cli.py."""

from __future__ import annotations

import errno
import os
import select
import time
from collections.abc import Callable

import pytest

from pykld import Kernel
from pykld.kernel.fail import parse

MEMBUF_GET_SIZE = 0x80084500  # _IOR('E', 0, 8)
MEMBUF_SET_SIZE = 0x40084501  # _IOW('E', 1, 8)


@pytest.fixture
def membuf(kernel: Kernel, example: Callable[[str], str]) -> Kernel:
    kernel.kldload(example("membuf"))
    with kernel.open("/dev/membuf", os.O_RDWR) as f:
        f.write(b"0123456789")
    return kernel


def errno_of(call: Callable[[], object]) -> int | None:
    try:
        call()
    except OSError as exc:
        return exc.errno
    return None


def test_an_error_rule_fails_each_operation_without_the_driver(membuf: Kernel) -> None:
    for op, code in (("open", errno.EACCES), ("read", errno.EIO), ("write", errno.ENOSPC),
                     ("ioctl", errno.ENOTTY)):
        membuf.fail("membuf", op, "error", code, times=1)
    assert errno_of(lambda: membuf.open("/dev/membuf", os.O_RDWR)) == errno.EACCES
    stats = membuf.lookup("membuf").stats
    assert stats.opens == 1  # the setup's: the refused open never reached the driver
    with membuf.open("/dev/membuf", os.O_RDWR) as f:
        assert errno_of(lambda: f.pread(4, 0)) == errno.EIO
        assert errno_of(lambda: f.pwrite(b"x", 0)) == errno.ENOSPC
        assert errno_of(lambda: f.ioctl(MEMBUF_GET_SIZE, bytearray(8))) == errno.ENOTTY
        assert f.pread(10, 0) == b"0123456789"  # times=1: each fired once, the data untouched
        assert f.ioctl(MEMBUF_GET_SIZE, bytearray(8)).data == (10).to_bytes(8, "little")
    assert stats.injected == 4
    assert [line.split("] ", 1)[1] for line in membuf.dmesg() if "injected" in line][:2] == [
        "fail: /dev/membuf open: injected error EACCES (rule 1, firing 1)",
        "fail: /dev/membuf read: injected error EIO (rule 2, firing 1)",
    ]


def test_poll_gets_pollerr_and_close_fails_after_the_driver_closed(membuf: Kernel) -> None:
    membuf.fail("membuf", "poll", "error", errno.EIO)
    membuf.fail("membuf", "close", "error", errno.EIO)
    f = membuf.open("/dev/membuf")
    assert f.poll(select.POLLIN) == select.POLLERR
    assert errno_of(f.close) == errno.EIO
    assert f.closed and membuf.lookup("membuf").open_count == 0  # closed all the same, as close(2)


def test_short_transfers_move_at_most_n_bytes(membuf: Kernel) -> None:
    membuf.fail("membuf", "read", "short", 3, times=1)
    membuf.fail("membuf", "write", "short", 2, times=1)
    with membuf.open("/dev/membuf", os.O_RDWR) as f:
        assert f.pread(10, 0) == b"012"
        assert f.pwrite(b"abcd", 0) == 2
        assert f.pread(10, 0) == b"ab23456789"


def test_corrupt_flips_bytes_the_seed_chooses(membuf: Kernel) -> None:
    with membuf.open("/dev/membuf", os.O_RDWR) as f:
        membuf.fail("membuf", "read", "corrupt", 2, seed=7)
        first = f.pread(10, 0)
        membuf.fail_clear()
        membuf.fail("membuf", "read", "corrupt", 2, seed=7)
        assert f.pread(10, 0) == first  # the same seed, the same damage
        flipped = [i for i in range(10) if first[i] != b"0123456789"[i]]
        assert len(flipped) == 2 and all(first[i] ^ 0xFF == b"0123456789"[i] for i in flipped)
        membuf.fail_clear()
        membuf.fail("membuf", "write", "corrupt", 1, times=1)
        f.pwrite(b"\x00", 0)
        assert f.pread(1, 0) == b"\xff"  # the driver got the damaged byte


def test_corrupt_ioctl_damages_what_goes_out_or_else_what_goes_in(membuf: Kernel) -> None:
    membuf.fail("membuf", "ioctl", "corrupt", 1, cmd=MEMBUF_GET_SIZE, times=1)
    membuf.fail("membuf", "ioctl", "corrupt", 8, cmd=MEMBUF_SET_SIZE, times=1)
    with membuf.open("/dev/membuf", os.O_RDWR) as f:
        out = f.ioctl(MEMBUF_GET_SIZE, bytearray(8)).data
        assert out is not None and out != (10).to_bytes(8, "little")
        assert errno_of(lambda: f.ioctl(MEMBUF_SET_SIZE, (4).to_bytes(8, "little"))) == errno.ENOMEM
        assert f.ioctl(MEMBUF_GET_SIZE, bytearray(8)).data == (10).to_bytes(8, "little")  # each rule once


def test_a_command_filter_leaves_other_ioctls_alone(membuf: Kernel) -> None:
    membuf.fail("membuf", "ioctl", "error", errno.EIO, cmd=MEMBUF_SET_SIZE)
    with membuf.open("/dev/membuf", os.O_RDWR) as f:
        assert f.ioctl(MEMBUF_GET_SIZE, bytearray(8)).result == 0
        assert errno_of(lambda: f.ioctl(MEMBUF_SET_SIZE, (4).to_bytes(8, "little"))) == errno.EIO


def test_after_n_calls_then_m_times(membuf: Kernel) -> None:
    rule = membuf.fail("membuf", "read", "error", errno.EIO, after=2, times=2)
    with membuf.open("/dev/membuf") as f:
        outcomes = [errno_of(lambda: f.pread(1, 0)) for _ in range(6)]
    assert outcomes == [None, None, errno.EIO, errno.EIO, None, None]
    assert (rule.calls, rule.fired) == (6, 2)


def test_a_probability_with_a_seed_repeats(membuf: Kernel) -> None:
    def run() -> list[int | None]:
        membuf.fail_clear()
        membuf.fail("membuf", "read", "error", errno.EIO, prob=0.5, seed=42)
        with membuf.open("/dev/membuf") as f:
            return [errno_of(lambda: f.pread(1, 0)) for _ in range(40)]
    first = run()
    assert first == run()
    assert 5 < first.count(errno.EIO) < 35


def test_a_delay_waits_before_the_driver(membuf: Kernel) -> None:
    membuf.fail("membuf", "read", "delay", 0.2, times=1)
    with membuf.open("/dev/membuf") as f:
        start = time.monotonic()
        assert f.pread(10, 0) == b"0123456789"
        assert time.monotonic() - start >= 0.2


def test_rules_go_with_the_module(membuf: Kernel, example: Callable[[str], str]) -> None:
    membuf.fail("membuf", "read", "error", errno.EIO)
    membuf.kldunload("membuf")
    assert membuf.fail_list() == []
    membuf.kldload(example("membuf"))
    with membuf.open("/dev/membuf") as f:
        assert f.pread(1, 0) == b""


@pytest.mark.parametrize(("words", "why"), [
    ("membuf read", "expected DEVICE OP ACTION VALUE"),
    ("membuf seek error EIO", "unknown operation 'seek'"),
    ("membuf read explode 1", "unknown action 'explode'"),
    ("membuf poll short 3", "short applies to read, write, not poll"),
    ("membuf read error ENOSUCH", "error: bad value 'ENOSUCH'"),
    ("membuf read error EIO --cmd 0x10", "a command filter is for ioctl rules"),
    ("membuf read error EIO --prob 2", "probability 2.0 is not between 0 and 1"),
    ("membuf read error EIO --times", "--times needs a value"),
    ("membuf read error EIO --every 2", "unknown option --every"),
])
def test_a_bad_rule_is_einval_saying_why(membuf: Kernel, words: str, why: str) -> None:
    with pytest.raises(OSError) as caught:
        membuf.fail(**parse(words))
    assert caught.value.errno == errno.EINVAL
    assert why in str(caught.value)


def test_a_rule_on_no_such_device_is_enoent(kernel: Kernel) -> None:
    assert errno_of(lambda: kernel.fail(**parse("nosuch read error EIO"))) == errno.ENOENT


def test_a_rule_reads_back_as_the_words_that_set_it(membuf: Kernel) -> None:
    rule = membuf.fail(**parse("membuf ioctl error EIO --cmd 0x40084501 --after 1 --times 2 --prob 0.5 --seed 3"))
    assert rule.describe() == ("membuf ioctl error EIO --cmd 0x40084501 --after 1 --times 2 --prob 0.5 --seed 3"
                               "  (calls 0, fired 0)")
    assert parse(rule.describe().split("  (")[0]) == parse("membuf ioctl error 5 --cmd 0x40084501 --after 1 "
                                                            "--times 2 --prob 0.5 --seed 3")
