"""The pykld daemon: the process that is the kernel.

One Kernel, one transport publishing its devices, and a control socket that
the `pykld` commands talk to (pykld.control).  Started by `pykld load` when
none runs, by systemd (contrib/pykld.service), or by `pykld daemon`.

Who may do what: only root and the daemon's own user, for every operation.
Loading a module runs its code as the daemon's user, so load, unload and
shutdown must be theirs.  stat and dmesg are refused to others as well: dmesg
carries what drivers print, which includes data that users write to devices
(hello prints every message) and tracebacks; and a socket others can connect
to would expose the request parser and the connection slots to every local
user.  The socket's mode 0600 keeps others out; the SO_PEERCRED check is the
second lock, for when the socket's mode is loosened or its descriptor passed on.
"""

from __future__ import annotations

import errno
import fcntl
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import threading
import traceback
from typing import Any, TextIO

from pykld.kernel.kernel import Kernel
from pykld.kld import control, rundir
from pykld.kld.service import Service
from pykld.transport import registry

MAX_CONNECTIONS = 16  # connection threads; one more client is told EAGAIN
POLL = 0.5  # seconds: how often a waiting connection thread looks at `stopping`
IDLE_TIMEOUT = 30.0  # seconds a client may sit on a half-sent or absent request
SEND_TIMEOUT = 10.0  # seconds a client may leave a reply unread
SHUTDOWN_TIMEOUT = 60.0
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


FAIL_OPS = ("fail", "fail_list", "fail_clear")


def authorized(peer_uid: int, op: str) -> bool:
    """Every operation is for root and the daemon's own user; see the module docstring."""
    return peer_uid in (0, os.geteuid())


class AlreadyRunning(OSError):
    pass


class PidLock:
    """The pidfile, flock'ed for the daemon's lifetime.  A killed daemon's lock dies with
    it, so a lock we get means no daemon is alive here, whatever files are left."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise AlreadyRunning(errno.EEXIST, f"a pykld daemon is already running (pid {holder})", None) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        # The file stays: unlinking a lock file lets two daemons lock two different files.
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = -1


def listen(path: str) -> socket.socket:
    """The control socket, mode 0600 from its first moment.  A socket file left by a
    killed daemon is removed; one that still answers is another daemon's."""
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket", None)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # stale: nobody listens
        else:
            raise OSError(errno.EADDRINUSE, f"another daemon answers at {path}", None)
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # no window in which others could connect
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(MAX_CONNECTIONS)
    sock.setblocking(False)
    return sock


def peer_uid(conn: socket.socket) -> int:
    _, uid, _ = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return int(uid)


def choose_transport(kernel: Kernel, wanted: str | None, dev_dir: str,
                     bind: bool) -> tuple[registry.Publisher, str]:
    """As `pykld run` chooses: the one asked for, else the best available."""
    choice = registry.pick(wanted)
    return registry.make_transport(kernel, choice.name, dev_dir, bind), choice.how


