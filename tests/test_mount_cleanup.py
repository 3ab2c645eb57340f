"""Cleaning up after a killed pykld, in process (the mount table and statfs stood in for):
only dead pykld mounts are removed, a dead bind's empty placeholder goes with it, a
live pykld's mounts stay (tests/transport/test_fuse.py kills real hosts)."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pykld.transport import mount


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
