"""Fixtures for transport tests: a kernel published over a real FUSE mount.

A missing capability skips, unless CI made it mandatory with PYKLD_REQUIRE_<NAME>=1,
in which case it fails: CI must never pass by skipping what it should test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pykld import Kernel
from pykld.transport.fuse import FuseTransport

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PYKLD = [sys.executable, "-m", "pykld"]


def require(capability: str, available: bool, why: str) -> None:
    if available:
        return
    if os.environ.get(f"PYKLD_REQUIRE_{capability}") == "1":
        pytest.fail(f"{why}, and PYKLD_REQUIRE_{capability}=1 makes it mandatory")
    pytest.skip(why)


def require_fuse() -> None:
    require("FUSE", os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK),
            "/dev/fuse is not usable here")


def require_root() -> None:
    require("ROOT", os.geteuid() == 0, "needs root")


@pytest.fixture
def fuse_for_other_users() -> Iterator[None]:
    """/dev/fuse readable and writable by everyone, as Debian's udev rule makes it (0666),
    for tests of a non-root user's own FUSE mount; the machine's mode comes back after."""
    require_root()
    require_fuse()
    before = os.stat("/dev/fuse").st_mode & 0o7777
    os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", before)


@pytest.fixture
def dev_dir() -> Iterator[str]:
    """A mount point other users can reach (pytest's tmp_path is private to root)."""
    os.makedirs("/run/pykld-test", mode=0o755, exist_ok=True)
    os.chmod("/run/pykld-test", 0o755)
    path = tempfile.mkdtemp(dir="/run/pykld-test")
    os.chmod(path, 0o755)
    yield path
    subprocess.run(["umount", "-l", path], capture_output=True, check=False)
    shutil.rmtree(path, ignore_errors=True)


T = TypeVar("T")


@contextlib.contextmanager
def published(make_transport: Callable[[Kernel], T]) -> Iterator[tuple[Kernel, T]]:
    """A kernel in this process and the transport `make_transport` gives it, started;
    everything unloaded and the transport stopped afterwards, whatever the test did."""
    kernel = Kernel()
    transport: Any = make_transport(kernel)
    transport.start()
    try:
        yield kernel, transport
    finally:
        kernel.shutdown()
        transport.stop()


@pytest.fixture
def fuse(dev_dir: str) -> Iterator[tuple[Kernel, FuseTransport]]:
    """A kernel in this process, published at dev_dir over FUSE (no /dev binds)."""
    require_fuse()
    with published(lambda kernel: FuseTransport(kernel, dev_dir, bind=False)) as served:
        yield served


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def write_driver(directory: Path, name: str, source: str) -> str:
    path = directory / f"{name}.py"
    path.write_text(source)
    return str(path)


AS_NOBODY = "setpriv --reuid=65534 --regid=65534 --clear-groups"


def private_and_public(prefix: str = "") -> str:
    """A driver with a 0600 device PREFIXprivate and a 0644 device PREFIXpublic, both
    reading "secret\\n": for the permission tests of every transport."""
    return textwrap.dedent(f"""
        from pykld import CharacterDevice, Module, make_dev
        class Dev(CharacterDevice):
            def read(self, file, uio):
                uio.move_out(b"secret\\n")
        class Private(Module):
            name = "private"
            def load(self):
                make_dev(Dev(), "{prefix}private", mode=0o600)
                make_dev(Dev(), "{prefix}public", mode=0o644)
    """)