class Daemon:
    def __init__(self, transport: str | None = None, dev_dir: str | None = None, bind: bool = True,
                 out: TextIO | None = None) -> None:
        self.run_dir = rundir.run_dir()
        self.wanted_transport = transport
        self.dev_dir = dev_dir or rundir.dev_dir(self.run_dir)
        self.bind = bind
        self.out = out or sys.stdout
        self.kernel = Kernel()
        self.stopping = threading.Event()
        self.stopped = threading.Event()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        self._teardown_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.listener: socket.socket | None = None
        self.socket_path = rundir.socket_path(self.run_dir)
        self.lock: PidLock | None = None
        self.service: Service | None = None
        self.teardown_failure: str | None = None  # what the shutdown could not undo

    def say(self, text: str) -> None:
        print(f"pykld daemon: {text}", file=self.out, flush=True)

    # -- lifecycle -----------------------------------------------------------------------

    def run(self) -> int:
        """Serve until shutdown or SIGTERM/SIGINT.  Returns the exit status."""
        try:
            rundir.ensure(self.run_dir)
            self.lock = PidLock(rundir.lock_path(self.run_dir))
        except AlreadyRunning as exc:
            self.say(exc.strerror or str(exc))
            return control.EXIT_ALREADY_RUNNING
        try:
            publisher, how = choose_transport(self.kernel, self.wanted_transport, self.dev_dir, self.bind)
            publisher.start()  # clears a killed daemon's stale mounts and /dev entries
            self.service = Service(self.kernel, publisher, self.stopping)
            self.listener = listen(self.socket_path)
            self._catch_signals()
            self.say(f"pid {os.getpid()}, transport {publisher.name} ({how}), socket {self.socket_path}")
            if publisher.name == "sim":
                self.say("the sim transport publishes no device files: devices are reachable only in this process")
            self.kernel.printf("kernel", f"pykld daemon {os.getpid()} serving over {publisher.name}")
            self._accept_loop()
        finally:
            self._teardown()
        return 0 if self.teardown_failure is None else 1

    def _catch_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (tests run daemons in threads)

        def stop(signum: int, frame: object) -> None:
            self.request_stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop)

    def request_stop(self) -> None:
        self.stopping.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # the pipe is full: the loop wakes anyway

    def _teardown(self) -> None:
        """SHUTDOWN to every module, unmount, remove the socket, release the lock.  Once."""
        with self._teardown_lock:
            if self.stopped.is_set():
                return
            self.stopping.set()
            if self.listener is not None:
                self.listener.close()
                _unlink_if_socket(self.socket_path)
            if self.service is not None:
                registry_free = self.service.registry.acquire(timeout=10)  # a running load finishes first
                try:
                    self.kernel.shutdown()
                except Exception:
                    self.say("shutdown of the modules failed:\n" + traceback.format_exc())
                finally:
                    if registry_free:
                        self.service.registry.release()
                try:
                    self.service.publisher.stop()
                except OSError as exc:  # what could not be undone, in its own words
                    self.teardown_failure = exc.strerror or str(exc)
                    self.say(f"stopping the transport failed: {self.teardown_failure}")
                except Exception:
                    self.teardown_failure = "internal error (see the daemon's log)"
                    self.say("stopping the transport failed:\n" + traceback.format_exc())
            if self.lock is not None:
                self.lock.release()
            self.stopped.set()
            self.say("stopped")
        with self._threads_lock:
            running = list(self.threads)
        for thread in running:
            if thread is not threading.current_thread():
                thread.join(POLL * 4)

    # -- connections ---------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self.listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in selector.select(timeout=5.0):
                    if key.fileobj is self.listener:
                        self._accept()
                    else:
                        _drain(self._wake_r)

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return  # the client went away before we got to it
        conn.settimeout(SEND_TIMEOUT)
        if not self.slots.acquire(blocking=False):
            _send_quietly(conn, control.error(errno.EAGAIN, f"too many connections (at most {MAX_CONNECTIONS})"))
            _hang_up(conn)
            return
        thread = threading.Thread(target=self._serve, args=(conn,), name="pykld-control", daemon=True)
        with self._threads_lock:
            self.threads.add(thread)
        thread.start()

    def _serve(self, conn: socket.socket) -> None:
        """One client: requests in order until it closes, goes idle, or the daemon stops."""
        try:
            uid = peer_uid(conn)
            decoder = control.Decoder()
            while not self.stopping.is_set():
                try:
                    message = decoder.next_message()
                    if message is None:
                        data = self._receive(conn)
                        if data is None:
                            return
                        if not data:
                            decoder.eof()
                            return
                        decoder.feed(data)
                        continue
                except control.ProtocolError as exc:
                    _send_quietly(conn, control.error(exc.errno, exc.message))
                    if exc.fatal:
                        return
                    continue
                if not self._dispatch(conn, uid, message):
                    return
        except Exception:
            # Nothing a client does may end the daemon; what gets here is our own bug.
            self.say("control connection failed:\n" + traceback.format_exc())
            _send_quietly(conn, control.error(errno.EIO, "internal error in the daemon"))
        finally:
            _hang_up(conn)
            self.slots.release()
            with self._threads_lock:
                self.threads.discard(threading.current_thread())

    def _receive(self, conn: socket.socket) -> bytes | None:
        """The next bytes of a request; b"" at the client's EOF; None when it idled too long
        or the daemon is stopping."""
        waited = 0.0
        conn.settimeout(POLL)
        try:
            while not self.stopping.is_set() and waited < IDLE_TIMEOUT:
                try:
                    return conn.recv(65536)
                except TimeoutError:
                    waited += POLL
                except ConnectionResetError:
                    return b""
            return None
        finally:
            conn.settimeout(SEND_TIMEOUT)

    def _dispatch(self, conn: socket.socket, uid: int, message: dict[str, Any]) -> bool:
        """Answer one request; False when the connection is finished."""
        try:
            req = control.parse_request(message)
        except control.ProtocolError as exc:
            return _send_quietly(conn, control.error(exc.errno, exc.message))
        if not authorized(uid, req.op):
            return _send_quietly(conn, control.error(
                errno.EPERM, f"{req.op} is for root and uid {os.geteuid()} (the daemon's user); you are uid {uid}"))
        if req.op == "dmesg":
            self._dmesg(conn, req.args["follow"])
            return False
        if req.op == "shutdown":
            self.request_stop()
            self.stopped.wait(SHUTDOWN_TIMEOUT)  # the reply means: all unloaded and unmounted
            if self.teardown_failure is not None:
                _send_quietly(conn, control.error(errno.EBUSY, f"stopped, but {self.teardown_failure}"))
            else:
                _send_quietly(conn, control.ok())
            return False
        return _send_quietly(conn, self._answer(req))

    def _answer(self, req: control.Request) -> dict[str, Any]:
        assert self.service is not None
        try:
            if req.op == "load":
                return control.ok(**self.service.load(req.args["target"], req.args["transport"]))
            if req.op == "unload":
                return control.ok(**self.service.unload(req.args["target"], req.args["force"]))
            if req.op in FAIL_OPS:
                return control.ok(**getattr(self.service, req.op)(**req.args))
            if req.op == "sysctl":
                return control.ok(**self.service.sysctl(req.args["name"], req.args["value"]))
            return control.ok(**self.service.stat(req.args["verbose"]))
        except OSError as exc:
            return control.error_from(exc)
        except BaseException as exc:  # a driver raising SystemExit or KeyboardInterrupt included
            self.kernel.printf("kernel", f"{req.op} failed: {exc!r}\n{traceback.format_exc()}")
            return control.error(errno.EIO, f"{req.op} failed in the daemon: {exc!r}")

    def _dmesg(self, conn: socket.socket, follow: bool) -> None:
        """The message buffer as a stream of replies; when following, new lines as they come
        until the client goes away or the daemon stops."""
        assert self.service is not None
        seq, chunks = self.service.dmesg()
        for lines in chunks:
            if not _send_quietly(conn, control.ok(lines=lines, end=False)):
                return
        if not follow:
            _send_quietly(conn, control.ok(lines=[], end=True))
            return
        while not self.stopping.is_set() and not _peer_closed(conn):
            seq, chunks = self.service.dmesg_after(seq, POLL)
            for lines in chunks:
                if lines and not _send_quietly(conn, control.ok(lines=lines, end=False)):
                    return
        _send_quietly(conn, control.ok(lines=[], end=True))


