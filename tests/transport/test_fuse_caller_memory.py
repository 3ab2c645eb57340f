"""copyin/copyout over FUSE: a root daemon reaches the calling process's memory
(process_vm_readv/writev of the request's pid), as copy_from_user would.

FUSE's ioctls are restricted: for a number that encodes no size the kernel copies
nothing and passes only the pointer.  The callers here are separate processes, as
i2c-tools and spidev clients are, running as nobody.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pykld import Kernel
from pykld.transport.fuse import FuseTransport

from .conftest import published, require_fuse, require_root, write_driver

AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# REVERSE (_IO('P', 1), no size encoded) takes a pointer to {src, len, dst}: it reads
# src in two halves with copyin_many and writes the bytes reversed at dst.
MIRROR = textwrap.dedent("""
    import struct
    from pykld import CharacterDevice, Module, make_dev
    from pykld.kpi import _IO, copyin, copyin_many, copyout

    REVERSE = _IO("P", 1)
    ARG = struct.Struct("=QQQ")

    class Mirror(CharacterDevice):
        def ioctl(self, file, cmd, data):
            if cmd != REVERSE:
                return super().ioctl(file, cmd, data)
            src, size, dst = ARG.unpack(copyin(data, ARG.size))
            half = size // 2
            first, second = copyin_many([(src, half), (src + half, size - half)])
            copyout(dst, (first + second)[::-1])
            return size

    class MirrorModule(Module):
        name = "mirror"
        def load(self):
            make_dev(Mirror(), "mirror", mode=0o666)
""")

# The caller: prints the ioctl's result and the destination, or the errno.
CALLER = textwrap.dedent("""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    path, text, mode = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
    src = ctypes.create_string_buffer(text, len(text))
    dst = ctypes.create_string_buffer(len(text))
    arg = (ctypes.c_uint64 * 3)(ctypes.addressof(src), len(text), ctypes.addressof(dst))
    if mode == "bad-src":
        arg[0] = 0x10
    fd = os.open(path, os.O_RDWR)
    if mode == "fork":
        # The child asks with its own bytes at the same addresses as the opener's.
        pid = os.fork()
        if pid:
            _, status = os.waitpid(pid, 0)
            sys.exit(os.waitstatus_to_exitcode(status))
        ctypes.memmove(src, text.upper(), len(text))
    result = libc.ioctl(fd, ctypes.c_ulong(0x5001), arg)
    if result < 0:
        print("errno", ctypes.get_errno())
    else:
        print(result, dst.raw.decode())
""")


@pytest.fixture
def mirror(fuse: tuple[Kernel, FuseTransport], tmp_path: Path) -> str:
    require_root()
    kernel, transport = fuse
    kernel.kldload(write_driver(tmp_path, "mirror", MIRROR))
    return transport.device_path("mirror")


def call(path: str, text: str, mode: str = "plain", as_nobody: bool = True) -> str:
    command = [*(AS_NOBODY if as_nobody else []), sys.executable, "-c", CALLER, path, text, mode]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_pointer_ioctl_reaches_another_users_process(mirror: str) -> None:
    assert call(mirror, "caller memory") == "13 yromem rellac"
    assert call(mirror, "x" * 5000 + "y") == "5001 y" + "x" * 5000  # more than a page


def test_the_memory_is_the_requesting_process_s_not_the_opener_s(mirror: str) -> None:
    assert call(mirror, "forked child", "fork") == "12 DLIHC DEKROF"


def test_a_bad_pointer_is_efault_and_the_next_call_works(mirror: str) -> None:
    assert call(mirror, "abc", "bad-src") == f"errno {errno.EFAULT}"
    assert call(mirror, "abc") == "3 cba"


@pytest.fixture
def no_process_memory(monkeypatch: pytest.MonkeyPatch, dev_dir: str, tmp_path: Path) -> Iterator[str]:
    require_fuse()
    monkeypatch.setenv("PYKLD_FUSE_USER_MEMORY", "off")
    with published(lambda kernel: FuseTransport(kernel, dev_dir, bind=False)) as (kernel, transport):
        kernel.kldload(write_driver(tmp_path, "mirror", MIRROR))
        yield transport.device_path("mirror")


def test_turned_off_it_is_eopnotsupp_as_without_rights(no_process_memory: str) -> None:
    assert call(no_process_memory, "abc", as_nobody=False) == f"errno {errno.EOPNOTSUPP}"
