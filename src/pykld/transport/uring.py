"""FUSE over io_uring: one ring and one pinned thread per possible CPU, beside /dev/fuse.

When the kernel offers it (Linux >= 6.14 with ``fuse.enable_uring=Y``) and the
INIT reply accepts it, the kernel queues every request on the ring of its
caller's CPU instead of /dev/fuse: a command per entry waits in the kernel,
completes with a request in the entry's buffers, and goes back with the reply
in the same buffers, fetching the next (pykld._loop's Ring, src/pykld/_ext/uring.c).  /dev/fuse
still carries INIT, FORGET, INTERRUPT and notifications: its reader stays, and
INTERRUPT finds ring requests in the same in-flight table as classic ones.

Each queue is served like the classic channel (Session's leader/follower), in C
(Ring.serve): its thread waits for a completion with the GIL released, serves it
through the compiled loop's dispatcher (Python only for the driver's operation),
copies the reply into the entry's buffers and commits; when a
request is about to sleep in its driver, another thread takes over the queue,
so one sleeper never stalls its CPU's other callers.  A thread that submitted a
command must outlive it (the kernel runs the command's work in the submitter's
task, and cancels a departed task's commands), so queue threads stay, parked,
until the connection ends.

Selection, PYKLD_FUSE_URING: ``auto`` (the default) uses the ring when the
parameter is Y; ``off`` never; ``enable`` sets the parameter to Y first (root),
says so in dmesg and leaves it so, since it is global: pykld says what it found
and never restores it behind the user's back.  Every fallback says why.
"""

from __future__ import annotations

import errno
import importlib
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from pykld.transport import loop
from pykld.transport.session import Handler, Session

PARAMETER = "/sys/module/fuse/parameters/enable_uring"
POSSIBLE_CPUS = "/sys/devices/system/cpu/possible"
FUSECTL = "/sys/fs/fuse/connections"  # one directory per connection, named by the mount's device minor
FUSE_OVER_IO_URING = 1 << 41  # INIT flags2 bit 9 (FUSE 7.42)
# Entries per queue: the requests one CPU's callers may have in the driver at once.  Each
# has a 1 MiB payload buffer, mapped without reserve: only the pages used cost memory,
# and the kernel hands out the entry freed last, so a few hot entries serve a stream.
DEPTH = 64
MODES = ("auto", "off", "enable")

_serving = threading.local()  # .session: the queue session a ring thread belongs to


def possible_cpus(path: str = POSSIBLE_CPUS) -> int:
    """How many queues the kernel expects: one per possible CPU (num_possible_cpus)."""
    count = 0
    with open(path) as f:
        for part in f.read().strip().split(","):
            first, _, last = part.partition("-")
            count += int(last or first) - int(first) + 1
    return count


def connection_of(mount_point: str) -> int | None:
    """The fusectl number of the FUSE mount at `mount_point` (its device minor), from
    mountinfo: a stat would ask the not yet served filesystem itself."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4] == mount_point:
                    return int(fields[2].partition(":")[2])
    except (OSError, ValueError):
        pass
    return None


def parameter() -> str | None:
    """'Y' or 'N', or None when this kernel's fuse has no io_uring."""
    try:
        with open(PARAMETER) as f:
            return f.read().strip()
    except OSError:
        return None


def mode() -> str:
    value = os.environ.get("PYKLD_FUSE_URING", "auto")
    if value not in MODES:
        raise ValueError(f"PYKLD_FUSE_URING={value!r}: use auto, off or enable")
    return value


def extension() -> Any:
    """pykld._loop, which has the Ring, or None when it was not built."""
    try:
        compiled = importlib.import_module("pykld._loop")
    except ImportError:
        return None
    return compiled if hasattr(compiled, "Ring") else None


def plan(log: Callable[[str], None]) -> bool:
    """Before mounting (the kernel reads the parameter at INIT): whether to offer the
    ring at INIT, after doing what PYKLD_FUSE_URING=enable asks.  Logs every no."""
    wanted = mode()
    if wanted == "off":
        return False
    try:
        compiled, _ = loop.choose()
    except OSError as exc:  # a bad PYKLD_LOOP, or compiled without the extension
        log(f"fuse: io_uring: no compiled loop ({exc}); serving /dev/fuse")
        return False
    if compiled is None:
        log("fuse: io_uring: only with the compiled request loop (the python loop serves); serving /dev/fuse")
        return False
    if extension() is None:
        log("fuse: io_uring: the extension pykld._loop has no Ring; serving /dev/fuse")
        return False
    found = parameter()
    if found is None:
        log("fuse: io_uring: this kernel has none (no fuse.enable_uring); serving /dev/fuse")
        return False
    if found != "Y" and wanted == "enable":
        try:
            with open(PARAMETER, "w") as f:
                f.write("Y")
        except OSError as exc:
            log(f"fuse: io_uring: PYKLD_FUSE_URING=enable could not set fuse.enable_uring to Y"
                f" ({exc.strerror}; it needs root); serving /dev/fuse")
            return False
        log(f"fuse: io_uring: PYKLD_FUSE_URING=enable set fuse.enable_uring to Y (it was {found}); it is"
            f" global and stays Y after pykld: `echo {found} > {PARAMETER}` undoes it")
        return True
    if found != "Y":
        log(f"fuse: io_uring: fuse.enable_uring is {found}; serving /dev/fuse"
            " (PYKLD_FUSE_URING=enable sets it, as root)")
        return False
    return True


