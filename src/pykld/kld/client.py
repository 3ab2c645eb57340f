"""The client side of the control socket, and starting a daemon when none runs."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from pykld.kld import control, rundir

CALL_TIMEOUT = 120.0  # seconds: a driver's LOAD may take its time, but not forever
START_TIMEOUT = 20.0  # seconds for a new daemon to answer on its socket


class NotRunning(OSError):
    """No daemon answers at the socket (none there, or a killed one's leftover)."""


class Connection:
    def __init__(self, path: str, timeout: float | None = CALL_TIMEOUT) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self.sock.close()
            raise NotRunning(exc.errno, "no pykld daemon is running", path) from None
        except PermissionError:
            self.sock.close()
            raise OSError(errno.EACCES, "the control socket is for root and the daemon's user only", path) from None
        except OSError:
            self.sock.close()
            raise
        self.decoder = control.Decoder()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(control.encode(message))

    def receive(self) -> dict[str, Any] | None:
        """The next reply, or None when the daemon closed the connection."""
        while True:
            try:
                message = self.decoder.next_message()
            except control.ProtocolError as exc:
                raise OSError(errno.EPROTO, f"bad reply from the daemon: {exc.message}", None) from None
            if message is not None:
                return message
            data = self.sock.recv(65536)
            if not data:
                return None
            self.decoder.feed(data)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """One request, one reply: its fields, or its error as an OSError."""
        self.send(control.request(op, **args))
        reply = self.receive()
        if reply is None:
            raise OSError(errno.ECONNRESET, "the daemon closed the connection without replying", None)
        return control.check_reply(reply)

    def stream(self, op: str, **args: Any) -> Iterator[dict[str, Any]]:
        """One request, replies until one says end (or the daemon hangs up)."""
        self.send(control.request(op, **args))
        while (reply := self.receive()) is not None:
            fields = control.check_reply(reply)
            yield fields
            if fields.get("end"):
                return


def connect(timeout: float | None = CALL_TIMEOUT) -> Connection:
    return Connection(rundir.socket_path(rundir.run_dir()), timeout)


def call(op: str, **args: Any) -> dict[str, Any]:
    with connect() as conn:
        return conn.call(op, **args)


def start_daemon(transport: str | None, dev_dir: str | None, bind: bool) -> dict[str, Any]:
    """Start a detached daemon and wait until it answers; returns its stat.

    The daemon's output goes to daemon.log in the runtime directory.  It runs in a
    session of its own (no terminal, no SIGHUP, not in the caller's process group)
    with / as its directory, so it holds no mount busy."""
    directory = rundir.ensure(rundir.run_dir())
    log = rundir.log_path(directory)
    command = [sys.executable, "-m", "pykld", "daemon", "--foreground"]
    if transport:
        command += ["--transport", transport]
    if dev_dir:
        command += ["--dev-dir", os.path.abspath(dev_dir)]
    if not bind:
        command.append("--no-bind")
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        daemon = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                  start_new_session=True, cwd="/", env=_absolute_paths(os.environ))
    finally:
        os.close(log_fd)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with connect(timeout=START_TIMEOUT) as conn:
                return conn.call("stat")
        except NotRunning:
            pass
        status = daemon.poll()
        # EXIT_ALREADY_RUNNING: a daemon started at the same moment won; wait for it instead.
        if status is not None and status != control.EXIT_ALREADY_RUNNING:
            raise OSError(errno.EIO, f"the daemon exited with status {status}; {log} ends:\n{_tail(log)}", None)
        if time.monotonic() > deadline:
            raise OSError(errno.ETIMEDOUT, f"the daemon did not answer within {START_TIMEOUT:.0f}s; see {log}", None)
        time.sleep(0.05)


def _absolute_paths(env: os._Environ[str]) -> dict[str, str]:
    """The daemon runs in /, so relative search paths are made absolute first."""
    fixed = dict(env)
    for name in ("PYTHONPATH", "PYKLD_MODULE_PATH", "PYKLD_RUN_DIR"):
        if fixed.get(name):
            fixed[name] = os.pathsep.join(os.path.abspath(p) for p in fixed[name].split(os.pathsep) if p)
    return fixed


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as log:
            return "".join(log.readlines()[-lines:])
    except OSError:
        return "(no log)"
