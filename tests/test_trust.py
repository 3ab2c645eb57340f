"""The daemon loads only module files that no one but root or its own user could have written
(sshd's StrictModes rule, src/pykld/kld/trust.py)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from transport.conftest import require_root

from pykld.kld.trust import trusted_module_file

NOBODY = 65534


@pytest.fixture
def module_dir(tmp_path: Path) -> Path:
    """A directory the rule accepts (tmp_path is 0700 under /tmp, which is sticky)."""
    directory = tmp_path / "mods"
    directory.mkdir(mode=0o755)
    (directory / "m.py").write_text("")
    (directory / "m.py").chmod(0o644)
    return directory


def refused(path: Path) -> str:
    with pytest.raises(OSError) as excinfo:
        trusted_module_file(str(path))
    assert excinfo.value.errno == errno.EPERM
    return str(excinfo.value.strerror)


def test_a_file_only_its_owner_writes_is_accepted_and_resolved(module_dir: Path) -> None:
    (module_dir / "link.py").symlink_to(module_dir / "m.py")
    assert trusted_module_file(str(module_dir / "link.py")) == str((module_dir / "m.py").resolve())


@pytest.mark.parametrize("mode, who", [(0o646, "everyone"), (0o664, "group")])
def test_a_file_others_may_write_is_refused(module_dir: Path, mode: int, who: str) -> None:
    (module_dir / "m.py").chmod(mode)
    message = refused(module_dir / "m.py")
    assert f"m.py is writable by {who}" in message and "StrictModes" in message


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_a_directory_above_that_others_may_write_is_refused(module_dir: Path, mode: int) -> None:
    module_dir.chmod(mode)
    assert f"{module_dir} is writable by" in refused(module_dir / "m.py")


def test_a_sticky_world_writable_directory_is_accepted(module_dir: Path) -> None:
    module_dir.chmod(0o1777)
    trusted_module_file(str(module_dir / "m.py"))


def test_a_file_or_directory_owned_by_another_user_is_refused(module_dir: Path) -> None:
    require_root()  # chown needs root; CI makes it mandatory
    os.chown(module_dir / "m.py", NOBODY, NOBODY)
    assert f"m.py is owned by uid {NOBODY}" in refused(module_dir / "m.py")
    os.chown(module_dir / "m.py", 0, 0)
    os.chown(module_dir, NOBODY, NOBODY)
    assert f"{module_dir} is owned by uid {NOBODY}" in refused(module_dir / "m.py")


def test_a_symlink_to_an_untrusted_file_is_judged_by_its_target(module_dir: Path, tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    (open_dir / "evil.py").write_text("")
    (module_dir / "link.py").symlink_to(open_dir / "evil.py")
    assert f"{open_dir} is writable by everyone" in refused(module_dir / "link.py")
