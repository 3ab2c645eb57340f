"""The fuse transport: a devfs mounted with FUSE, one file per cdev.

Devices keep device semantics on a filesystem made for files: direct I/O (every
read and write reaches the driver), the caller's offset passed through,
streams nonseekable, O_TRUNC/O_CREAT of shell redirections ignored, ioctl in
FUSE's restricted form, poll with wake-up notifications, FUSE_INTERRUPT as
EINTR.  Permissions are the kernel's (default_permissions) from make_dev's
mode, uid and gid.  As root each device is also bind-mounted at /dev/NAME.
"""

from __future__ import annotations

import errno
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pykld.fuse import abi, notify, reply
from pykld.fuse.request import Request, negotiate_minor
from pykld.kernel.sysctl import SysctlOid
from pykld.transport import mount, uring
from pykld.transport.fileops import FileOps
from pykld.transport.session import Reply, Session

if TYPE_CHECKING:
    from pykld.kernel.devfs import Cdev
    from pykld.kernel.kernel import Kernel

ROOT = abi.FUSE_ROOT_ID
MAX_WRITE = 1 << 20  # one request carries up to 1 MiB
TIMEOUT = 1.0  # seconds the kernel may cache names and attributes
# No FUSE_ATOMIC_O_TRUNC: with it the kernel answers a truncating open (a shell's `>`)
# itself by setting the file's size to 0, and every later write to a stream would "extend"
# it and take the inode lock exclusively again (see FileOps.open_flags).  Without it the
# kernel asks us (SETATTR), and we answer with the device's size.
INIT_FLAGS = abi.FUSE_ASYNC_READ | abi.FUSE_BIG_WRITES | abi.FUSE_MAX_PAGES | abi.FUSE_PARALLEL_DIROPS
# The size a stream reports: no write reaches past it, so FUSE lets writers run in
# parallel.  Streams have no position (lseek and pread are ESPIPE), so programs that
# size their reads by st_size after checking that the file seeks never use it.
STREAM_SIZE = (1 << 63) - 1
STREAM_BLOCKS = STREAM_SIZE // 512 + 1  # not sparse: cp would try SEEK_DATA on it, and fail
PARALLEL_WRITES_MINOR = 38  # FUSE 7.38, Linux 6.2: FOPEN_PARALLEL_DIRECT_WRITES
RING_MINOR = 36  # the first minor whose INIT reply carries flags2, where FUSE_OVER_IO_URING is
DEFAULT_DEV_DIR = "/run/pykld/dev"


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class DevfsHandler(FileOps):
    """Answers FUSE requests from the kernel's devfs: names, attributes, opens."""

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self.started = _ns(time.time())
        self._dir_ino: dict[str, int] = {"": ROOT}
        self._dir_path: dict[int, str] = {ROOT: ""}
        self._cdevs: dict[int, Cdev] = {}
        self._lock = threading.Lock()
        self.destroyed = threading.Event()
        self.parallel_writes = False  # whether the kernel lets writers of one stream run in parallel
        # Devices another transport publishes (a serial port over a pty) are shown as a
        # symlink to where that transport put them (link_of), or not at all (None).
        self.foreign: Callable[[Cdev], bool] = lambda cdev: False
        self.link_of: Callable[[Cdev], str | None] = lambda cdev: None
        self.ring_wanted = False  # FuseTransport's plan: offer FUSE over io_uring at INIT
        self.connection: int | None = None  # the connection's number in fusectl (its device minor)
        self.rings: uring.RingServer | None = None

    def handlers(self) -> dict[int, Any]:
        op = abi.Opcode
        table = super().handlers()
        table.update({
            op.INIT: self.do_init, op.LOOKUP: self.do_lookup, op.GETATTR: self.do_getattr,
            op.SETATTR: self.do_setattr, op.OPEN: self.do_open, op.OPENDIR: self.do_opendir,
            op.READDIR: self.do_readdir, op.RELEASEDIR: self.do_releasedir, op.STATFS: self.do_statfs,
            op.ACCESS: self.do_access, op.FORGET: self.no_reply, op.BATCH_FORGET: self.no_reply,
            op.DESTROY: self.do_destroy, op.READLINK: self.do_readlink,
        })
        for refused in (op.CREATE, op.MKNOD, op.MKDIR, op.UNLINK, op.RMDIR, op.RENAME, op.RENAME2,
                        op.SYMLINK, op.LINK, op.SETXATTR, op.REMOVEXATTR):
            table[refused] = self.do_refuse
        return table

    def compiled_entries(self) -> dict[int, Any]:
        op = abi.Opcode
        return {**super().compiled_entries(), op.OPEN: self.open_node, op.FORGET: None, op.BATCH_FORGET: None}

    # -- the node table ----------------------------------------------------------------

    def track(self, what: str, cdev: Cdev) -> None:
        with self._lock:
            if what == "create":
                self._cdevs[cdev.ino] = cdev
            else:
                self._cdevs.pop(cdev.ino, None)

    def _dir_node(self, path: str) -> int:
        with self._lock:
            ino = self._dir_ino.get(path)
            if ino is None:
                ino = self._dir_ino[path] = 1 << 40 | len(self._dir_ino)  # never a cdev's number
                self._dir_path[ino] = path
            return ino

    def known_directory(self, path: str) -> int | None:
        """The node of a directory the kernel has looked up, if it has."""
        return self._dir_ino.get(path)

    def _dir_attr(self, ino: int) -> reply.Attr:
        return reply.Attr(ino=ino, mode=stat.S_IFDIR | 0o755, nlink=2, atime=self.started,
                          mtime=self.started, ctime=self.started)

    def _link(self, cdev: Cdev) -> str | None:
        """Where the entry of a device published elsewhere points; None for our own."""
        return self.link_of(cdev) if self.foreign(cdev) else None

    def _shown(self, cdev: Cdev) -> bool:
        return not self.foreign(cdev) or self._link(cdev) is not None

    def _cdev_attr(self, cdev: Cdev) -> reply.Attr:
        created = _ns(cdev.created)
        link = self._link(cdev)
        if link is not None:
            return reply.Attr(ino=cdev.ino, size=len(link), mode=stat.S_IFLNK | 0o777, nlink=1, uid=cdev.uid,
                              gid=cdev.gid, atime=created, mtime=created, ctime=created)
        size, blocks = (0, 0) if cdev.seekable else (STREAM_SIZE, STREAM_BLOCKS)
        return reply.Attr(ino=cdev.ino, size=size, blocks=blocks, mode=stat.S_IFREG | cdev.mode, nlink=1,
                          uid=cdev.uid, gid=cdev.gid, atime=created, mtime=created, ctime=created)

    def _attr(self, nodeid: int) -> reply.Attr:
        cdev = self._cdevs.get(nodeid)
        if cdev is not None:
            return self._cdev_attr(cdev)
        path = self._dir_path.get(nodeid)
        if path is not None and (path == "" or path in self.kernel.devfs.directories()):
            return self._dir_attr(nodeid)
        raise OSError(errno.ENOENT, "no such node", None)

    def _children(self, path: str) -> list[tuple[str, bool]]:
        """(name, is_directory) of each entry in the devfs directory `path`."""
        prefix = path + "/" if path else ""
        names: dict[str, bool] = {}
        for cdev in self.kernel.devfs:
            if cdev.name.startswith(prefix) and self._shown(cdev):
                rest = cdev.name[len(prefix):]
                head, sep, _ = rest.partition("/")
                names[head] = names.get(head, False) or bool(sep)
        return sorted(names.items())

    # -- handlers ----------------------------------------------------------------------

    def do_init(self, req: Request) -> Reply:
        minor = negotiate_minor(req.args)
        flags = INIT_FLAGS & req.args.flags
        rings = self._rings_for(req) if self.ring_wanted else None
        if rings is not None:
            flags |= uring.FUSE_OVER_IO_URING
            minor = max(minor, RING_MINOR)
        self.session.minor = minor
        self.parallel_writes = req.args.minor >= PARALLEL_WRITES_MINOR
        if not self.parallel_writes:
            self.log(f"fuse: this kernel speaks FUSE 7.{req.args.minor}, which serialises the writes to"
                     " each device: a writer waiting behind one asleep in its driver cannot be"
                     " interrupted, or killed, until that one returns (parallel writes need FUSE"
                     f" 7.{PARALLEL_WRITES_MINOR}, Linux 6.2; CUSE has no such limit)")
        answer = reply.init(req.unique, minor=minor, max_readahead=req.args.max_readahead,
                            flags=flags, max_background=64, congestion_threshold=48, max_write=MAX_WRITE)
        if rings is None:
            return answer
        # The kernel takes ring entries only once it has our INIT reply.
        self.session.send(answer)
        rings.connection = self.connection
        self.rings = rings
        rings.start(self.handlers(), minor, self.compiled_entries())
        return None

    def _rings_for(self, req: Request) -> uring.RingServer | None:
        """The rings this connection will be served over, set up before the INIT reply
        promises them (the kernel then holds every request until they are registered)."""
        if not req.args.flags & uring.FUSE_OVER_IO_URING:
            self.log(f"fuse: io_uring: the kernel did not offer it at INIT (FUSE 7.{req.args.minor});"
                     " serving /dev/fuse")
            return None
        try:
            return uring.RingServer(self.session.fd, MAX_WRITE, self.log)
        except OSError as exc:
            self.log(f"fuse: io_uring: no rings ({exc.strerror}); serving /dev/fuse")
            return None

    def do_lookup(self, req: Request) -> Reply:
        parent = self._dir_path.get(req.nodeid)
        if parent is None:
            raise OSError(errno.ENOENT, "no such directory", None)
        name = req.args.name.decode("utf-8", "surrogateescape")
        path = f"{parent}/{name}" if parent else name
        cdev = self.kernel.devfs.lookup(path)
        if cdev is not None and self._shown(cdev):
            return reply.entry(req.unique, cdev.ino, self._cdev_attr(cdev), TIMEOUT, TIMEOUT)
        if path in self.kernel.devfs.directories():
            ino = self._dir_node(path)
            return reply.entry(req.unique, ino, self._dir_attr(ino), TIMEOUT, TIMEOUT)
        raise OSError(errno.ENOENT, f"no device {path}", None)

    def do_getattr(self, req: Request) -> Reply:
        return reply.attr(req.unique, self._attr(req.nodeid), TIMEOUT)

    def do_setattr(self, req: Request) -> Reply:
        # A device has no size to truncate or times to set: accept and ignore, as
        # a character device does for `echo hi > /dev/x`.  Ownership and mode are make_dev's.
        if req.args.valid & (abi.FATTR_MODE | abi.FATTR_UID | abi.FATTR_GID):
            raise OSError(errno.EPERM, "device ownership and mode are set by make_dev", None)
        return reply.attr(req.unique, self._attr(req.nodeid), TIMEOUT)

    def do_open(self, req: Request) -> Reply:
        return reply.open(req.unique, *self.open_node(req.unique, req.nodeid, req.args.flags, req.uid, req.gid,
                                                      req.pid))

    def open_node(self, unique: int, nodeid: int, flags: int, uid: int, gid: int, pid: int) -> tuple[int, int]:
        """OPEN of a devfs node: (fh, FOPEN flags); the compiled loop's entry point."""
        cdev = self._cdevs.get(nodeid)
        if cdev is None or self.foreign(cdev):
            raise OSError(errno.ENXIO if nodeid not in self._dir_path else errno.EISDIR, "device is gone", None)
        fh, _ = self.open_for(unique, cdev, flags, uid, gid, pid)
        return fh, self.open_flags(cdev)

    def do_readlink(self, req: Request) -> Reply:
        cdev = self._cdevs.get(req.nodeid)
        link = self._link(cdev) if cdev is not None else None
        if link is None:
            raise OSError(errno.EINVAL, "not a symlink", None)
        return reply.readlink(req.unique, link.encode())

    def do_opendir(self, req: Request) -> Reply:
        if req.nodeid not in self._dir_path:
            raise OSError(errno.ENOTDIR, "not a directory", None)
        return reply.open(req.unique, 0)

    def do_readdir(self, req: Request) -> Reply:
        path = self._dir_path.get(req.nodeid)
        if path is None:
            raise OSError(errno.ENOTDIR, "not a directory", None)
        entries = [(req.nodeid, 1, stat.S_IFDIR >> 12, b"."), (ROOT, 2, stat.S_IFDIR >> 12, b"..")]
        for index, (name, is_dir) in enumerate(self._children(path), start=3):
            full = f"{path}/{name}" if path else name
            if is_dir:
                entries.append((self._dir_node(full), index, stat.S_IFDIR >> 12, name.encode()))
            else:
                cdev = self.kernel.devfs.lookup(full)
                if cdev is not None:
                    kind = stat.S_IFLNK if self._link(cdev) is not None else stat.S_IFREG
                    entries.append((cdev.ino, index, kind >> 12, name.encode()))
        return reply.dirents(req.unique, entries[req.args.offset:], req.args.size)

    def do_releasedir(self, req: Request) -> Reply:
        return reply.empty(req.unique)

    def do_statfs(self, req: Request) -> Reply:
        return reply.statfs(req.unique)

    def do_access(self, req: Request) -> Reply:
        return reply.empty(req.unique)  # default_permissions: the kernel checked already

    def do_refuse(self, req: Request) -> Reply:
        raise OSError(errno.EPERM, "devfs entries come from make_dev only", None)

    def no_reply(self, req: Request) -> Reply:
        return None

    def do_destroy(self, req: Request) -> Reply:
        self.destroyed.set()
        return reply.empty(req.unique)


