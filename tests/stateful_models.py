"""Random operation sequences against a model of each example driver (hypothesis stateful testing).

Each machine loads one driver (hello, membuf or fifo) and runs a random sequence of open, read,
write, pread, pwrite, ioctl, poll, close, unload and forced unload against it, with a blocked
reader woken by a writer on another thread for the fifo, checking every result and every errno
against a few lines of model.  The same machines run over two backends:

  - sim: the kernel's in-process files (Kernel.open);
  - fuse: real file descriptors on a FUSE devfs that this process serves (os.open, os.read, ...).

Used by tests/test_stateful.py and tests/transport/test_stateful_fuse.py (a few hundred sequences
in `make test`) and by bench/stress.py (10,000 and more).  `machines(backend)` lists the machine
classes; `SEQUENCES` counts the sequences each ran, for the stress report.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import threading
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, precondition, rule

from pykld import Kernel
from pykld.kernel import kernel as kernel_module

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FIOC_GET_SIZE = 0x80084500  # _IOR('E', 0, 8)
FIOC_SET_SIZE = 0x40084501  # _IOW('E', 1, 8)
UNKNOWN_IOCTL = 0x4509  # _IO('E', 9)
POLLIN, POLLOUT = select.POLLIN, select.POLLOUT
FIFO_CAPACITY = 4096
HELLO_DEFAULT = b"Default hello message\n"
MODES = [os.O_RDONLY, os.O_WRONLY, os.O_RDWR]
SEQUENCES: Counter[str] = Counter()  # machine name -> sequences run

payloads = st.binary(min_size=1, max_size=600)
sizes = st.integers(min_value=0, max_value=700)
offsets = st.integers(min_value=0, max_value=5000)


class Backend:
    """How a machine reaches the device: open and the calls on the result."""

    name = ""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def open(self, name: str, flags: int) -> Any: ...
    def read(self, f: Any, size: int) -> bytes: ...
    def write(self, f: Any, data: bytes) -> int: ...
    def pread(self, f: Any, size: int, offset: int) -> bytes: ...
    def pwrite(self, f: Any, data: bytes, offset: int) -> int: ...
    def ioctl_size(self, f: Any, cmd: int, value: int) -> int: ...
    def ioctl_none(self, f: Any, cmd: int) -> None: ...
    def poll(self, f: Any, events: int) -> int: ...
    def close(self, f: Any) -> None: ...
    def settle(self) -> None: ...


class SimBackend(Backend):
    name = "sim"

    def open(self, name: str, flags: int) -> Any:
        return self.kernel.open(f"/dev/{name}", flags)

    def read(self, f: Any, size: int) -> bytes:
        return f.read(size)  # type: ignore[no-any-return]

    def write(self, f: Any, data: bytes) -> int:
        return f.write(data)  # type: ignore[no-any-return]

    def pread(self, f: Any, size: int, offset: int) -> bytes:
        return f.pread(size, offset)  # type: ignore[no-any-return]

    def pwrite(self, f: Any, data: bytes, offset: int) -> int:
        return f.pwrite(data, offset)  # type: ignore[no-any-return]

    def ioctl_size(self, f: Any, cmd: int, value: int) -> int:
        buf = bytearray(struct.pack("=Q", value))
        f.ioctl(cmd, buf)  # as fcntl.ioctl: the copied-out argument lands in the buffer
        return struct.unpack("=Q", buf)[0]  # type: ignore[no-any-return]

    def ioctl_none(self, f: Any, cmd: int) -> None:
        f.ioctl(cmd, 0)

    def poll(self, f: Any, events: int) -> int:
        return f.poll(events, 0)  # type: ignore[no-any-return]

    def close(self, f: Any) -> None:
        f.close()

    def settle(self) -> None:
        pass


class FuseBackend(Backend):
    """Over a FUSE devfs at `dev_dir`, mounted by this process (FuseTransport)."""

    name = "fuse"

    def __init__(self, kernel: Kernel, transport: Any) -> None:
        super().__init__(kernel)
        self.transport = transport

    def open(self, name: str, flags: int) -> Any:
        return os.open(os.path.join(self.transport.dev_dir, name), flags)

    def read(self, f: Any, size: int) -> bytes:
        return os.read(f, size)

    def write(self, f: Any, data: bytes) -> int:
        return os.write(f, data)

    def pread(self, f: Any, size: int, offset: int) -> bytes:
        return os.pread(f, size, offset)

    def pwrite(self, f: Any, data: bytes, offset: int) -> int:
        return os.pwrite(f, data, offset)

    def ioctl_size(self, f: Any, cmd: int, value: int) -> int:
        buf = bytearray(struct.pack("=Q", value))
        fcntl.ioctl(f, cmd, buf)
        return struct.unpack("=Q", buf)[0]  # type: ignore[no-any-return]

    def ioctl_none(self, f: Any, cmd: int) -> None:
        fcntl.ioctl(f, cmd, 0)

    def poll(self, f: Any, events: int) -> int:
        poller = select.poll()
        poller.register(f, events)
        ready = poller.poll(0)
        return ready[0][1] if ready else 0

    def close(self, f: Any) -> None:
        os.close(f)

    def settle(self) -> None:
        self.transport.settle()


def outcome(call: Any, *args: Any) -> tuple[str, Any]:
    """("ok", result) or ("errno", name): what a caller sees."""
    try:
        return "ok", call(*args)
    except OSError as exc:
        return "errno", errno.errorcode.get(exc.errno or 0, str(exc.errno))


class Handle:
    def __init__(self, f: Any, flags: int, generation: int) -> None:
        self.f = f
        self.flags = flags
        self.generation = generation  # which load of the module it was opened on
        self.position = 0

    @property
    def readable(self) -> bool:
        return self.flags & os.O_ACCMODE in (os.O_RDONLY, os.O_RDWR)

    @property
    def writable(self) -> bool:
        return self.flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)


class DriverMachine(RuleBasedStateMachine):
    """The rules every driver shares; subclasses model the contents (`expect_*`)."""

    backend: ClassVar[Backend]
    driver: ClassVar[str]
    device: ClassVar[str]
    seekable: ClassVar[bool] = True
    extra_flags: ClassVar[int] = 0

    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0
        self.live: list[Handle] = []
        self.loaded = False
        SEQUENCES[type(self).__name__] += 1

    # -- the module --------------------------------------------------------------------

    @initialize()
    def load(self) -> None:
        self.backend.kernel.kldload(str(EXAMPLES / f"{self.driver}.py"))
        self.backend.settle()
        self.loaded = True
        self.generation += 1
        self.reset_model()

    def teardown(self) -> None:
        for handle in self.live:
            try:
                self.backend.close(handle.f)
            except OSError:
                pass
        if self.loaded:
            self.backend.kernel.kldunload(self.driver, force=True)
            self.backend.settle()

    def reset_model(self) -> None: ...

    def _current(self, handle: Handle) -> bool:
        """Whether the handle's device is the one loaded now (else: ENXIO for every operation)."""
        return self.loaded and handle.generation == self.generation

    @rule(target=handles, mode=st.sampled_from(MODES))
    def open(self, mode: int) -> Any:
        got = outcome(self.backend.open, self.device, mode | self.extra_flags)
        if not self.loaded:
            assert got == ("errno", "ENOENT"), got
            return None
        assert got[0] == "ok", got
        handle = Handle(got[1], mode | self.extra_flags, self.generation)
        self.live.append(handle)
        return handle

    @rule(handle=consumes(handles))
    def close(self, handle: Handle | None) -> None:
        if handle is None:
            return
        self.live.remove(handle)
        assert outcome(self.backend.close, handle.f)[0] == "ok"

    @rule()
    def unload(self) -> None:
        if not self.loaded:
            return
        if any(self._current(h) for h in self.live):
            # EBUSY after the kernel's grace for closes in flight, which a short one does here.
            grace, kernel_module.CLOSE_GRACE = kernel_module.CLOSE_GRACE, 0.001
            try:
                got = outcome(self.backend.kernel.kldunload, self.driver)
            finally:
                kernel_module.CLOSE_GRACE = grace
            assert got == ("errno", "EBUSY"), got
            return
        got = outcome(self.backend.kernel.kldunload, self.driver)
        assert got[0] == "ok", got
        self.backend.settle()
        self.loaded = False

    @rule()
    def force_unload(self) -> None:
        if self.loaded:
            self.backend.kernel.kldunload(self.driver, force=True)
            self.backend.settle()
            self.loaded = False

    @precondition(lambda self: not self.loaded)
    @rule()
    def reload(self) -> None:
        self.load()

    # -- data --------------------------------------------------------------------------

    def _gone_or_bad(self, handle: Handle, needs: bool) -> str | None:
        """The errno every call on this handle gets before the driver sees it, if any.  (A 0-byte
        read of a destroyed device may also return 0: Linux does not ask a FUSE server for it.)"""
        if not needs:
            return "EBADF"
        if not self._current(handle):
            return "ENXIO"
        return None

    @rule(handle=handles, size=sizes)
    def read(self, handle: Handle | None, size: int) -> None:
        if handle is None or handle not in self.live:
            return
        got = outcome(self.backend.read, handle.f, size)
        refused = self._gone_or_bad(handle, handle.readable)
        if refused:
            assert got == ("errno", refused) or (size == 0 and refused == "ENXIO" and got == ("ok", b"")), got
            return
        expected = self.expect_read(handle, size)
        assert got == expected, (got, expected)

    @rule(handle=handles, data=payloads)
    def write(self, handle: Handle | None, data: bytes) -> None:
        if handle is None or handle not in self.live:
            return
        got = outcome(self.backend.write, handle.f, data)
        refused = self._gone_or_bad(handle, handle.writable)
        if refused:
            assert got == ("errno", refused), got
            return
        expected = self.expect_write(handle, data)
        assert got == expected, (got, expected)

    @rule(handle=handles, size=sizes, offset=offsets)
    def pread(self, handle: Handle | None, size: int, offset: int) -> None:
        if handle is None or handle not in self.live:
            return
        got = outcome(self.backend.pread, handle.f, size, offset)
        if not self.seekable:
            assert got == ("errno", "ESPIPE"), got
            return
        refused = self._gone_or_bad(handle, handle.readable)
        if refused:
            assert got == ("errno", refused) or (size == 0 and refused == "ENXIO" and got == ("ok", b"")), got
            return
        expected = self.expect_pread(size, offset)
        assert got == expected, (got, expected)

    @rule(handle=handles, data=payloads, offset=offsets)
    def pwrite(self, handle: Handle | None, data: bytes, offset: int) -> None:
        if handle is None or handle not in self.live:
            return
        got = outcome(self.backend.pwrite, handle.f, data, offset)
        if not self.seekable:
            assert got == ("errno", "ESPIPE"), got
            return
        refused = self._gone_or_bad(handle, handle.writable)
        if refused:
            assert got == ("errno", refused), got
            return
        expected = self.expect_pwrite(data, offset)
        assert got == expected, (got, expected)

    @rule(handle=handles)
    def unknown_ioctl(self, handle: Handle | None) -> None:
        if handle is None or handle not in self.live:
            return
        got = outcome(self.backend.ioctl_none, handle.f, UNKNOWN_IOCTL)
        assert got == ("errno", "ENXIO" if not self._current(handle) else "ENOTTY"), got

    @rule(handle=handles)
    def poll(self, handle: Handle | None) -> None:
        if handle is None or handle not in self.live or not self._current(handle):
            return  # a destroyed device's poll answer is the transport's (POLLERR, POLLNVAL...)
        got = outcome(self.backend.poll, handle.f, POLLIN | POLLOUT)
        assert got[0] == "ok", got
        assert got[1] & (POLLIN | POLLOUT) == self.expect_poll(), (got, self.expect_poll())

    # -- the model, per driver -----------------------------------------------------------

    def expect_read(self, handle: Handle, size: int) -> tuple[str, Any]:
        raise NotImplementedError

    def expect_write(self, handle: Handle, data: bytes) -> tuple[str, Any]:
        raise NotImplementedError

    def expect_pread(self, size: int, offset: int) -> tuple[str, Any]:
        raise NotImplementedError

    def expect_pwrite(self, data: bytes, offset: int) -> tuple[str, Any]:
        raise NotImplementedError

    def expect_poll(self) -> int:
        return POLLIN | POLLOUT


