"""What callers of a FUSE device see when its host dies (SIGKILL: no unmount, no goodbye)."""

from __future__ import annotations

import errno
import os
import subprocess
import threading

import pytest

from .conftest import EXAMPLES, PYKLD, require_fuse, wait_for

READ_SYSCALL = {"x86_64": "0", "aarch64": "63"}.get(os.uname().machine, "0")


def in_read(tid: int) -> bool:
    with open(f"/proc/self/task/{tid}/syscall") as syscall:
        return syscall.read().split()[0] == READ_SYSCALL


def test_calls_in_flight_get_econnaborted_and_later_calls_enotconn(dev_dir: str) -> None:
    require_fuse()
    host = subprocess.Popen([*PYKLD, "run", str(EXAMPLES / "fifo.py"), "--transport", "fuse", "--dev-dir",
                             dev_dir, "--no-bind"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert host.stdout is not None
        assert any(line.startswith("pykld: serving") for line in iter(host.stdout.readline, "")), \
            "host did not start"
        path = os.path.join(dev_dir, "fifo")
        fd = os.open(path, os.O_RDWR)
        failed: list[int] = []

        def read() -> None:
            try:
                os.read(fd, 10)  # the fifo is empty: this sleeps in the driver
            except OSError as exc:
                failed.append(exc.errno or 0)

        reader = threading.Thread(target=read)
        reader.start()
        assert reader.native_id is not None
        assert wait_for(lambda: in_read(reader.native_id))  # type: ignore[arg-type]
        host.kill()
        host.wait(10)
        reader.join(10)
        assert failed == [errno.ECONNABORTED]
        for later in (lambda: os.read(fd, 10), lambda: os.write(fd, b"z"), lambda: os.open(path, os.O_RDONLY)):
            with pytest.raises(OSError) as dead:
                later()
            assert dead.value.errno == errno.ENOTCONN
        os.close(fd)
    finally:
        host.kill()
        host.wait(10)
