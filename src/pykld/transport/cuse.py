"""The cuse transport: each cdev a true character device node, through Linux CUSE.

One channel (/dev/cuse descriptor) per cdev.  CUSE_INIT names the node and
asks for unrestricted ioctls; then the channel carries the same requests as
FUSE, served by the shared file operations.  Unrestricted ioctl lets a driver
follow pointers in its argument (copyin/copyout) through the kernel's retry
protocol: reads the driver needs are fetched by a retry and the driver run
again; its writes are sent back as out-iovecs after it ran once.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from pykld.fuse import abi, reply
from pykld.fuse.request import Request, negotiate_minor
from pykld.kernel import ioccom
from pykld.kernel.uaccess import Iovec, IovecMemory, NeedIovecs
from pykld.transport import programs
from pykld.transport.fileops import FileOps
from pykld.transport.session import Reply, Session

if TYPE_CHECKING:
    from pykld.kernel.devfs import Cdev
    from pykld.kernel.kernel import Kernel

MAX_IO = abi.FUSE_DEFAULT_MAX_PAGES_PER_REQ * 4096  # CUSE does not negotiate max_pages
NODE_TIMEOUT = 10.0
DRAIN_REPORT = 5.0  # seconds a destroyed cdev's channel waits for its files before dmesg says so
SPECULATIVE_OUT = 256  # bytes: caller structures up to this size are also asked for as out-iovecs


def cuse_unavailable() -> str | None:
    """Why CUSE cannot serve here, in one line, or None when it can.

    As root, a missing /dev/cuse is first asked for with `modprobe cuse`; a
    machine without modprobe (no kmod package) or without the module simply
    has no CUSE."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/cuse"):
        try:
            programs.run(["modprobe", "cuse"])
        except OSError as exc:
            return f"no /dev/cuse, and {exc.strerror}"
        if not os.path.exists("/dev/cuse"):
            return "no /dev/cuse, even after modprobe cuse"
    if not os.access("/dev/cuse", os.R_OK | os.W_OK):
        return "/dev/cuse is not readable and writable"
    return None


def cuse_available() -> bool:
    return cuse_unavailable() is None


class CuseHandler(FileOps):
    """Serves one cdev's channel."""

    def __init__(self, kernel: Kernel, cdev: Cdev) -> None:
        super().__init__(kernel)
        self.cdev = cdev
        self.ready = threading.Event()
        self.stopping = False
        # Notified when an open is released or the channel stops: a destroyed
        # cdev's channel waits on it for its last file.
        self.changed = threading.Condition()
        # Unrestricted ioctls in progress, by (fh, cmd, arg): the rounds so far, and
        # a finished call's reply waiting for its out-iovecs.
        self._rounds: dict[tuple[int, int, int], _Rounds] = {}
        self._finished: dict[tuple[int, int, int], tuple[int, bytes]] = {}
        # Linux CUSE passes every read and write at offset 0 and its lseek changes
        # nothing, so the position of each open is kept here: reads and writes
        # move it, as they move f_pos on a character device.
        self.positions = {}

    def handlers(self) -> dict[int, Any]:
        return {**super().handlers(), abi.Opcode.CUSE_INIT: self.do_cuse_init, abi.Opcode.OPEN: self.do_open,
                abi.Opcode.IOCTL: self.do_ioctl_unrestricted}

    def stop(self) -> None:
        """The channel is closing: workers leave, a drain stops waiting."""
        with self.changed:
            self.stopping = True
            self.changed.notify_all()

    def drained(self, timeout: float | None) -> bool:
        """Wait until no file is open on the channel, or it stops; False on timeout."""
        with self.changed:
            return self.changed.wait_for(lambda: not self.files or self.stopping, timeout)

    def do_release(self, req: Request) -> Reply:
        try:
            return super().do_release(req)
        finally:
            with self.changed:
                self.changed.notify_all()

    def drop_open_state(self, fh: int) -> None:
        super().drop_open_state(fh)
        for key in [k for k in (*self._rounds, *self._finished) if k[0] == fh]:
            self._rounds.pop(key, None)
            self._finished.pop(key, None)

    def do_cuse_init(self, req: Request) -> Reply:
        minor = negotiate_minor(req.args)
        if minor < abi.CUSE_MIN_MINOR:
            raise OSError(errno.EPROTO, f"kernel FUSE minor {minor} is too old for CUSE", None)
        self.session.minor = minor
        self.ready.set()
        return reply.cuse_init(req.unique, minor=minor, flags=abi.CUSE_UNRESTRICTED_IOCTL, max_read=MAX_IO,
                               max_write=MAX_IO, dev_major=0, dev_minor=0, devname=self.cdev.name)

    def do_open(self, req: Request) -> Reply:
        if self.stopping:  # the transport's own wake-up open: this worker leaves
            raise OSError(errno.ENODEV, "channel closing", None)
        fh, _ = self.open_cdev(req, self.cdev, req.args.flags)
        return reply.open(req.unique, fh, self.open_flags(self.cdev))

    def do_ioctl_unrestricted(self, req: Request) -> Reply:
        args = req.args
        if args.flags & abi.FUSE_IOCTL_COMPAT:
            raise OSError(errno.ENOSYS, "32-bit compat ioctls are not supported", None)
        file = self._file(args.fh)
        key = (args.fh, args.cmd, args.arg)
        finished = self._finished.pop(key, None)
        if finished is not None and args.out_size == len(finished[1]):
            return reply.ioctl(req.unique, finished[0], finished[1])  # the retry for our writes
        cmd = ioccom.decode(args.cmd)
        # A sized command's argument travels as in FUSE's restricted form.
        base_in = [(args.arg, cmd.size)] if cmd.size and cmd.copies_in else []
        base_out = [(args.arg, cmd.size)] if cmd.size and cmd.copies_out else []
        rounds = self._rounds.pop(key, None)
        if rounds is None or args.in_size != _total(rounds.reads) or args.out_size != _total(rounds.outs):
            rounds = _Rounds(list(base_in), list(base_out))  # a new call, not a retry of ours
            if args.in_size != _total(base_in) or args.out_size != _total(base_out):
                self._rounds[key] = rounds
                return reply.ioctl_retry(req.unique, rounds.reads, rounds.outs)
        memory = IovecMemory(rounds.reads, args.data)
        try:
            result, out = self._serve(req, file.ioctl, args.cmd, args.arg,
                                      args.data[: cmd.size] if base_in else None, memory)
        except NeedIovecs as need:
            fresh = [iov for iov in need.reads if iov not in rounds.reads]
            rounds.reads.extend(fresh)
            # Drivers write results back into the small structures they read (sizes,
            # status): asking for those as out-iovecs now saves a round afterwards.
            rounds.outs.extend(iov for iov in fresh if iov[1] <= SPECULATIVE_OUT and iov not in rounds.outs)
            self._rounds[key] = rounds
            return reply.ioctl_retry(req.unique, rounds.reads, rounds.outs)
        payload = bytes(out[: cmd.size]) if out is not None and base_out else b""
        if not memory.writes:
            return reply.ioctl(req.unique, result, payload)
        speculated = rounds.outs[len(base_out):]
        regions = _apply_writes(memory, speculated)
        if regions is not None:
            return reply.ioctl(req.unique, result, payload + b"".join(regions))
        # The driver wrote where we had not asked to: ask now, and answer the
        # retry from what this run produced, without running the driver again.
        out_iovs = base_out + [(addr, len(data)) for addr, data in memory.writes]
        self._finished[key] = (result, payload + b"".join(data for _, data in memory.writes))
        return reply.ioctl_retry(req.unique, rounds.reads, out_iovs)


