"""The seed's hello module: kldload hello; echo "hi rust" > /dev/rustmodule; cat; kldunload."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import pytest

from pykld import Kernel

DEV = "/dev/rustmodule"


@pytest.fixture
def hello(kernel: Kernel, example: Callable[[str], str]) -> Kernel:
    kernel.kldload(example("hello"))
    return kernel


def messages(kernel: Kernel) -> list[str]:
    """The text of hello's dmesg lines, without time and module."""
    prefix = "] hello: "
    return [line.split(prefix, 1)[1] for line in kernel.dmesg() if prefix in line]


def test_kldstat_shows_hello(hello: Kernel) -> None:
    (stat,) = hello.kldstat()
    assert (stat.name, stat.devices, stat.refs) == ("hello", ["rustmodule"], 0)


def test_default_message(hello: Kernel) -> None:
    with hello.open(DEV) as f:
        assert f.read() == b"Default hello message\n"
        assert f.read() == b""  # EOF once the position passes the message


def test_echo_then_cat(hello: Kernel) -> None:
    with hello.open(DEV, os.O_WRONLY) as f:
        assert f.write(b"hi rust\n") == 8
    with hello.open(DEV) as f:  # a new open reads from offset 0
        assert f.read() == b"hi rust\n"
        assert f.read() == b""


def test_each_write_replaces_the_message(hello: Kernel) -> None:
    with hello.open(DEV, os.O_RDWR) as f:
        f.write(b"a much longer message than before\n")
        f.pwrite(b"short\n", 0)
        assert f.pread(100, 0) == b"short\n"


def test_small_reads_walk_the_message(hello: Kernel) -> None:
    with hello.open(DEV) as f:
        chunks = []
        while chunk := f.read(5):
            chunks.append(chunk)
    assert chunks == [b"Defau", b"lt he", b"llo m", b"essag", b"e\n"]


def test_pread_from_an_offset(hello: Kernel) -> None:
    with hello.open(DEV) as f:
        assert f.pread(5, 8) == b"hello"
        assert f.pread(100, 8) == b"hello message\n"
        assert f.pread(10, 22) == b""  # at the end
        assert f.pread(10, 1000) == b""  # past it
        assert f.read() == b"Default hello message\n"  # pread leaves the position alone


def test_seek_then_read(hello: Kernel) -> None:
    with hello.open(DEV) as f:
        assert f.seek(14) == 14
        assert f.read() == b"message\n"
        assert f.seek(-8, os.SEEK_CUR) == 14
        assert f.read(3) == b"mes"


def test_dmesg_mirrors_the_seed(hello: Kernel) -> None:
    with hello.open(DEV, os.O_WRONLY) as f:
        f.write(b"hi rust\n")
    with hello.open(DEV) as f:
        f.read()
    hello.kldunload("hello")
    assert messages(hello) == [
        "[module.py] Hello::load",
        "[module.py] Hello::open",
        "[module.py] Hello::write",
        "Read 8 bytes. Setting new message to b'hi rust\\n'",
        "[module.py] Hello::close",
        "[module.py] Hello::open",
        "[module.py] Hello::read",
        "[module.py] Hello::close",
        "[module.py] Hello::unload",
    ]


def test_dmesg_lines_carry_a_time(hello: Kernel) -> None:
    line = hello.dmesg()[0]
    assert line.startswith("[")
    assert float(line[1:].split("]", 1)[0]) >= 0


def test_unload_removes_the_device(hello: Kernel) -> None:
    hello.kldunload("hello")
    assert hello.kldstat() == []
    with pytest.raises(OSError) as excinfo:
        hello.open(DEV)
    assert excinfo.value.errno == errno.ENOENT


def test_unload_while_open_is_ebusy(hello: Kernel) -> None:
    f = hello.open(DEV)
    with pytest.raises(OSError) as excinfo:
        hello.kldunload("hello")
    assert excinfo.value.errno == errno.EBUSY
    f.close()
    hello.kldunload("hello")


def test_unknown_ioctl_is_enotty(hello: Kernel) -> None:
    with hello.open(DEV) as f, pytest.raises(OSError) as excinfo:
        f.ioctl(0x5401)  # TCGETS: hello is no terminal
    assert excinfo.value.errno == errno.ENOTTY


def test_write_through_read_only_open_is_ebadf(hello: Kernel) -> None:
    with hello.open(DEV, os.O_RDONLY) as f:
        with pytest.raises(OSError) as excinfo:
            f.write(b"nope")
        assert excinfo.value.errno == errno.EBADF
        assert f.read() == b"Default hello message\n"
    with hello.open(DEV, os.O_WRONLY) as f, pytest.raises(OSError) as excinfo:
        f.read()
    assert excinfo.value.errno == errno.EBADF


def test_reads_after_close_are_ebadf(hello: Kernel) -> None:
    f = hello.open(DEV)
    f.close()
    for call in (f.read, lambda: f.write(b"x"), lambda: f.ioctl(0), lambda: f.pread(1, 0)):
        with pytest.raises(OSError) as excinfo:
            call()
        assert excinfo.value.errno == errno.EBADF
    f.close()  # closing twice is harmless, as for Python files


def test_reload_starts_with_the_default_message(hello: Kernel, example: Callable[[str], str]) -> None:
    with hello.open(DEV, os.O_WRONLY) as f:
        f.write(b"hi rust\n")
    hello.kldunload("hello")
    hello.kldload(example("hello"))
    with hello.open(DEV) as f:
        assert f.read() == b"Default hello message\n"
