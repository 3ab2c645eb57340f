"""`pykld record` and `pykld replay` over FUSE (and CUSE, in the VM: tests/cuse/test_testing_cuse.py),
with real programs as the clients:
the replay gives the same program the same bytes; a program that diverges gets EIO and
makes the replay exit 1 saying why; a malformed trace is refused naming its line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pykld import Kernel
from pykld.transport.fuse import FuseTransport

from .conftest import EXAMPLES, PYKLD, require_fuse, wait_for


class Served:
    """A `pykld record` or `pykld replay` serving in the foreground on a FUSE devfs of its own."""

    def __init__(self, *args: str, transport: str = "fuse") -> None:
        self.transport = transport
        self.dev_dir = tempfile.mkdtemp(prefix="pykld-trace-dev-")
        self.proc = subprocess.Popen([*PYKLD, *args, "--transport", transport, "--dev-dir", self.dev_dir, "--no-bind"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        for line in self.proc.stdout:
            self.lines.append(line)
            if "serving" in line:
                break
        else:
            raise AssertionError("it never served:\n" + "".join(self.lines))

    def path(self, name: str) -> str:
        return f"/dev/{name}" if self.transport == "cuse" else os.path.join(self.dev_dir, name)

    def stop(self) -> tuple[int, str]:
        """SIGTERM, as an operator would; its exit status and what it said after serving."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rest, _ = self.proc.communicate(timeout=30)
        os.rmdir(self.dev_dir)
        return self.proc.returncode, rest


@pytest.fixture
def served() -> Iterator[list[Served]]:
    require_fuse()
    running: list[Served] = []
    yield running
    for one in running:
        if one.proc.poll() is None:
            one.stop()


def run(*command: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command, capture_output=True, timeout=30, check=False)


def test_a_replay_gives_dd_the_bytes_urandom_gave(served: list[Served], tmp_path: Path,
                                                   transport: str = "fuse") -> None:
    trace = str(tmp_path / "rnd.trace")
    recording = Served("record", "/dev/urandom", "--as", "rnd", "-o", trace, transport=transport)
    served.append(recording)
    recorded = run("dd", f"if={recording.path('rnd')}", "bs=16", "count=4", "status=none")
    assert recorded.returncode == 0 and len(recorded.stdout) == 64
    status, said = recording.stop()
    assert status == 0 and f"trace written to {trace}" in said
    assert Path(trace).read_text().startswith("pykld-trace 1\nsource /dev/urandom\ndevice rnd\n1 open O_RDONLY -> 0\n")

    replaying = Served("replay", trace, transport=transport)
    served.append(replaying)
    replayed = run("dd", f"if={replaying.path('rnd')}", "bs=16", "count=4", "status=none")
    assert replayed.stdout == recorded.stdout
    assert replaying.stop() == (0, "pykld: replay followed the trace\n")


def test_a_program_that_diverges_gets_eio_and_the_replay_exits_1(served: list[Served], tmp_path: Path) -> None:
    trace = tmp_path / "t.trace"
    trace.write_text("pykld-trace 1\ndevice sensor\n1 open O_RDONLY -> 0\n1 read 16 -> 6 32333530300a\n"
                     "1 read 16 -> 0\n1 close -> 0\n")
    replaying = Served("replay", str(trace), "--as", "thermo0")
    served.append(replaying)
    ok = run("dd", f"if={replaying.path('thermo0')}", "bs=16", "status=none")
    assert (ok.returncode, ok.stdout) == (0, b"23500\n")
    wrong = run("sh", "-c", f"echo 1 > {replaying.path('thermo0')}")  # a second open, for writing
    assert wrong.returncode != 0 and b"Input/output error" in wrong.stderr
    status, said = replaying.stop()
    assert status == 1
    assert said.splitlines() == [
        "pykld: replay divergence on a new open: the caller asked for `open O_WRONLY`; the trace has nothing "
        "more for it",
        "pykld: replay diverged from the trace 1 time(s)",
    ]


def test_another_pykld_device_is_recorded_and_replayed_for_cat(fuse: tuple[Kernel, FuseTransport],
                                                               served: list[Served], tmp_path: Path) -> None:
    kernel, transport = fuse
    kernel.kldload(str(EXAMPLES / "hello.py"))
    trace = str(tmp_path / "hello.trace")
    recording = Served("record", transport.device_path("rustmodule"), "--as", "hello0", "-o", trace)
    served.append(recording)
    first = run("cat", recording.path("hello0"))
    assert first.stdout == b"Default hello message\n"
    assert recording.stop()[0] == 0
    replaying = Served("replay", trace)
    served.append(replaying)
    assert run("cat", replaying.path("hello0")).stdout == first.stdout
    assert replaying.stop()[0] == 0


def test_a_malformed_trace_is_refused_naming_its_line(tmp_path: Path) -> None:
    trace = tmp_path / "bad.trace"
    trace.write_text("pykld-trace 1\ndevice x\n1 open O_RDONLY -> 0\n1 read 4 -> 4 0102\n")
    done = subprocess.run([*PYKLD, "replay", str(trace)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert done.stderr == (f"pykld: can't replay: {trace}:4: read: 4 bytes answered, 2 given, 4 asked for: "
                           "'1 read 4 -> 4 0102'\n")


def test_a_caller_blocked_in_the_source_is_interrupted_and_recorded(served: list[Served], tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    trace = tmp_path / "fifo.trace"
    recording = Served("record", str(fifo), "--as", "pipe0", "-o", str(trace))
    served.append(recording)
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import errno, os, signal
        class Stop(Exception): pass
        def stop(signum, frame): raise Stop
        signal.signal(signal.SIGUSR1, stop)
        fd = os.open({recording.path("pipe0")!r}, os.O_RDONLY)
        print(fd, flush=True)
        input()  # the writer is there
        try:
            os.read(fd, 10)
        except Stop:
            print("interrupted", flush=True)
        print(os.read(fd, 10), flush=True)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    writer = -1
    try:
        assert reader.stdin is not None and reader.stdout is not None
        fd = int(reader.stdout.readline())
        writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # the proxy holds the fifo's read end
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert wait_for(lambda: _blocked(reader.pid, fd))
        reader.send_signal(signal.SIGUSR1)
        assert reader.stdout.readline() == "interrupted\n"
        os.write(writer, b"data")
        out, _ = reader.communicate(timeout=20)
        assert out == "b'data'\n"
    finally:
        if writer >= 0:
            os.close(writer)
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert recording.stop()[0] == 0
    assert "1 read 10 -> EINTR\n1 read 10 -> 4 64617461\n" in trace.read_text()


def _blocked(pid: int, fd: int) -> bool:
    """The process waits in read(2) of `fd` (syscall 0 on x86-64; /proc/PID/syscall says so)."""
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[:2] == ["0", hex(fd)]
    except (OSError, IndexError):
        return False
