"""Limits: 1,000 devices, 500 open files and 100 blocked readers in one host, measured (threads, fds,
RSS); the session's cap on threads (max_workers), driven past; a module's malloc limit.

At the cap a request that would block is answered EAGAIN (transport/session.py), so the host keeps a
thread to read new requests and keeps serving: the figures say how many callers got EAGAIN, how
many blocked, and whether a good device still answered meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from stress_host import EXAMPLES, Host, wait_until

DEVICES = 1000
MAX_WORKERS = 256  # transport.session.Session's default

MANY = textwrap.dedent("""
    from pykld import CharacterDevice, Module, make_dev, sleep, wakeup

    class Plain(CharacterDevice):
        def read(self, file, uio): uio.move_out(b"x")

    class Sleeper(CharacterDevice):
        serialized = False  # every reader sleeps on its own
        asleep = 0
        def read(self, file, uio):
            Sleeper.asleep += 1
            try:
                sleep(Sleeper)
            finally:
                Sleeper.asleep -= 1
            uio.move_out(b"woken")

    class Waker(CharacterDevice):
        def write(self, file, uio):
            uio.move_in()
            wakeup(Sleeper)
        def read(self, file, uio):
            uio.move_out(str(Sleeper.asleep).encode())

    class Many(Module):
        name = "many"
        def load(self):
            self.cdevs = [make_dev(Plain(), f"many/d{i:04d}", mode=0o666) for i in range(DEVICES)]
            self.cdevs.append(make_dev(Sleeper(), "sleeper", mode=0o666))
            self.cdevs.append(make_dev(Waker(), "waker", mode=0o666))
""").replace("range(DEVICES)", f"range({DEVICES})")


def _blocked_readers(path: str, count: int) -> tuple[list[threading.Thread], list[str]]:
    outcomes: list[str] = []

    def read() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            outcomes.append(errno.errorcode.get(exc.errno or 0, "?"))
            return
        try:
            outcomes.append("data" if os.read(fd, 16) else "eof")
        except OSError as exc:
            outcomes.append(errno.errorcode.get(exc.errno or 0, "?"))
        finally:
            os.close(fd)

    threads = [threading.Thread(target=read, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, outcomes


def _asleep(host: Host) -> int:
    fd = os.open(host.path("waker"), os.O_RDONLY)
    try:
        return int(os.pread(fd, 16, 0) or b"0")
    finally:
        os.close(fd)


def _wake_all(host: Host) -> None:
    fd = os.open(host.path("waker"), os.O_WRONLY)
    try:
        os.write(fd, b"w")
    finally:
        os.close(fd)


def devices_files_readers(log: Any) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="pykld-stress-many-"))
    (workdir / "many.py").write_text(MANY)
    host = Host(str(workdir / "many.py"), "stress-many")
    figures: dict[str, Any] = {}
    try:
        started = time.monotonic()
        host.start("waker", timeout=120)
        figures["devices"] = len(os.listdir(host.path("many")))
        figures["load_s"] = round(time.monotonic() - started, 2)
        figures["idle"] = host.resources()
        fds = [os.open(host.path(f"many/d{i:04d}"), os.O_RDONLY) for i in range(500)]
        try:
            figures["open_files"] = len(fds)
            figures["reads_ok"] = sum(os.read(fd, 1) == b"x" for fd in fds)
            figures["with_500_open"] = host.resources()
            threads, outcomes = _blocked_readers(host.path("sleeper"), 100)
            wait_until(lambda: _asleep(host) >= 100, 30)
            figures["blocked_readers"] = _asleep(host)
            figures["with_100_blocked"] = host.resources()
            _wake_all(host)
            for thread in threads:
                thread.join(10)
            figures["readers_woken"] = outcomes.count("data")
            figures["readers_hung"] = sum(thread.is_alive() for thread in threads)
        finally:
            for fd in fds:
                os.close(fd)
        # Past the cap: more blocked readers than the session has threads.
        wanted = MAX_WORKERS + 64
        threads, outcomes = _blocked_readers(host.path("sleeper"), wanted)
        wait_until(lambda: len(outcomes) + _asleep(host) >= wanted, 60, 0.1)
        time.sleep(0.5)
        asleep = _asleep(host)
        fd = os.open(host.path("many/d0000"), os.O_RDONLY)
        start = time.perf_counter()
        served = os.read(fd, 1) == b"x"
        good_ms = (time.perf_counter() - start) * 1000
        os.close(fd)
        at_cap = host.resources()
        _wake_all(host)
        for thread in threads:
            thread.join(15)
        figures["cap"] = {"callers": wanted, "blocked": asleep, "eagain": outcomes.count("EAGAIN"),
                          "woken": outcomes.count("data"), "other": len(outcomes) - outcomes.count("EAGAIN")
                          - outcomes.count("data"), "hung": sum(t.is_alive() for t in threads),
                          "good_device_served": served, "good_device_ms": round(good_ms, 2), "host": at_cap}
        figures["host_alive"] = host.daemon.proc is not None and host.daemon.proc.poll() is None
    finally:
        host.stop()
        for child in workdir.iterdir():
            child.unlink()
        workdir.rmdir()
    log(f"limits: {figures}")
    return figures


def malloc_limit(log: Any) -> dict[str, Any]:
    host = Host(str(EXAMPLES / "membuf.py"), "stress-malloc", env={"PYKLD_MEMBUF_LIMIT": str(1 << 20)})
    host.start("membuf")
    try:
        fd = os.open(host.path("membuf"), os.O_RDWR)
        try:
            within = os.pwrite(fd, b"y" * 4096, (1 << 20) - 4096)
            try:
                os.pwrite(fd, b"z", 1 << 21)
                past = "ok"
            except OSError as exc:
                past = errno.errorcode.get(exc.errno or 0, "?")
            size_after = os.fstat(fd).st_size  # devices report 0; the read below is what counts
            kept = os.pread(fd, 4096, (1 << 20) - 4096) == b"y" * 4096
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(Exception):
            host.stop()
    figures = {"limit": 1 << 20, "write_within": within, "write_past": past, "contents_kept": kept,
               "st_size": size_after}
    log(f"malloc limit: {figures}")
    return figures


def run(log: Any) -> dict[str, Any]:
    return {"scale": devices_files_readers(log), "malloc_limit": malloc_limit(log)}
