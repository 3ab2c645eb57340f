"""The pty transport: a serial port as the slave of a pseudo-terminal (spec §5).

pykld holds the master; programs open the slave through /dev/ttyNAME (a
symlink, made as root) or DEV_DIR/ttyNAME, and get the host kernel's real tty:
termios, n_tty, VMIN/VTIME, TIOCEXCL, TIOCINQ, tcdrain, winsize.  The device
behind it is served through the kernel's ordinary file dispatch, as a program
would use it: the first open of the slave opens the cdev, the last close
closes it, bytes written to the slave are written to the cdev, bytes the cdev
gives are written to the master.  Line settings are the slave's termios,
read off the master (TCGETS2 there returns the slave's) and passed on as
TCSETS2 whenever they change; a device that refuses them gets its own
settings put back on the line.

What a pty cannot carry, and what the device sees instead: no modem lines
(TIOCM* is ENOTTY for the program; the device sees DTR and RTS rise at the
first open and drop at the last close), no parity or character size (the
kernel forces CS8 and clears PARENB), no break (tcsendbreak succeeds and the
device hears nothing).

Observing the program without a slave descriptor of our own (holding one
would hide every hang-up): inotify on /dev/pts/N reports each open and close;
packet mode (TIOCPKT) reports the program's flushes; the termios are polled
every TERMIOS_POLL seconds and around every open, close and burst of data.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import select
import struct
import threading
from typing import TYPE_CHECKING

from pykld.kernel.file import control_file

if TYPE_CHECKING:
    from pykld.kernel.devfs import Cdev
    from pykld.kernel.file import OpenFile
    from pykld.kernel.kernel import Kernel

TIOCPKT = 0x5420
TIOCPKT_FLUSHREAD = 0x01
TCGETS2, TCSETS2, TCFLSH, TCIFLUSH = 0x802C542A, 0x402C542B, 0x540B, 0
TERMIOS_SIZE = 44
IN_OPEN, IN_CLOSE_WRITE, IN_CLOSE_NOWRITE = 0x20, 0x08, 0x10
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
TERMIOS_POLL = 0.05  # seconds between looks at the slave's termios
CHUNK = 4096

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def pty_unavailable() -> str | None:
    """Why no pseudo-terminal can be made here, or None."""
    if not os.path.exists("/dev/ptmx"):
        return "no /dev/ptmx (no devpts in this container)"
    return None


def _inotify_watch(path: str) -> int:
    fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"inotify_init1: {os.strerror(code)}", None)
    if _libc.inotify_add_watch(fd, path.encode(), IN_OPEN | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE) < 0:
        code = ctypes.get_errno()
        os.close(fd)
        raise OSError(code, f"inotify_add_watch {path}: {os.strerror(code)}", None)
    return int(fd)


class _WakePoller:
    """The cdev has output: wake the port's loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def notify(self) -> None:
        try:
            os.write(self.fd, b"x")
        except OSError:
            pass  # the pipe is full (the loop wakes anyway) or closed (the port is gone)