class _Rounds(NamedTuple):
    """An unrestricted ioctl between retries: the caller memory it reads, and the
    out-iovecs the kernel will copy our reply into."""

    reads: list[Iovec]
    outs: list[Iovec]


def _total(iovs: list[Iovec]) -> int:
    return sum(length for _, length in iovs)


def _apply_writes(memory: IovecMemory, regions: list[Iovec]) -> list[bytes] | None:
    """The contents of `regions` (all fetched) after the driver's writes, or None when
    a write falls outside them."""
    contents = [bytearray(memory.read(addr, length)) for addr, length in regions]
    for addr, data in memory.writes:
        for (base, length), content in zip(regions, contents, strict=True):
            if base <= addr and addr + len(data) <= base + length:
                content[addr - base : addr - base + len(data)] = data
                break
        else:
            return None
    return [bytes(content) for content in contents]


class CuseChannel:
    """One cdev's /dev/cuse descriptor, its session and its node."""

    def __init__(self, kernel: Kernel, cdev: Cdev) -> None:
        self.kernel = kernel
        self.cdev = cdev
        self.node = f"/dev/{cdev.name}"
        self.rdev = 0
        self.handler = CuseHandler(kernel, cdev)
        self.fd = os.open("/dev/cuse", os.O_RDWR | os.O_CLOEXEC)
        self.session = Session(self.fd, self.handler.handlers(), abi.read_buffer_size(MAX_IO),
                               name=f"cuse:{cdev.name}", log=lambda text: kernel.printf("kernel", text),
                               entries=self.handler.compiled_entries())
        self.handler.attach(self.session)

    def start(self) -> None:
        self.session.start()
        if not self.handler.ready.wait(NODE_TIMEOUT):
            self.close()
            raise OSError(errno.ETIMEDOUT, f"CUSE did not initialise {self.node}", None)
        deadline = time.monotonic() + NODE_TIMEOUT
        while not os.path.exists(self.node):
            if time.monotonic() > deadline:
                self.close()
                raise OSError(errno.ETIMEDOUT, f"{self.node} did not appear", None)
            time.sleep(0.005)
        st = os.stat(self.node)
        self.rdev = st.st_rdev
        self._settle_udev()
        os.chown(self.node, self.cdev.uid, self.cdev.gid)
        os.chmod(self.node, self.cdev.mode)

    def _settle_udev(self) -> None:
        """Let a running udev finish with the new node before make_dev's owner and mode
        go on it: its rules would land after ours and undo them (Debian's give every
        /dev/tty[A-Z]*[0-9] group dialout and mode 0660, whatever the subsystem)."""
        if not os.path.exists("/run/udev/control") or programs.find("udevadm") is None:
            return
        try:
            programs.run(["udevadm", "settle", "--timeout=5"])
        except OSError as exc:
            self.kernel.printf("kernel", f"{self.node}: udevadm settle: {exc.strerror}; udev may change its mode")

    def withdraw_node(self) -> None:
        """Remove the node now, while open files still drain through the channel."""
        try:
            if os.path.exists(self.node) and os.stat(self.node).st_rdev == self.rdev:
                os.unlink(self.node)
        except OSError:
            pass

    def close(self) -> None:
        """Stop the workers (each leaves on a request we send it), then the channel."""
        self.handler.stop()
        self.session.stop()
        try:
            if self.rdev:
                self._wake_workers()
        except OSError as exc:
            self.kernel.printf("kernel", f"{self.node}: workers not woken: {exc}")
        finally:
            self.handler.close_all()
            os.close(self.fd)  # with no worker left in read(2), this unregisters the device

    def _wake_workers(self) -> None:
        # A worker blocked in read(2) on the channel only notices the end when a
        # request arrives; open our own node for it (a private one: the public
        # node may be gone already) until every worker has left.  It lives in /dev:
        # other file systems may be mounted nodev or not hold device nodes at all.
        # The opens come from a thread of their own: one that starts just as the
        # last worker leaves has nobody to answer it and waits until close() ends
        # the channel, which must not be this thread's wait.
        with tempfile.TemporaryDirectory(prefix=".pykld-wake-", dir="/dev") as private:
            node = os.path.join(private, "wake")
            os.mknod(node, 0o600 | stat.S_IFCHR, self.rdev)
            done = threading.Event()
            knocker = threading.Thread(target=_knock, args=(node, done), name=f"pykld-wake:{self.cdev.name}",
                                       daemon=True)
            knocker.start()
            try:
                if not self.session.finished.wait(5):
                    self.kernel.printf("kernel", f"{self.node}: still {self.session.workers} CUSE worker(s) "
                                                 "after 5 s; closing the channel under them")
            finally:
                done.set()


