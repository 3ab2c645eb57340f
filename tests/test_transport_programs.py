"""The programs pykld starts and the transport picker, in process: what a user
reads when a program is missing, fails, or is killed, and which transport is
picked and why (tests/transport/test_fresh_machine.py runs the same with a bare PATH)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pykld.kernel.kernel import Kernel
from pykld.transport import programs, registry
from pykld.transport.fuse import DEFAULT_DEV_DIR


def test_a_program_killed_by_a_signal_is_a_failure() -> None:
    # A negative exit status (killed by a signal) is not success.
    with pytest.raises(OSError) as caught:
        programs.run(["sh", "-c", "kill -KILL $$"])
    assert caught.value.errno == errno.EIO
    assert "exit status -9" in str(caught.value.strerror)


def test_a_failure_quotes_standard_output_when_stderr_is_empty() -> None:
    with pytest.raises(OSError) as caught:
        programs.run(["sh", "-c", "echo first; echo what went wrong; exit 3"])
    assert str(caught.value.strerror).endswith("(exit status 3): what went wrong")


def test_a_missing_program_is_enoent_naming_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OSError) as caught:
        programs.run(["fusermount3", "-u", "/nowhere"])
    assert caught.value.errno == errno.ENOENT
    assert caught.value.strerror == "fusermount3 is not installed (not on PATH); Debian package fuse3"


def test_a_program_that_cannot_start_keeps_its_errno(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Found on PATH, but its interpreter line names nothing: exec fails with ENOENT.
    script = tmp_path / "broken"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OSError) as caught:
        programs.run(["broken"])
    assert caught.value.errno == errno.ENOENT
    assert str(caught.value.strerror).startswith("broken: ")


def _survey(monkeypatch: pytest.MonkeyPatch, cuse: str | None, fuse: str | None) -> None:
    monkeypatch.setattr(registry, "cuse_unavailable", lambda: cuse)
    monkeypatch.setattr(registry, "fuse_unavailable", lambda: fuse)


def test_the_pick_names_what_it_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    _survey(monkeypatch, "no /dev/cuse", "no /dev/fuse")
    assert registry.pick(None) == ("sim", "picked: best available; cuse: no /dev/cuse; fuse: no /dev/fuse")
    _survey(monkeypatch, "no /dev/cuse", None)
    assert registry.pick(None) == ("fuse", "picked: best available; cuse: no /dev/cuse")


def test_a_transport_asked_for_that_cannot_run_is_enodev_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    _survey(monkeypatch, "needs root", None)
    with pytest.raises(OSError) as caught:
        registry.pick("cuse")
    assert caught.value.errno == errno.ENODEV
    assert caught.value.strerror == "transport cuse is not available here: needs root"
    assert registry.pick("fuse") == ("fuse", "asked for")
    with pytest.raises(OSError) as unknown:
        registry.pick("usb")
    assert unknown.value.errno == errno.EINVAL


def test_root_mounts_fuse_without_fusermount3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A usable /dev/fuse, whatever this machine has; an empty PATH.
    exists, access = os.path.exists, os.access
    monkeypatch.setattr(os.path, "exists", lambda path: path == "/dev/fuse" or exists(path))
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: path == "/dev/fuse" or access(path, mode, **kw))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert registry.fuse_unavailable() is None
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    assert registry.fuse_unavailable() == "fusermount3 is not installed (not on PATH); Debian package fuse3"


def test_make_transport_serves_the_dev_dir_asked_for(tmp_path: Path) -> None:
    kernel = Kernel()
    asked = registry.make_transport(kernel, "fuse", str(tmp_path / "dev"), bind=False)
    assert asked.device_path("hello") == str(tmp_path / "dev" / "hello")
    default = registry.make_transport(kernel, "fuse", None, bind=False)
    assert default.device_path("hello") == f"{DEFAULT_DEV_DIR}/hello"
    assert registry.make_transport(kernel, "sim", None, bind=False).name == "sim"