class HelloMachine(DriverMachine):
    """hello: the last message written; reads from the caller's offset."""

    driver, device = "hello", "rustmodule"

    def reset_model(self) -> None:
        self.message = HELLO_DEFAULT

    def expect_read(self, handle: Handle, size: int) -> tuple[str, Any]:
        data = self.message[handle.position : handle.position + size]
        handle.position += len(data)
        return "ok", data

    def expect_write(self, handle: Handle, data: bytes) -> tuple[str, Any]:
        self.message = data
        handle.position += len(data)
        return "ok", len(data)

    def expect_pread(self, size: int, offset: int) -> tuple[str, Any]:
        return "ok", self.message[offset : offset + size]

    def expect_pwrite(self, data: bytes, offset: int) -> tuple[str, Any]:
        self.message = data
        return "ok", len(data)


class MembufMachine(DriverMachine):
    """membuf: a buffer that grows with writes past its end; FIOC_GET_SIZE and FIOC_SET_SIZE."""

    driver, device = "membuf", "membuf"

    def reset_model(self) -> None:
        self.data = bytearray()

    def _put(self, data: bytes, offset: int) -> None:
        if offset + len(data) > len(self.data):
            self.data.extend(bytes(offset + len(data) - len(self.data)))
        self.data[offset : offset + len(data)] = data

    def expect_read(self, handle: Handle, size: int) -> tuple[str, Any]:
        data = bytes(self.data[handle.position : handle.position + size])
        handle.position += len(data)
        return "ok", data

    def expect_write(self, handle: Handle, data: bytes) -> tuple[str, Any]:
        self._put(data, handle.position)
        handle.position += len(data)
        return "ok", len(data)

    def expect_pread(self, size: int, offset: int) -> tuple[str, Any]:
        return "ok", bytes(self.data[offset : offset + size])

    def expect_pwrite(self, data: bytes, offset: int) -> tuple[str, Any]:
        self._put(data, offset)
        return "ok", len(data)

    @rule(handle=DriverMachine.handles, size=st.one_of(st.none(), st.integers(min_value=0, max_value=6000)))
    def fioc_size(self, handle: Handle | None, size: int | None) -> None:
        if handle is None or handle not in self.live:
            return
        cmd, value = (FIOC_GET_SIZE, 0) if size is None else (FIOC_SET_SIZE, size)
        got = outcome(self.backend.ioctl_size, handle.f, cmd, value)
        if not self._current(handle):
            assert got == ("errno", "ENXIO"), got
            return
        if size is None:
            assert got == ("ok", len(self.data)), (got, len(self.data))
        else:
            assert got[0] == "ok", got
            del self.data[size:]
            self.data.extend(bytes(size - len(self.data)))