def _send_quietly(conn: socket.socket, message: dict[str, Any]) -> bool:
    """Send a reply; False when the client is gone or will not read (never an exception)."""
    try:
        data = control.encode(message)
    except control.ProtocolError as exc:
        data = control.encode(control.error(exc.errno, f"reply too large: {exc.message}"))
    try:
        conn.sendall(data)
        return True
    except OSError:
        return False


def _hang_up(conn: socket.socket) -> None:
    """Close, discarding what the client sent and we did not read (without waiting for
    more): Linux answers the close of a Unix socket with unread input by a reset, which
    the client would see instead of a clean end after our last reply."""
    try:
        conn.setblocking(False)
        for _ in range(64):
            if not conn.recv(65536):
                break
    except OSError:
        pass
    conn.close()


def _peer_closed(conn: socket.socket) -> bool:
    """Whether a follower's client is done.  It sends nothing after its request, so
    anything readable means it closed (EOF) or broke the protocol: either ends it."""
    conn.setblocking(False)
    try:
        conn.recv(1, socket.MSG_PEEK)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        conn.settimeout(SEND_TIMEOUT)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _unlink_if_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass


def main(transport: str | None, dev_dir: str | None, bind: bool) -> int:
    try:
        return Daemon(transport, dev_dir, bind).run()
    except OSError as exc:
        print(f"pykld daemon: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 1