class PtyPort:
    """One cdev published as a pseudo-terminal, and the thread that carries its bytes."""

    def __init__(self, kernel: Kernel, cdev: Cdev, link: str) -> None:
        self.kernel = kernel
        self.cdev = cdev
        self.link = link
        self.control = control_file(kernel, cdev)  # for the termios, never an open the device sees
        self.data: OpenFile | None = None  # the cdev's open while the program has the slave open
        self.pending = b""  # device output the master has not taken yet (the program reads slowly)
        self.stopping = False
        self.master, slave = os.openpty()
        try:
            self.slave_path = os.ttyname(slave)
            self.termios = bytes(self.control.ioctl(TCGETS2)[1] or b"")
            fcntl.ioctl(self.master, TCSETS2, self.termios)  # the slave's termios, set through the master
        finally:
            os.close(slave)
        fcntl.ioctl(self.master, TIOCPKT, struct.pack("i", 1))
        os.set_blocking(self.master, False)
        self._own_slave()
        self.inotify = _inotify_watch(self.slave_path)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poller = _WakePoller(self.wake_w)
        self._hup = select.poll()  # POLLHUP on the master: no slave is open
        self._hup.register(self.master, 0)
        self.thread = threading.Thread(target=self._run, name=f"pykld-pty {cdev.name}", daemon=True)

    def log(self, text: str) -> None:
        self.kernel.printf("kernel", f"{self.cdev.name}: {text}")

    def _own_slave(self) -> None:
        """Owner and mode as make_dev says; a non-root daemon can only keep its own."""
        os.chmod(self.slave_path, self.cdev.mode)
        try:
            os.chown(self.slave_path, self.cdev.uid, self.cdev.gid)
        except PermissionError:
            st = os.stat(self.slave_path)
            self.log(f"{self.slave_path} stays owned by {st.st_uid}:{st.st_gid} (not root: cannot give it to "
                     f"{self.cdev.uid}:{self.cdev.gid})")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.poller.notify()
        if self.thread.ident is not None:
            self.thread.join(5)
        self._close_data()
        for fd in (self.inotify, self.wake_r, self.wake_w, self.master):
            os.close(fd)  # the last close of the master hangs up the program

    # -- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        poll = select.poll()
        poll.register(self.inotify, select.POLLIN)
        poll.register(self.wake_r, select.POLLIN)
        watching_master = False
        while not self.stopping:
            want = (select.POLLIN if self.data is not None else 0) | (select.POLLOUT if self.pending else 0)
            if want:
                poll.register(self.master, want)
            elif watching_master:  # not even for POLLHUP, which a master reports while no slave is open
                poll.unregister(self.master)
            watching_master = bool(want)
            try:
                poll.poll(TERMIOS_POLL * 1000)
                self._drain_wakes()
                self._opens_and_closes()
                self._check_termios()
                if self.data is not None:
                    self._from_program()
                    self._to_program()
            except Exception as exc:  # a bug here must not silently stop the port
                self.log(f"pty transport: {exc!r}")

    def _drain_wakes(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _opens_and_closes(self) -> None:
        """Open the device when the program has the slave open, close it when no one has.

        inotify says that something happened, not how often: identical events in a row
        are coalesced, so two opens may read as one.  Whether the slave is open is the
        master's POLLHUP (set while no slave descriptor exists).  A program that came and
        went between two looks (IN_OPEN seen, the slave closed again) still gets its
        bytes to the device: open, drain, close."""
        try:
            events = os.read(self.inotify, 4096)
        except BlockingIOError:
            events = b""
        opened = False
        offset = 0
        while offset < len(events):
            _, mask, _, name_len = _EVENT.unpack_from(events, offset)
            offset += _EVENT.size + name_len
            opened = opened or bool(mask & IN_OPEN)
        hung_up = bool(self._hup.poll(0))
        if self.data is None and (opened or not hung_up):
            self._open_data()
        if self.data is not None and hung_up:
            self._check_termios()  # what `stty -F` set just before it closed
            self._from_program()  # the program's last bytes, written before it closed
            self._close_data()

    def _open_data(self) -> None:
        self._check_termios()
        try:
            self.data = self.kernel.open_cdev(self.cdev, os.O_RDWR | os.O_NONBLOCK, uid=0, gids=(0,),
                                              check_access=False)
        except OSError as exc:
            # The program has the slave open already; it sees a silent line.
            self.log(f"open of the device failed: {exc.strerror}")

    def _close_data(self) -> None:
        data, self.data, self.pending = self.data, None, b""
        if data is not None:
            try:
                data.close()
            except OSError as exc:
                self.log(f"close of the device failed: {exc.strerror}")

    def _check_termios(self) -> None:
        now = fcntl.ioctl(self.master, TCGETS2, bytes(TERMIOS_SIZE))
        if now == self.termios:
            return
        try:
            self.control.ioctl(TCSETS2, 0, now)
            self.termios = now
        except OSError as exc:
            self.log(f"line settings refused by the device ({exc.strerror}); its own are back on the line")
            fcntl.ioctl(self.master, TCSETS2, self.termios)

    def _from_program(self) -> None:
        """What the program wrote (or flushed): to the device."""
        assert self.data is not None
        while True:
            try:
                packet = os.read(self.master, CHUNK + 1)
            except (BlockingIOError, OSError):  # EAGAIN, or EIO: no slave open just now
                return
            if not packet:
                return
            status, data = packet[0], packet[1:]
            if status == 0 and data:
                self._check_termios()  # the bytes go out at the settings they were written with
                view = memoryview(data)
                while view:
                    view = view[self.data.write(0, view):]
            elif status & TIOCPKT_FLUSHREAD:  # tcflush(TCIFLUSH): what the program had not read is gone
                self.pending = b""
                self.control.ioctl(TCFLSH, TCIFLUSH)

    def _to_program(self) -> None:
        """What the device sent: to the master, as much as the program's queue takes."""
        assert self.data is not None
        while True:
            if not self.pending:
                if not self.data.poll(select.POLLIN, self.poller):
                    return
                try:
                    self.pending = self.data.read(0, CHUNK).tobytes()
                except BlockingIOError:
                    return
                if not self.pending:
                    return
            try:
                written = os.write(self.master, self.pending)
            except BlockingIOError:
                return  # the program's queue is full: the loop polls POLLOUT
            self.pending = self.pending[written:]


class PtyTransport:
    """Publishes the cdevs that ask for "pty" as pseudo-terminals: the symlink at /dev/NAME
    as root, else in `dev_dir` (or, when that is a FUSE devfs, served by it: `serve_links`)."""

    name = "pty"

    def __init__(self, kernel: Kernel, dev_dir: str, bind: bool = True, links_in_devfs: bool = False) -> None:
        self.kernel = kernel
        self.dev_dir = os.path.abspath(dev_dir)
        self.bind = bind and os.geteuid() == 0
        self.links_in_devfs = links_in_devfs and not self.bind  # the FUSE devfs shows the links itself
        self.ports: dict[Cdev, PtyPort] = {}
        self._lock = threading.Lock()

    def serves(self, cdev: Cdev) -> bool:
        return cdev.transport == self.name

    def device_path(self, cdev_name: str) -> str:
        return f"/dev/{cdev_name}" if self.bind else os.path.join(self.dev_dir, cdev_name)

    def slave_path(self, cdev: Cdev) -> str | None:
        port = self.ports.get(cdev)
        return port.slave_path if port is not None else None

    def start(self) -> None:
        why_not = pty_unavailable()
        if why_not is not None:
            self.kernel.printf("kernel", f"pty: serial ports will not be published: {why_not}")
            return
        for cdev in self.kernel.devfs:
            self._on_devfs("create", cdev)
        self.kernel.devfs.subscribe(self._on_devfs)

    def _on_devfs(self, what: str, cdev: Cdev) -> None:
        if not self.serves(cdev):
            return
        if what == "create":
            try:
                port = PtyPort(self.kernel, cdev, self.device_path(cdev.name))
            except OSError as exc:
                self.kernel.printf("kernel", f"{cdev.name}: no pseudo-terminal: {exc.strerror or exc}")
                return
            if not self.links_in_devfs and not self._link(port):
                port.stop()
                return
            with self._lock:
                self.ports[cdev] = port
            port.start()
            return
        with self._lock:
            gone = self.ports.pop(cdev, None)
        if gone is not None:
            self._unlink(gone)
            gone.stop()

    def _link(self, port: PtyPort) -> bool:
        """Symlink the device's name to the slave; a stale link of a killed daemon (into
        /dev/pts) is replaced, anything else left alone."""
        link = port.link
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.lexists(link):
            if not (os.path.islink(link) and os.readlink(link).startswith("/dev/pts/")):
                self.kernel.printf("kernel", f"{port.cdev.name}: {link} exists and is not a pty link; not published")
                return False
            os.unlink(link)
        os.symlink(port.slave_path, link)
        return True

    def _unlink(self, port: PtyPort) -> None:
        if self.links_in_devfs:
            return
        try:
            if os.readlink(port.link) == port.slave_path:
                os.unlink(port.link)
        except OSError:
            pass  # already gone

    def settle(self) -> None:
        """Ports are published synchronously: nothing to wait for."""

    def stop(self) -> None:
        self.kernel.devfs.unsubscribe(self._on_devfs)
        with self._lock:
            ports = list(self.ports.values())
            self.ports.clear()
        for port in ports:
            self._unlink(port)
            port.stop()