class FuseTransport:
    """Publishes a kernel's devices in a FUSE devfs at `dev_dir` (and /dev/NAME when root)."""

    name = "fuse"

    def __init__(self, kernel: Kernel, dev_dir: str = DEFAULT_DEV_DIR, bind: bool = True) -> None:
        self.kernel = kernel
        self.dev_dir = os.path.abspath(dev_dir)
        self.bind = bind and os.geteuid() == 0
        self.handler = DevfsHandler(kernel)
        self.session: Session | None = None
        self.fd = -1
        self._events: queue.Queue[tuple[str, Cdev] | None] = queue.Queue()
        self._bound: dict[str, list[str]] = {}  # /dev path -> directories we created for it
        self._worker: threading.Thread | None = None
        self._sysctls: list[SysctlOid] = []

    def _ring_sysctls(self) -> list[SysctlOid]:
        handler = self.handler

        def requests() -> int:
            return handler.rings.requests if handler.rings is not None else 0

        def rings() -> int:
            served = handler.rings
            return len(served.queues) if served is not None and not served.failed.is_set() else 0
        return [SysctlOid("kern.fuse.uring.requests", "uint", "requests served over FUSE's io_uring", requests,
                          None, None),
                SysctlOid("kern.fuse.uring.rings", "uint", "io_uring queues serving FUSE (0: /dev/fuse only)", rings,
                          None, None)]

    def device_path(self, cdev_name: str) -> str:
        """Where callers find the device."""
        return f"/dev/{cdev_name}" if self.bind else os.path.join(self.dev_dir, cdev_name)

    def start(self) -> None:
        for stale, why_not in mount.clear_stale(self.dev_dir):
            self.kernel.printf("kernel", f"cleared stale mount {stale}" if why_not is None
                               else f"stale mount {stale} left in place: {why_not}")
        os.makedirs(self.dev_dir, exist_ok=True)
        if any(m.mount_point == self.dev_dir for m in mount.mounts()):
            raise OSError(errno.EBUSY, f"{self.dev_dir} is already mounted (another pykld?)", None)
        options = "default_permissions"
        if mount.allow_other_permitted():
            options += ",allow_other"
        options += f",max_read={MAX_WRITE}"
        self.handler.ring_wanted = uring.plan(lambda text: self.kernel.printf("kernel", text))
        self.fd = mount.mount_fuse(self.dev_dir, options)
        self.handler.connection = uring.connection_of(self.dev_dir)
        self.session = Session(self.fd, self.handler.handlers(), abi.read_buffer_size(MAX_WRITE, 256),
                               name="fuse", log=lambda text: self.kernel.printf("kernel", text),
                               entries=self.handler.compiled_entries())
        self.handler.attach(self.session)
        if self.handler.ring_wanted:
            self.handler._ensure_reader = uring.ensure_reader_here(self.session)
        for oid in self._ring_sysctls():
            try:
                self._sysctls.append(self.kernel.sysctl_add(oid))
            except OSError:
                pass  # another FUSE transport of this kernel shows its own
        for cdev in self.kernel.devfs:
            self._on_devfs("create", cdev)
        self.kernel.devfs.subscribe(self._on_devfs)
        self._worker = threading.Thread(target=self._dev_events, name="pykld-devctl", daemon=True)
        self._worker.start()
        self.session.start()
        self.settle()

    def _on_devfs(self, what: str, cdev: Cdev) -> None:
        self.handler.track(what, cdev)
        self._events.put((what, cdev))

    def _dev_events(self) -> None:
        """Bind mounts and cache invalidations, off the caller's thread: both make the
        kernel send us requests, which must not wait on the thread that caused them."""
        while True:
            item = self._events.get()
            try:
                if item is None:
                    return
                what, cdev = item
                if what == "create":
                    self._publish(cdev)
                else:
                    self._withdraw(cdev)
            except Exception as exc:
                self.kernel.printf("kernel", f"devfs event {item!r}: {exc}")
            finally:
                self._events.task_done()

    def _publish(self, cdev: Cdev) -> None:
        if self.bind and not self.handler.foreign(cdev):
            target = f"/dev/{cdev.name}"
            try:
                self._bound[target] = mount.bind_file(os.path.join(self.dev_dir, cdev.name), target)
            except OSError as exc:
                self.kernel.printf("kernel", f"{cdev.name}: not bound at {target}: {exc.strerror}")

    def _withdraw(self, cdev: Cdev) -> None:
        target = f"/dev/{cdev.name}"
        if target in self._bound:
            mount.unbind_file(target, self._bound.pop(target))
        parent_path, _, name = cdev.name.rpartition("/")
        parent = self.handler.known_directory(parent_path)
        if parent is not None and self.session is not None:
            self.session.send(notify.inval_entry(parent, name.encode()))

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until /dev reflects every make_dev and destroy_dev so far."""
        events = self._events
        with events.all_tasks_done:  # what Queue.join waits on, with a bound
            if events.all_tasks_done.wait_for(lambda: not events.unfinished_tasks, timeout):
                return
        self.kernel.printf("kernel", f"fuse: {events.unfinished_tasks} devfs change(s) not in /dev after {timeout}s")

    def stop(self) -> None:
        """Unpublish everything and unmount (modules are the kernel's to unload).

        Does all of it even when a step fails, then raises an OSError that says
        what could not be undone (a mount that fusermount3 refused to remove)."""
        self.kernel.devfs.unsubscribe(self._on_devfs)
        self.settle()
        for target in list(self._bound):
            mount.unbind_file(target, self._bound.pop(target))
        self._events.put(None)
        if self.session is not None:
            self.session.stop()
        failed: OSError | None = None
        if self.fd >= 0:
            try:
                mount.unmount_fuse(self.dev_dir)
            except OSError as exc:
                failed = exc
                self.kernel.printf("kernel", f"unmount {self.dev_dir}: {exc.strerror}")
            if self.handler.rings is not None:
                self.handler.rings.stop()  # before /dev/fuse is closed: its commands hold it open
            if self.session is not None:
                self.session.finished.wait(5)
            self.handler.close_all()
            os.close(self.fd)
            self.fd = -1
        for oid in self._sysctls:
            self.kernel.sysctl_remove(oid)
        self._sysctls = []
        if failed is not None:
            raise OSError(errno.EBUSY, f"{self.dev_dir} is still mounted: {failed.strerror}", None)
