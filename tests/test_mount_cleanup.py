"""Binding at /dev and cleaning up after a killed pykld, in process (mount(2), the mount
table and statfs stood in for): a bind never passes a symbolic link or covers a file,
and a failed one leaves nothing; only dead pykld mounts are removed, with a dead bind's
empty placeholder (tests/transport/ does the same with real mounts, as root)."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from pykld import Kernel
from pykld.fuse import abi
from pykld.transport import mount
from pykld.transport.fuse import FuseTransport
from pykld.transport.session import Session


def _statvfs_failing(code: int | None) -> Callable[[str], os.statvfs_result]:
    real = os.statvfs

    def statvfs(path: str) -> os.statvfs_result:
        if code is None:
            return real("/")
        raise OSError(code, os.strerror(code))
    return statvfs


@pytest.mark.parametrize("code, dead", [(errno.ENOTCONN, True), (errno.ECONNABORTED, True),
                                        (errno.ENOENT, False), (None, False)])
def test_a_mount_is_dead_when_its_server_is_gone(monkeypatch: pytest.MonkeyPatch, code: int | None,
                                                 dead: bool) -> None:
    monkeypatch.setattr(os, "statvfs", _statvfs_failing(code))
    assert mount.is_dead("/run/pykld/dev") is dead


def test_clear_stale_removes_dead_pykld_mounts_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dev_root, devfs = tmp_path / "dev", str(tmp_path / "devfs")
    dev_root.mkdir()
    (dev_root / "dead").touch()  # a dead bind's placeholder
    (dev_root / "live").touch()
    table = [mount.MountEntry(devfs, mount.FSTYPE, "pykld"),
             mount.MountEntry(str(dev_root / "dead"), mount.FSTYPE, "pykld"),
             mount.MountEntry(str(dev_root / "live"), mount.FSTYPE, "pykld"),
             mount.MountEntry(str(dev_root / "other"), "ext4", "/dev/sda1")]
    unmounted: list[str] = []
    monkeypatch.setattr(mount, "mounts", lambda: table)
    monkeypatch.setattr(mount, "is_dead", lambda path: not path.endswith("live"))
    monkeypatch.setattr(mount, "sys_umount", lambda path, flags=0: unmounted.append(path))
    monkeypatch.setattr(mount, "unmount_fuse", lambda path: unmounted.append(path))
    cleared = mount.clear_stale(devfs, str(dev_root))
    assert sorted(unmounted) == sorted([devfs, str(dev_root / "dead")])
    assert sorted(cleared) == sorted([(devfs, None), (str(dev_root / "dead"), None)])
    assert not (dev_root / "dead").exists() and (dev_root / "live").exists()


def test_a_failed_mount_call_raises_its_errno(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes, "get_errno", lambda: errno.EPERM)
    with pytest.raises(OSError) as caught:
        mount._check(-1, "mount /dev/x")
    assert caught.value.errno == errno.EPERM
    mount._check(0, "mount /dev/x")


@pytest.fixture
def binds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The bind mounts bind_file asked for (none is made)."""
    made: list[str] = []

    def sys_mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        made.append(source)
    monkeypatch.setattr(mount, "sys_mount", sys_mount)
    return made


def test_bind_file_refuses_to_pass_through_a_symbolic_link(tmp_path: Path, binds: list[str]) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError) as caught:
        mount.bind_file("/run/pykld/dev/x", f"{tmp_path}/link/x")
    assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR)  # O_PATH|O_DIRECTORY|O_NOFOLLOW: ENOTDIR
    assert f"{tmp_path}/link is a symbolic link or not a directory" in str(caught.value.strerror)
    assert binds == [] and not (tmp_path / "elsewhere" / "x").exists()


def test_bind_file_never_covers_what_is_there(tmp_path: Path, binds: list[str]) -> None:
    (tmp_path / "x").write_text("precious")
    with pytest.raises(OSError) as caught:
        mount.bind_file("/run/pykld/dev/x", f"{tmp_path}/x")
    assert caught.value.errno == errno.EEXIST
    assert binds == [] and (tmp_path / "x").read_text() == "precious"