def ensure_reader_here(classic: Session) -> Callable[[], None]:
    """FileOps' before-block hook for both paths: the queue session of a ring thread, else
    the classic session, hands its reader role on before the request sleeps."""
    def ensure() -> None:
        getattr(_serving, "session", classic).ensure_reader()
    return ensure


class QueueSession(Session):
    """One ring queue, served by threads pinned to its CPU."""

    def __init__(self, rings: RingServer, qid: int, handlers: Mapping[int, Handler], minor: int,
                 log: Callable[[str], None], entries: Mapping[int, Any]) -> None:
        # The dispatcher (pykld._loop) serves `entries` in C, the rest through answer().
        super().__init__(rings.fd, handlers, 0, name=f"fuse-ring{qid}", log=log, entries=entries)
        self.max_idle = self.max_workers  # threads keep their commands: they never leave early
        self.minor = minor
        self.rings = rings
        self.qid = qid
        self._registering = True

    def ensure_reader(self) -> None:
        """As Session's, and: the request may sleep only while its queue keeps an entry
        for the others, since the kernel holds a CPU's requests until an entry is free
        (a sleeper waiting for a writer stuck behind it would never wake): EAGAIN else."""
        if self.rings.ring.held(self.qid) >= self.rings.ring.depth:
            raise OSError(errno.EAGAIN, f"{self.rings.ring.depth} requests of this CPU's ring are blocked already",
                          None)
        super().ensure_reader()

    def _work_compiled(self) -> None:  # Session starts this one when a dispatcher exists
        self._work()

    def _work(self) -> None:
        _serving.session = self
        ring, qid = self.rings.ring, self.qid
        try:
            try:
                os.sched_setaffinity(0, {qid})
            except OSError:
                pass  # a possible CPU that is offline: its queue serves from anywhere
            if self._registering:
                self._registering = False
                if not self.rings.register(qid):
                    self._stopping = True
                    return
            # plan() offers the ring only where the compiled loop serves: a dispatcher exists.
            assert self._dispatcher is not None
            ring.serve(qid, self._dispatcher, self)  # the C loop: wait, dispatch, commit-and-fetch
        finally:
            with self._lock:
                self._workers -= 1
                last = self._workers == 0
            if last and self._stopping:
                self.finished.set()


class RingServer:
    """The rings of one FUSE connection and their queue sessions."""

    def __init__(self, fd: int, payload_size: int, log: Callable[[str], None]) -> None:
        uring = extension()
        self.fd = fd
        self.log = log
        self.ring = uring.Ring(fd, possible_cpus(), DEPTH, payload_size)
        self.view = memoryview(self.ring)  # keeps the arena mapped while this server lives (WRITE data)
        self.queues: list[QueueSession] = []
        self.failed = threading.Event()
        self.connection: int | None = None  # the fusectl number, set once mounted
        self._lock = threading.Lock()
        self._registered = 0

    def start(self, handlers: Mapping[int, Handler], minor: int, entries: Mapping[int, Any]) -> None:
        """After the INIT reply: one session per queue, each registering from its own thread."""
        self.queues = [QueueSession(self, qid, handlers, minor, self.log, entries) for qid in range(self.ring.queues)]
        for queue in self.queues:
            queue.start()

    def register(self, qid: int) -> bool:
        try:
            self.ring.register(qid)
        except OSError as exc:
            with self._lock:
                first = not self.failed.is_set()
                self.failed.set()
            if first:
                code = errno.errorcode.get(exc.errno or 0, exc.errno)
                self.log(f"fuse: io_uring: the kernel refused the ring ({code}: {exc.strerror}); serving /dev/fuse")
                for queue in self.queues:
                    if queue.qid != qid:
                        queue.stop()
                        self.ring.wake(queue.qid)
            return False
        with self._lock:
            self._registered += 1
            ready = self._registered == len(self.queues)
        if ready:
            self.log(f"fuse: io_uring: serving over {len(self.queues)} rings ({DEPTH} entries each,"
                     " one thread pinned to each CPU)")
        return True

    @property
    def requests(self) -> int:
        """Requests that came over the rings so far."""
        return sum(self.ring.served(qid) for qid in range(self.ring.queues))

    def stop(self, grace: float = 0.5) -> None:
        """After the unmount: let every queue thread go, then close the rings.

        The kernel ends the ring's commands when the connection ends; a connection that
        outlives the unmount (a caller holds a file open) ends only when /dev/fuse is
        released, which the commands prevent: so a waiter not released within `grace` is
        woken, and closing the rings cancels the rest.  A thread still in a driver finds
        its commit refused when it returns, and leaves."""
        for queue in self.queues:
            queue.stop()
        if not all(queue.finished.wait(grace) for queue in self.queues):
            # Closing the rings would leave the kernel queueing the holders' requests on
            # rings nobody serves: end the connection instead, as a dead daemon's.
            if not self._abort_connection():
                self.log("fuse: io_uring: the connection outlives the unmount and fusectl is not mounted"
                         " to end it: callers still holding a device open will wait until killed")
            for queue in self.queues:
                if not queue.finished.wait(grace):
                    self.ring.wake(queue.qid)
        for queue in self.queues:
            queue.finished.wait(grace)
        self.ring.close()

    def _abort_connection(self) -> bool:
        if self.connection is None:
            return False
        try:
            with open(f"{FUSECTL}/{self.connection}/abort", "w") as f:
                f.write("1")
        except OSError:
            return False
        return True
