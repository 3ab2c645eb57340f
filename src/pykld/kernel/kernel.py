"""The kernel: modules, devices, open files and the message buffer of one host.

This is the in-process API that tests, the sim transport and the daemon use:

    k = Kernel()
    k.kldload("examples/hello.py")
    with k.open("/dev/rustmodule", os.O_RDWR) as f: ...
    k.kldunload("hello")
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import types
from collections.abc import Callable
from typing import Any, NamedTuple

from pykld.kernel import file as files
from pykld.kernel import kthread, modules
from pykld.kernel.callout import Softclock
from pykld.kernel.devfs import Cdev, Devfs, DeviceLock
from pykld.kernel.dmesg import MessageBuffer
from pykld.kernel.fail import FailRule
from pykld.kernel.fail import add as fail_add
from pykld.kernel.fail import clear as fail_clear
from pykld.kernel.fault import contain, format_fault
from pykld.kernel.fd import SimFile
from pykld.kernel.malloc import MallocStat, MallocType
from pykld.kernel.modules import LoadedModule, ModuleEvent
from pykld.kernel.sched import Thread, enter, leave
from pykld.kernel.sysctl import SysctlOid, SysctlTree

_UNSET: Any = object()
CLOSE_GRACE = 0.5  # seconds an unload waits for closes still on their way


class ModuleStat(NamedTuple):
    """One row of kldstat."""

    id: int
    name: str
    path: str
    refs: int  # open files on the module's devices
    devices: list[str]


class Kernel:
    def __init__(self, dmesg_lines: int = 4096) -> None:
        self.devfs = Devfs(log=lambda text: self.printf("kernel", text))
        self.msgbuf = MessageBuffer(dmesg_lines)
        self.softclock = Softclock()  # the callouts of every module
        self._modules: dict[str, LoadedModule] = {}
        self._lock = threading.RLock()  # module registry changes, one at a time
        self._ids = itertools.count(1)
        self.sysctls = SysctlTree()

    # -- module(9) -------------------------------------------------------------

    def kldload(self, target: str | type) -> int:
        """Load the module in file `target` (a path, or a name looked up in the module
        path or importable), or the Module class `target` (a tool's own, built with its
        parameters: record/replay); run its LOAD event.  Returns the module's id.

        A LOAD that fails leaves nothing behind: its devices are destroyed and the
        error is raised (an OSError; a driver crash becomes EIO with its text)."""
        if isinstance(target, type):
            path = f"{target.__module__}.{target.__qualname__}"
            pymodule = types.ModuleType(f"pykld_class_{target.__name__}")  # in no registry: nothing to forget
        else:
            path = modules.resolve(target)
            try:
                pymodule = modules.import_fresh(path)
            except OSError:
                raise
            except BaseException as exc:
                self.log_fault(None, f"import of {path}", exc)
                raise OSError(errno.ENOEXEC, f"{path}: import failed: {exc!r}", None) from exc
        try:
            cls = target if isinstance(target, type) else modules.module_class(pymodule, path)
            name = getattr(cls, "name", None) or cls.__name__.lower()
            with self._lock:
                if name in self._modules:
                    raise OSError(errno.EEXIST, f"module {name!r} is already loaded", None)
                record = LoadedModule(name, path, None, pymodule, next(self._ids))
                record.malloc_types = [v for v in vars(pymodule).values() if isinstance(v, MallocType)]
                self._modules[name] = record
        except BaseException:
            modules.forget(pymodule)
            raise
        try:
            record.instance = self._as_module(record, "module construction", cls)
            self._event(record, ModuleEvent.LOAD)
        except BaseException:
            self._discard(record)
            raise
        return record.id

    def _as_module(self, record: LoadedModule, what: str, code: Callable[[], Any]) -> Any:
        """Run module code with the module as curthread; a crash becomes OSError(EIO)."""
        token = enter(Thread(self, record))
        try:
            return contain(self, record, what, code)
        finally:
            leave(token)

    def _event(self, record: LoadedModule, event: ModuleEvent) -> None:
        self._as_module(record, f"{event.name} event", lambda: record.instance.modevent(event))

    def _discard(self, record: LoadedModule) -> None:
        """Take away everything a module had: its callouts, tasks and threads, devices,
        registry entry, its code."""
        kthread.drain_module(self, record)
        for cdev in record.live_cdevs:
            cdev.destroy()
        self.sysctls.remove_owned(record)
        with self._lock:
            if self._modules.get(record.name) is record:
                del self._modules[record.name]
        for mtype in record.malloc_types:
            if mtype.inuse:
                self.printf("kernel", f"{record.name}: malloc type {mtype.name} leaks {mtype.inuse} bytes")
        modules.forget(record.pymodule)

    def kldunload(self, target: str | int, force: bool = False) -> None:
        """Unload a module by name or id.

        EBUSY while any of its devices is open, or when QUIESCE vetoes; `force`
        overrides both (open files then get ENXIO) and unloads even when UNLOAD fails."""
        with self._lock:
            record = self._find(target)
            if record.refs and not force and not self._closes_settle(record):
                raise OSError(errno.EBUSY, f"module {record.name}: {record.refs} open file(s)", None)
            try:
                self._event(record, ModuleEvent.QUIESCE)
            except OSError:
                if not force:
                    raise
            try:
                self._event(record, ModuleEvent.UNLOAD)
            except OSError as exc:
                if not force:
                    raise
                self.printf("kernel", f"{record.name}: forced unload despite: {exc}")
            self._discard(record)

    @staticmethod
    def _closes_settle(record: LoadedModule) -> bool:
        """Wait briefly for closes in flight: over FUSE the kernel sends RELEASE after
        close(2) has returned, so `cat dev; kldunload` would otherwise race it."""
        return files.wait_for_closes(lambda: not record.refs, CLOSE_GRACE)

    def _find(self, target: str | int) -> LoadedModule:
        for record in self._modules.values():
            if target in (record.name, record.id, str(record.id)):
                return record
        raise OSError(errno.ENOENT, f"module {target!r} is not loaded", None)

    def kldstat(self) -> list[ModuleStat]:
        with self._lock:
            records = sorted(self._modules.values(), key=lambda r: r.id)
        return [ModuleStat(r.id, r.name, r.path, r.refs, [c.name for c in r.live_cdevs]) for r in records]

    def module(self, target: str | int) -> LoadedModule:
        return self._find(target)

    def shutdown(self) -> None:
        """SHUTDOWN to every module, newest first, then unload them all (forced)."""
        with self._lock:
            records = sorted(self._modules.values(), key=lambda r: -r.id)
        for record in records:
            try:
                self._event(record, ModuleEvent.SHUTDOWN)
            except OSError as exc:
                self.printf("kernel", f"{record.name}: SHUTDOWN failed: {exc}")
            self.kldunload(record.name, force=True)

    # -- sysctl(9) --------------------------------------------------------------

    def sysctl_add(self, oid: SysctlOid) -> SysctlOid:
        return self.sysctls.add(oid)

    def sysctl_remove(self, oid: SysctlOid) -> None:
        self.sysctls.remove(oid)

    def sysctl(self, name: str, value: Any = _UNSET) -> Any:
        """The value of node `name`; given `value` (a Python value or text), set it and
        return the value it had.  ENOENT for an unknown name, EPERM for a read-only
        node, EINVAL for a value the node refuses; a driver crash is EIO."""
        oid = self.sysctls.find(name)
        old = self.sysctl_read(oid)
        if value is _UNSET:
            return old
        setter = oid.setter
        if setter is None:
            raise OSError(errno.EPERM, f"oid '{name}' is read only", None)
        new = oid.parse(value)
        self._sysctl_call(oid, "write", lambda: setter(new))
        return old

    def sysctl_read(self, oid: SysctlOid) -> Any:
        """A node's value, checked against its kind: a getter returning garbage is a
        driver bug, EIO for the reader."""
        value = self._sysctl_call(oid, "read", oid.getter)
        if not oid.holds(value):
            owner = oid.owner.name if oid.owner is not None else "kernel"
            self.printf(owner, f"sysctl {oid.name}: the getter returned {value!r}, not a {oid.kind}")
            raise OSError(errno.EIO, f"sysctl {oid.name}: the driver returned a {type(value).__name__}, "
                          f"not a {oid.kind}", None)
        return value

    def sysctl_list(self, prefix: str = "") -> list[SysctlOid]:
        return self.sysctls.list(prefix)

    def _sysctl_call(self, oid: SysctlOid, what: str, code: Callable[[], Any]) -> Any:
        if oid.owner is None:
            return code()
        return self._as_module(oid.owner, f"sysctl {what} of {oid.name}", code)

    # -- devices ---------------------------------------------------------------

    def make_dev(self, device: Any, name: str, uid: int = 0, gid: int = 0, mode: int = 0o600,
                 module: LoadedModule | None = None, transport: str | None = None) -> Cdev:
        if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise OSError(errno.EINVAL, f"make_dev: invalid mode {mode!r}", None)
        serialized = getattr(device, "serialized", True)
        cdev = Cdev(name=name, device=device, uid=uid, gid=gid, mode=mode & 0o777, module=module,
                    lock=DeviceLock() if serialized else None,
                    seekable=getattr(device, "seekable", True), transport=transport)
        self.devfs.add(cdev)
        if module is not None:
            module.cdevs.append(cdev)
        return cdev

    def lookup(self, path: str) -> Cdev:
        name = path[len("/dev/"):] if path.startswith("/dev/") else path
        cdev = self.devfs.lookup(name)
        if cdev is None:
            raise OSError(errno.ENOENT, f"no such device: {path}", None)
        return cdev

    def open_cdev(self, path: str | Cdev, flags: int = os.O_RDONLY, uid: int | None = None,
                  gids: tuple[int, ...] | None = None, pid: int | None = None,
                  check_access: bool = True, td: Thread | None = None) -> files.OpenFile:
        """d_open for a transport: the kernel-side file (no file position; the caller's
        kernel keeps that).  `open` is the in-process open(2) on top of it."""
        cdev = path if isinstance(path, Cdev) else self.lookup(path)
        return files.open_cdev(
            self, cdev, flags,
            os.geteuid() if uid is None else uid,
            (*os.getgroups(), os.getegid()) if gids is None else gids,
            os.getpid() if pid is None else pid, check_access, td)

    def open(self, path: str, flags: int = os.O_RDONLY, uid: int | None = None,
             gids: tuple[int, ...] | None = None) -> SimFile:
        """Open a device in process, as open(2) would: a file with a position."""
        return SimFile(self.open_cdev(path, flags, uid, gids))

    # -- fail(9) -----------------------------------------------------------------

    def fail(self, device: str, op: str, action: str, value: float, *, after: int = 0, times: int | None = None,
             prob: float | None = None, seed: int = 0, cmd: int | None = None) -> FailRule:
        """Set a fault point on `device`'s `op` (kernel/fail.py says what each part means);
        EINVAL for a rule that cannot apply, ENOENT for no such device.  Rules on one
        operation are tried in the order they were set; the first that fires acts."""
        cdev = self.lookup(device)
        return fail_add(cdev, FailRule(cdev.name, op, action, value, after, times, prob, seed, cmd))

    def fail_list(self) -> list[FailRule]:
        return [rule for cdev in self.devfs for rule in cdev.failpoints]

    def fail_clear(self, device: str | None = None, op: str | None = None) -> int:
        """Remove the rules of `device` (every device's when None), of one `op` if given."""
        cdevs = list(self.devfs) if device is None else [self.lookup(device)]
        return sum(fail_clear(cdev, op) for cdev in cdevs)

    # -- messages and accounting -------------------------------------------------

    def printf(self, module: str, text: str) -> None:
        self.msgbuf.write(module, text)

    def log_fault(self, record: LoadedModule | None, what: str, exc: BaseException) -> None:
        name = record.name if record is not None else "kernel"
        self.msgbuf.write(name, f"fault in {what}: {exc!r}\n{format_fault(exc)}")

    def dmesg(self) -> list[str]:
        return self.msgbuf.formatted()

    def malloc_stats(self) -> list[MallocStat]:
        """vmstat -m: usage of every loaded module's malloc types."""
        with self._lock:
            records = list(self._modules.values())
        return [t.stat() for r in records for t in r.malloc_types]
