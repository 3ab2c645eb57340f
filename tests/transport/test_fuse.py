"""The FUSE transport, driven from other processes and with real system calls."""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pykld import Kernel
from pykld.transport.fuse import FuseTransport

from .conftest import (
    AS_NOBODY,
    EXAMPLES,
    private_and_public,
    require_fuse,
    require_root,
    wait_for,
    write_driver,
)

FIOC_GET_SIZE = 0x80084500
FIOC_SET_SIZE = 0x40084501
FIOC_READ = 0x4502


def sh(script: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, **kw)  # type: ignore[call-overload, no-any-return]


def test_seed_round_trip_with_echo_and_cat(fuse: tuple[Kernel, FuseTransport]) -> None:
    kernel, transport = fuse
    kernel.kldload(str(EXAMPLES / "hello.py"))
    path = transport.device_path("rustmodule")
    assert sh(f"cat {path}").stdout == "Default hello message\n"
    done = sh(f'echo "hi rust" > {path}; cat {path}')
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hi rust\n"
    assert any("Setting new message to b'hi rust\\n'" in line for line in kernel.dmesg())


def test_device_file_has_make_dev_mode_and_owner(fuse: tuple[Kernel, FuseTransport], tmp_path: Path) -> None:
    kernel, transport = fuse
    kernel.kldload(write_driver(tmp_path, "owned", textwrap.dedent("""
        from pykld import CharacterDevice, Module, make_dev
        class Owned(Module):
            name = "owned"
            def load(self):
                make_dev(CharacterDevice(), "bus/i2c-1", uid=1234, gid=5678, mode=0o640)
    """)))
    st = os.stat(transport.device_path("bus/i2c-1"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640)
    assert os.listdir(transport.device_path("bus")) == ["i2c-1"]


def test_dd_and_positional_io_on_membuf(fuse: tuple[Kernel, FuseTransport], tmp_path: Path) -> None:
    kernel, transport = fuse
    kernel.kldload(str(EXAMPLES / "membuf.py"))
    path = transport.device_path("membuf")
    payload = os.urandom(64 * 1024)
    (tmp_path / "in").write_bytes(payload)
    done = sh(f"dd if={tmp_path}/in of={path} bs=4096 oflag=direct status=none && "
              f"dd if={path} of={tmp_path}/out bs=4096 iflag=direct status=none")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_bytes() == payload
    fd = os.open(path, os.O_RDWR)
    try:
        assert os.pwrite(fd, b"tail", 100_000) == 4  # past the end: the buffer grows
        assert os.pread(fd, 8, 99_998) == b"\0\0tail"
        assert os.pread(fd, 10, 200_000) == b""  # past the end: EOF
        size = struct.unpack("Q", fcntl.ioctl(fd, FIOC_GET_SIZE, bytes(8)))[0]
        assert size == 100_004
        fcntl.ioctl(fd, FIOC_SET_SIZE, struct.pack("Q", 10))
        assert os.pread(fd, 100, 0) == payload[:10]
    finally:
        os.close(fd)


def test_ioctl_errors_over_fuse(fuse: tuple[Kernel, FuseTransport]) -> None:
    kernel, transport = fuse
    kernel.kldload(str(EXAMPLES / "membuf.py"))
    fd = os.open(transport.device_path("membuf"), os.O_RDWR)
    try:
        with pytest.raises(OSError) as unknown:
            fcntl.ioctl(fd, 0x80084563, bytes(8))
        assert unknown.value.errno == errno.ENOTTY
        with pytest.raises(OSError) as pointers:  # the daemon reads the caller's memory: unmapped there
            fcntl.ioctl(fd, FIOC_READ, 0x1000)
        assert pointers.value.errno == errno.EFAULT
    finally:
        os.close(fd)


def test_growth_past_malloc_limit_is_enomem(fuse: tuple[Kernel, FuseTransport],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYKLD_MEMBUF_LIMIT", "8192")
    kernel, transport = fuse
    kernel.kldload(str(EXAMPLES / "membuf.py"))
    fd = os.open(transport.device_path("membuf"), os.O_RDWR)
    try:
        os.pwrite(fd, b"a" * 8192, 0)
        with pytest.raises(OSError) as full:
            os.pwrite(fd, b"b", 8192)
        assert full.value.errno == errno.ENOMEM
        assert os.pread(fd, 9000, 0) == b"a" * 8192
    finally:
        os.close(fd)


def test_fifo_poll_wakes_and_nonblock_gets_eagain(fuse: tuple[Kernel, FuseTransport]) -> None:
    kernel, transport = fuse
    kernel.kldload(str(EXAMPLES / "fifo.py"))
    path = transport.device_path("fifo")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(BlockingIOError):
            os.read(fd, 10)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(0) == []
        writer = threading.Timer(0.3, lambda: sh(f"printf ping > {path}"))
        writer.start()
        start = time.monotonic()
        events = poller.poll(10_000)
        writer.join()
        assert events and events[0][1] & select.POLLIN
        assert time.monotonic() - start < 9
        assert os.read(fd, 10) == b"ping"
        with pytest.raises(OSError) as seek:
            os.pread(fd, 1, 0)
        assert seek.value.errno == errno.ESPIPE
    finally:
        os.close(fd)


def test_fifo_select_and_epoll_see_readiness(fuse: tuple[Kernel, FuseTransport]) -> None:
    kernel, transport = fuse
    kernel.kldload(str(EXAMPLES / "fifo.py"))
    path = transport.device_path("fifo")
    rfd = os.open(path, os.O_RDONLY)
    wfd = os.open(path, os.O_WRONLY)
    try:
        ep = select.epoll()
        ep.register(rfd, select.EPOLLIN)
        assert ep.poll(0.05) == []
        os.write(wfd, b"x")
        assert ep.poll(5)
        readable, writable, _ = select.select([rfd], [wfd], [], 5)
        assert readable == [rfd] and writable == [wfd]
        ep.close()
    finally:
        os.close(rfd)
        os.close(wfd)


READ_WITH_ALARM = textwrap.dedent("""
    import ctypes, os, signal, sys
    libc = ctypes.CDLL(None, use_errno=True)
    signal.signal(signal.SIGALRM, lambda *a: None)
    fd = os.open(sys.argv[1], os.O_RDONLY)
    signal.alarm(1)
    buf = ctypes.create_string_buffer(16)
    n = libc.read(fd, buf, 16)
    print(n, ctypes.get_errno())
""")


def test_signal_interrupts_blocked_read_with_eintr(fuse: tuple[Kernel, FuseTransport]) -> None:
    kernel, transport = fuse
    kernel.kldload(str(EXAMPLES / "fifo.py"))
    path = transport.device_path("fifo")
    done = subprocess.run([sys.executable, "-c", READ_WITH_ALARM, path], capture_output=True, text=True,
                          timeout=30)
    assert done.stdout.split() == ["-1", str(errno.EINTR)], done.stderr
    # The interrupted reader left nothing behind: the pipe still works.
    assert sh(f"printf ok > {path}; head -c 2 {path}").stdout == "ok"


SLEEPY = textwrap.dedent("""
    from pykld import CharacterDevice, Module, make_dev, sleep
    class Sleepy(CharacterDevice):
        def read(self, file, uio):
            sleep(self, timeout=3)  # nobody wakes it: EINTR, or data after 3 s
            uio.move_out(b"slept")
    class SleepyModule(Module):
        name = "sleepy"
        def load(self):
            make_dev(Sleepy(), "sleepy", mode=0o644)
""")


def test_interrupt_that_overtakes_its_read_still_gives_eintr(fuse: tuple[Kernel, FuseTransport],
                                                             tmp_path: Path) -> None:
    """The kernel sends FUSE_INTERRUPT once a request is read; another server thread may serve
    it before the thread holding the READ has started that.  Here the READ is held back until
    its interrupt has been served, so the overtaking happens every time instead of by chance."""
    kernel, transport = fuse
    kernel.kldload(write_driver(tmp_path, "sleepy", SLEEPY))
    session = transport.session
    assert session is not None
    served = set()
    seen = threading.Condition()
    handler = transport.handler
    interrupt, read_chunks = handler.interrupt, handler.read_chunks

    def interrupt_and_tell(target: int) -> None:
        interrupt(target)
        with seen:
            served.add(target)
            seen.notify_all()

    def read_after_its_interrupt(unique: int, *rest: int) -> list[bytes]:
        with seen:
            seen.wait_for(lambda: unique in served, timeout=5)
        return read_chunks(unique, *rest)  # type: ignore[arg-type]

    # Both loops call these: the Python one through do_read/do_interrupt, the compiled one directly.
    handler.interrupt = interrupt_and_tell  # type: ignore[method-assign]
    handler.read_chunks = read_after_its_interrupt  # type: ignore[method-assign,assignment]
    session.set_entries(handler.compiled_entries())
    done = subprocess.run([sys.executable, "-c", READ_WITH_ALARM, transport.device_path("sleepy")],
                          capture_output=True, text=True, timeout=30)
    assert served  # the interrupt did come first
    assert done.stdout.split() == ["-1", str(errno.EINTR)], done.stderr


def test_blocked_readers_do_not_stall_others(fuse: tuple[Kernel, FuseTransport]) -> None:
    kernel, transport = fuse
    kernel.kldload(str(EXAMPLES / "fifo.py"))
    kernel.kldload(str(EXAMPLES / "hello.py"))
    fifo = transport.device_path("fifo")
    readers = 20
    got: list[bytes] = []
    fds = [os.open(fifo, os.O_RDONLY) for _ in range(readers)]

    def reader(fd: int) -> None:
        got.append(os.read(fd, 1))

    threads = [threading.Thread(target=reader, args=(fd,), daemon=True) for fd in fds]
    for thread in threads:
        thread.start()
    assert wait_for(lambda: kernel.devfs.lookup("fifo").active.__len__() == readers)  # type: ignore[union-attr]
    # With every reader asleep in the driver, other callers are still served.
    files = [os.open(transport.device_path("rustmodule"), os.O_RDONLY) for _ in range(200)]
    assert all(os.read(fd, 100) == b"Default hello message\n" for fd in files[:20])
    for fd in files:
        os.close(fd)
    with open(fifo, "wb", buffering=0) as writer:
        writer.write(b"r" * readers)
    for thread in threads:
        thread.join(10)
    assert sorted(got) == [b"r"] * readers
    for fd in fds:
        os.close(fd)


def test_unload_while_open_is_busy_and_force_gives_enxio(fuse: tuple[Kernel, FuseTransport]) -> None:
    kernel, transport = fuse
    kernel.kldload(str(EXAMPLES / "hello.py"))
    path = transport.device_path("rustmodule")
    fd = os.open(path, os.O_RDWR)
    with pytest.raises(OSError) as busy:
        kernel.kldunload("hello")
    assert busy.value.errno == errno.EBUSY
    kernel.kldunload("hello", force=True)
    transport.settle()
    with pytest.raises(OSError) as gone:
        os.read(fd, 10)
    assert gone.value.errno == errno.ENXIO
    os.close(fd)  # close still succeeds
    assert wait_for(lambda: not os.path.exists(path), 3)


def test_devices_come_and_go_while_mounted(fuse: tuple[Kernel, FuseTransport]) -> None:
    kernel, transport = fuse
    path = transport.device_path("membuf")
    assert not os.path.exists(path)
    kernel.kldload(str(EXAMPLES / "membuf.py"))
    assert os.path.exists(path)
    kernel.kldunload("membuf")
    transport.settle()
    # At once, not after the kernel's entry cache (1 s) lapses: pykld invalidated the entry.
    assert not os.path.exists(path)
    kernel.kldload(str(EXAMPLES / "membuf.py"))
    assert sh(f"printf again > {path}; cat {path}").stdout == "again"


def test_a_destroyed_device_in_a_directory_is_gone_at_once(fuse: tuple[Kernel, FuseTransport],
                                                          tmp_path: Path) -> None:
    kernel, transport = fuse
    kernel.kldload(write_driver(tmp_path, "buses", textwrap.dedent("""
        from pykld import CharacterDevice, Module, make_dev
        class Buses(Module):
            name = "buses"
            def load(self):
                self.devs = [make_dev(CharacterDevice(), name, mode=0o644) for name in ("bus/a", "bus/b")]
    """)))
    a, b = transport.device_path("bus/a"), transport.device_path("bus/b")
    assert os.path.exists(a) and os.path.exists(b)  # now in the kernel's entry cache
    kernel.module("buses").instance.devs[0].destroy()
    transport.settle()
    assert not os.path.exists(a)
    assert os.path.exists(b)
    kernel.kldunload("buses")
    transport.settle()
    assert not os.path.exists(b)
    assert not os.path.exists(transport.device_path("bus"))  # the directory went with its last device


def test_driver_fault_is_eio_for_that_caller_only(fuse: tuple[Kernel, FuseTransport], tmp_path: Path) -> None:
    kernel, transport = fuse
    kernel.kldload(write_driver(tmp_path, "flaky", textwrap.dedent("""
        from pykld import CharacterDevice, Module, make_dev
        class Flaky(CharacterDevice):
            calls = 0
            def read(self, file, uio):
                Flaky.calls += 1
                if Flaky.calls == 1:
                    raise ZeroDivisionError("driver bug")
                uio.move_out(b"fine\\n")
        class FlakyModule(Module):
            name = "flaky"
            def load(self):
                make_dev(Flaky(), "flaky", mode=0o644)
    """)))
    path = transport.device_path("flaky")
    first = sh(f"cat {path}")
    assert first.returncode != 0 and "Input/output error" in first.stderr
    assert sh(f"cat {path}").stdout == "fine\n"
    assert any("ZeroDivisionError" in line for line in kernel.dmesg())


def test_shell_redirection_truncate_and_create_are_ignored(fuse: tuple[Kernel, FuseTransport]) -> None:
    kernel, transport = fuse
    kernel.kldload(str(EXAMPLES / "membuf.py"))
    path = transport.device_path("membuf")
    assert sh(f"printf 0123456789 > {path}").returncode == 0
    assert sh(f"printf ab > {path}; cat {path}").stdout == "ab23456789"  # O_TRUNC: no truncation
    refused = sh(f"printf x > {transport.dev_dir}/newfile")
    assert refused.returncode != 0  # devfs has only make_dev's entries


def test_non_root_caller_gets_eacces_on_0600_device(fuse: tuple[Kernel, FuseTransport], tmp_path: Path) -> None:
    require_root()
    kernel, transport = fuse
    kernel.kldload(write_driver(tmp_path, "private", private_and_public()))
    as_nobody = AS_NOBODY
    denied = sh(f"{as_nobody} cat {transport.device_path('private')}")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert sh(f"{as_nobody} cat {transport.device_path('public')}").stdout == "secret\n"
    refused = sh(f"{as_nobody} sh -c 'echo x > {transport.device_path('public')}'")
    assert "Permission denied" in refused.stderr


def _start_host(dev_dir: str, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "pykld", "run", str(EXAMPLES / "hello.py"),
                             "--transport", "fuse", "--dev-dir", dev_dir, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    said = []
    for line in proc.stdout:
        said.append(line)
        if line.startswith("pykld: serving"):
            return proc
    proc.kill()
    raise AssertionError(f"host did not start ({proc.wait()}): {''.join(said)}")


def test_sigkill_of_host_gives_enotconn_and_next_start_recovers(dev_dir: str) -> None:
    require_root()
    host = _start_host(dev_dir, "--no-bind")
    path = os.path.join(dev_dir, "rustmodule")
    fd = os.open(path, os.O_RDONLY)
    host.kill()
    host.wait(10)
    with pytest.raises(OSError) as dead:
        os.read(fd, 10)
    assert dead.value.errno == errno.ENOTCONN
    os.close(fd)  # FOPEN_NOFLUSH: close(2) asks nothing of the server, so even a dead one's closes cleanly
    host = _start_host(dev_dir, "--no-bind")  # clears the dead mount first
    try:
        assert sh(f"cat {path}").stdout == "Default hello message\n"
    finally:
        host.terminate()
        host.wait(10)


def test_root_binds_devices_at_dev_and_sigterm_removes_them(dev_dir: str) -> None:
    require_root()
    host = _start_host(dev_dir)
    try:
        assert stat.S_ISREG(os.stat("/dev/rustmodule").st_mode)
        assert sh('echo "hi rust" > /dev/rustmodule; cat /dev/rustmodule').stdout == "hi rust\n"
    finally:
        host.terminate()
        assert host.wait(15) == 0
    assert not os.path.exists("/dev/rustmodule")
    assert dev_dir not in open("/proc/self/mountinfo").read()


def test_run_console_shows_driver_printfs_as_they_happen_and_at_unload(dev_dir: str, tmp_path: Path) -> None:
    driver = write_driver(tmp_path, "chatty", textwrap.dedent("""
        from pykld import CharacterDevice, Module, make_dev, printf
        class Chatty(CharacterDevice):
            def read(self, file, uio):
                printf(f"read of {uio.resid} bytes")
        class ChattyModule(Module):
            name = "chatty"
            def load(self):
                make_dev(Chatty(), "chatty", mode=0o666)
            def unload(self):
                printf("goodbye")
    """))
    proc = subprocess.Popen([sys.executable, "-m", "pykld", "run", driver, "--transport", "fuse",
                             "--dev-dir", dev_dir, "--no-bind", "--console"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        assert wait_for(lambda: os.path.exists(os.path.join(dev_dir, "chatty")))
        with open(os.path.join(dev_dir, "chatty"), "rb", buffering=0) as device:
            device.read(7)
        # printed while the host still serves (after what the transport says of itself)
        line = next(line for line in iter(proc.stderr.readline, "") if "chatty" in line)
        assert line.rstrip().endswith("chatty: read of 7 bytes"), line
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert "chatty: goodbye" in rest  # the unload's own printf reaches the console before the exit


def test_unload_removes_the_directories_its_binds_made_at_dev_and_only_those(dev_dir: str,
                                                                              tmp_path: Path) -> None:
    require_root()
    require_fuse()
    made = f"/dev/pykld-test-{os.getpid()}"  # not there before: the bind creates it and made/bus
    kept = f"/dev/pykld-kept-{os.getpid()}"  # there before, with nothing in it
    os.mkdir(kept)
    kernel = Kernel()
    transport = FuseTransport(kernel, dev_dir, bind=True)
    transport.start()
    try:
        kernel.kldload(write_driver(tmp_path, "binds", textwrap.dedent(f"""
            from pykld import CharacterDevice, Module, make_dev
            class Binds(Module):
                name = "binds"
                def load(self):
                    make_dev(CharacterDevice(), "{made[5:]}/bus/x")
                    make_dev(CharacterDevice(), "{kept[5:]}/bus/y")
        """)))
        transport.settle()
        assert stat.S_ISREG(os.stat(f"{made}/bus/x").st_mode)
        assert stat.S_ISREG(os.stat(f"{kept}/bus/y").st_mode)
        kernel.kldunload("binds")
        transport.settle()
        assert not os.path.exists(made)  # both directories it made, gone
        assert not os.path.exists(f"{kept}/bus")
        assert os.path.isdir(kept)  # not its own: left in place, though empty
    finally:
        kernel.shutdown()
        transport.stop()
        for directory in (f"{made}/bus", made, f"{kept}/bus", kept):
            if os.path.isdir(directory):
                os.rmdir(directory)


def test_sigkill_leaves_dev_entry_that_next_start_clears(dev_dir: str) -> None:
    require_root()
    host = _start_host(dev_dir)
    host.kill()
    host.wait(10)
    with pytest.raises(OSError) as dead:
        open("/dev/rustmodule").close()
    assert dead.value.errno == errno.ENOTCONN
    host = _start_host(dev_dir)
    try:
        assert sh("cat /dev/rustmodule").stdout == "Default hello message\n"
    finally:
        host.terminate()
        host.wait(15)
    assert not os.path.exists("/dev/rustmodule")


def test_driver_that_blocks_without_sleep_does_not_stall_others(fuse: tuple[Kernel, FuseTransport],
                                                                tmp_path: Path) -> None:
    """A driver that busy-waits or calls time.sleep never tells pykld it blocks; the session's
    monitor hands the reading on anyway, so other callers are served meanwhile."""
    kernel, transport = fuse
    kernel.kldload(write_driver(tmp_path, "sluggish", textwrap.dedent("""
        import time
        from pykld import CharacterDevice, Module, make_dev
        class Sluggish(CharacterDevice):
            serialized = False
            def read(self, file, uio):
                time.sleep(3)
                uio.move_out(b"finally\\n")
        class SluggishModule(Module):
            name = "sluggish"
            def load(self):
                make_dev(Sluggish(), "sluggish", mode=0o644)
    """)))
    kernel.kldload(str(EXAMPLES / "hello.py"))
    slow_result: list[bytes] = []
    slow = threading.Thread(target=lambda: slow_result.append(
        open(transport.device_path("sluggish"), "rb", buffering=0).read(100)), daemon=True)
    slow.start()
    assert wait_for(lambda: bool(kernel.devfs.lookup("sluggish").active))  # type: ignore[union-attr]
    assert sh(f"cat {transport.device_path('rustmodule')}").stdout == "Default hello message\n"
    assert slow.is_alive()  # served while the sluggish read was still inside its driver
    slow.join(10)
    assert slow_result == [b"finally\n"]