def _knock(node: str, done: threading.Event) -> None:
    """Open and close `node` until `done`: each open is a request that wakes a worker."""
    while not done.is_set():
        try:
            os.close(os.open(node, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass
        done.wait(0.001)


class CuseTransport:
    """Publishes every cdev of a kernel as a character device through CUSE."""

    name = "cuse"

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.channels: dict[Cdev, CuseChannel] = {}
        self._draining: list[CuseChannel] = []  # destroyed while open: closed when the last file goes
        self._lock = threading.Lock()
        self.foreign: Callable[[Cdev], bool] = lambda cdev: False  # devices another transport publishes

    def device_path(self, cdev_name: str) -> str:
        return f"/dev/{cdev_name}"

    def start(self) -> None:
        why_not = cuse_unavailable()
        if why_not is not None:
            raise OSError(errno.ENODEV, f"CUSE is not available: {why_not}", None)
        for cdev in self.kernel.devfs:
            self._on_devfs("create", cdev)
        self.kernel.devfs.subscribe(self._on_devfs)

    def _on_devfs(self, what: str, cdev: Cdev) -> None:
        if self.foreign(cdev):
            return
        if what == "create":
            created = CuseChannel(self.kernel, cdev)
            try:
                created.start()
            except OSError as exc:
                self.kernel.printf("kernel", f"{cdev.name}: no CUSE node: {exc.strerror}")
                return
            with self._lock:
                self.channels[cdev] = created
            return
        with self._lock:
            channel = self.channels.pop(cdev, None)
        if channel is None:
            return
        if cdev.open_count:
            channel.withdraw_node()
            with self._lock:
                self._draining.append(channel)
            threading.Thread(target=self._drain, args=(channel,), daemon=True).start()
        else:
            channel.close()

    def _drain(self, channel: CuseChannel) -> None:
        """A destroyed cdev's channel lives until its last open file is released (its
        callers get ENXIO meanwhile), as kern_conf's destroy_devl waits for threads."""
        if not channel.handler.drained(DRAIN_REPORT):
            self.kernel.printf("kernel", f"{channel.node}: still {len(channel.handler.files)} open file(s) on "
                                         f"the destroyed device after {DRAIN_REPORT:g} s; its channel waits "
                                         "for their close")
            channel.handler.drained(None)
        if not channel.handler.stopping:
            channel.close()
        with self._lock:
            if channel in self._draining:
                self._draining.remove(channel)

    def settle(self) -> None:
        """Channels are set up synchronously: nothing to wait for."""

    def stop(self) -> None:
        self.kernel.devfs.unsubscribe(self._on_devfs)
        with self._lock:
            channels = list(self.channels.values()) + self._draining
            self.channels.clear()
            self._draining.clear()
        for channel in channels:
            if not channel.handler.stopping:
                channel.close()
