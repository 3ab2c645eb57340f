"""Writers that sleep in a driver over CUSE: as over FUSE, each reaches the driver and stays
interruptible (cuse_write_iter takes no lock); and what callers of a dead host get."""

from __future__ import annotations

import errno
import os
import subprocess
import threading

from transport.conftest import EXAMPLES, PYKLD, require, wait_for
from transport.test_fuse_dead_host import in_read
from transport.test_fuse_writers import (  # noqa: F401 (no_writer_left: autouse, kills what a test left)
    no_writer_left,
    several_writers_wait_in_the_driver_each_interruptible,
    writer_behind_a_sleeping_writer_gets_eintr_and_can_be_killed,
)

from cuse.test_cuse import cuse  # noqa: F401 (the fixture)
from pykld import Kernel
from pykld.transport.cuse import cuse_available


def test_writer_behind_a_sleeping_writer_gets_eintr_and_can_be_killed(cuse: Kernel) -> None:  # noqa: F811
    cuse.kldload(str(EXAMPLES / "fifo.py"))
    writer_behind_a_sleeping_writer_gets_eintr_and_can_be_killed(cuse, "/dev/fifo")


def test_several_writers_wait_in_the_driver_each_interruptible(cuse: Kernel) -> None:  # noqa: F811
    cuse.kldload(str(EXAMPLES / "fifo.py"))
    several_writers_wait_in_the_driver_each_interruptible(cuse, "/dev/fifo")


def test_dead_host_calls_in_flight_and_later() -> None:
    require("CUSE", os.geteuid() == 0 and cuse_available(), "no CUSE here (root and /dev/cuse needed)")
    host = subprocess.Popen([*PYKLD, "run", str(EXAMPLES / "fifo.py"), "--transport", "cuse"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert host.stdout is not None
        assert any(line.startswith("pykld: serving") for line in iter(host.stdout.readline, "")), \
            "host did not start"
        fd = os.open("/dev/fifo", os.O_RDWR)
        seen: dict[str, int] = {}

        def call(name: str, operation: object) -> None:
            try:
                operation()  # type: ignore[operator]
                seen[name] = 0
            except OSError as exc:
                seen[name] = exc.errno or 0

        reader = threading.Thread(target=call, args=("in flight", lambda: os.read(fd, 10)))
        reader.start()
        assert wait_for(lambda: in_read(reader.native_id))  # type: ignore[arg-type]
        host.kill()
        host.wait(10)
        reader.join(10)
        call("later read", lambda: os.read(fd, 10))
        call("later write", lambda: os.write(fd, b"z"))
        call("later open", lambda: os.close(os.open("/dev/fifo", os.O_RDONLY)))
        os.close(fd)
        assert {k: errno.errorcode.get(v, v) for k, v in seen.items()} == {
            "in flight": "ECONNABORTED", "later read": "ENOTCONN", "later write": "ENOTCONN",
            "later open": "ENOENT"}
    finally:
        host.kill()
        host.wait(10)