def test_a_bind_that_fails_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object) -> None:
        raise OSError(errno.EPERM, "mount refused")
    monkeypatch.setattr(mount, "sys_mount", refused)
    with pytest.raises(OSError) as caught:
        mount.bind_file("/run/pykld/dev/a/b/x", f"{tmp_path}/a/b/x")
    assert caught.value.errno == errno.EPERM
    assert os.listdir(tmp_path) == []  # neither the placeholder nor the directories made for it


def test_the_fuse_transport_mounts_once_with_allow_other_when_permitted(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    dev_dir = str(tmp_path / "dev")
    asked: list[str] = []

    def mount_fuse(mount_point: str, options: str, fsname: str = "pykld") -> int:
        asked.append(options)
        raise OSError(errno.EPERM, "not mounting in this test")
    monkeypatch.setattr(mount, "clear_stale", lambda dev_dir: [])
    monkeypatch.setattr(mount, "mount_fuse", mount_fuse)
    monkeypatch.setattr(mount, "allow_other_permitted", lambda: True)
    monkeypatch.setattr(mount, "mounts", lambda: [])
    with pytest.raises(OSError):
        FuseTransport(Kernel(), dev_dir, bind=False).start()
    assert asked and "allow_other" in asked[0].split(",")  # other users reach the devices
    monkeypatch.setattr(mount, "mounts", lambda: [mount.MountEntry(dev_dir, mount.FSTYPE, "pykld")])
    with pytest.raises(OSError) as caught:
        FuseTransport(Kernel(), dev_dir, bind=False).start()
    assert caught.value.errno == errno.EBUSY and len(asked) == 1  # a live pykld there: not mounted over


def test_only_root_binds_at_dev(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert FuseTransport(Kernel(), str(tmp_path), bind=True).device_path("x") == str(tmp_path / "x")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert FuseTransport(Kernel(), str(tmp_path), bind=True).device_path("x") == "/dev/x"


IN_DIR = '''
from pykld import CharacterDevice, Module, make_dev

class InDir(Module):
    name = "indir"
    def load(self):
        make_dev(CharacterDevice(), "pts/one", mode=0o644)
'''


def test_a_withdrawn_device_in_a_known_directory_is_invalidated_at_once(tmp_path: Path) -> None:
    driver = tmp_path / "indir.py"
    driver.write_text(IN_DIR)
    kernel = Kernel()
    kernel.kldload(str(driver))
    transport = FuseTransport(kernel, str(tmp_path / "dev"), bind=False)
    rfd, wfd = os.pipe()
    try:
        transport.session = Session(wfd, {}, 1 << 16)
        pts = transport.handler._dir_node("pts")  # the kernel looked the directory up
        cdev = kernel.lookup("pts/one")
        transport._withdraw(cdev)
        sent = os.read(rfd, 1 << 16)
        _, code, unique = struct.unpack_from("<IiQ", sent)
        assert (code, unique) == (abi.NotifyCode.INVAL_ENTRY, 0)
        assert struct.unpack_from("<Q", sent, 16)[0] == pts and sent.endswith(b"one\0")
    finally:
        os.close(rfd)
        os.close(wfd)
        kernel.shutdown()


def test_stop_unbinds_everything_and_says_when_the_devfs_stays_mounted(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    unbound: list[str] = []
    monkeypatch.setattr(mount, "unbind_file", lambda target, dirs=(): unbound.append(target))

    def refused(mount_point: str) -> None:
        raise OSError(errno.EIO, "fusermount3 -u failed")
    monkeypatch.setattr(mount, "unmount_fuse", refused)
    transport = FuseTransport(Kernel(), str(tmp_path / "dev"), bind=False)
    transport._bound = {"/dev/a": [], "/dev/b": []}
    transport.fd, other_end = os.pipe()  # the channel stop() closes
    try:
        with pytest.raises(OSError) as caught:
            transport.stop()
    finally:
        os.close(other_end)
    assert caught.value.errno == errno.EBUSY and "is still mounted: fusermount3 -u failed" in str(caught.value)
    assert sorted(unbound) == ["/dev/a", "/dev/b"] and transport.fd == -1