class FifoMachine(DriverMachine):
    """fifo: a bounded pipe, opened O_NONBLOCK (EAGAIN where it would sleep); a blocked reader on
    another thread is woken by a write."""

    driver, device = "fifo", "fifo"
    seekable = False
    extra_flags = os.O_NONBLOCK

    def reset_model(self) -> None:
        self.buffer = bytearray()

    def expect_read(self, handle: Handle, size: int) -> tuple[str, Any]:
        if size == 0:
            return "ok", b""
        if not self.buffer:
            return "errno", "EAGAIN"
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return "ok", data

    def expect_write(self, handle: Handle, data: bytes) -> tuple[str, Any]:
        room = FIFO_CAPACITY - len(self.buffer)
        if not room:
            return "errno", "EAGAIN"
        self.buffer += data[:room]
        return "ok", min(room, len(data))

    def expect_poll(self) -> int:
        return (POLLIN if self.buffer else 0) | (POLLOUT if len(self.buffer) < FIFO_CAPACITY else 0)

    @precondition(lambda self: self.loaded and not self.buffer)
    @rule(size=st.integers(min_value=1, max_value=300), data=payloads)
    def blocked_reader_woken_by_writer(self, size: int, data: bytes) -> None:
        reader = self.backend.open(self.device, os.O_RDONLY)
        writer = self.backend.open(self.device, os.O_WRONLY | os.O_NONBLOCK)
        got: list[tuple[str, Any]] = []
        thread = threading.Thread(target=lambda: got.append(outcome(self.backend.read, reader, size)), daemon=True)
        try:
            thread.start()
            thread.join(0.01)  # usually asleep in the driver by now; if not, the read finds the data
            assert outcome(self.backend.write, writer, data) == ("ok", len(data))
            thread.join(10)
            assert not thread.is_alive(), "the blocked reader was not woken"
            assert got == [("ok", data[:size])], got
            self.buffer += data[size:]
        finally:
            self.backend.close(writer)
            self.backend.close(reader)

    @invariant()
    def within_capacity(self) -> None:
        assert len(self.buffer) <= FIFO_CAPACITY


def machines(backend: Backend) -> list[type[DriverMachine]]:
    """One machine class per driver, bound to `backend`."""
    return [type(f"{base.__name__}_{backend.name}", (base,), {"backend": backend})
            for base in (HelloMachine, MembufMachine, FifoMachine)]
