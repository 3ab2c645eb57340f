"""module(9) lifecycle: kldload/kldstat/kldunload, QUIESCE veto, force, busy, failed LOAD, SHUTDOWN."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pykld import Kernel

Load = Callable[..., int]
Write = Callable[..., str]


def driver(name: str = "drv", device: str = "drv", message: str = "hello", extra: str = "") -> str:
    """A small module with one device whose reads return `message`; `extra` adds Module methods."""
    return f'''
import errno
from pykld import CharacterDevice, Module, make_dev, printf

class Dev(CharacterDevice):
    def read(self, file, uio):
        uio.move_out({message!r}.encode())

    def ioctl(self, file, cmd, data):
        return 7

class Drv(Module):
    name = {name!r}

    def load(self):
        self.cdev = make_dev(Dev(), {device!r}, mode=0o666)

    def unload(self):
        self.cdev.destroy()
{extra}
'''


def read_dev(kernel: Kernel, path: str = "/dev/drv") -> bytes:
    with kernel.open(path) as f:
        return f.read()


def errno_of(call: Callable[[], object]) -> int | None:
    with pytest.raises(OSError) as excinfo:
        call()
    return excinfo.value.errno


# -- loading -----------------------------------------------------------------------


def test_load_by_path_and_kldstat(kernel: Kernel, write_driver: Write) -> None:
    path = write_driver(driver())
    mid = kernel.kldload(path)
    assert isinstance(mid, int)
    (stat,) = kernel.kldstat()
    assert stat.id == mid
    assert stat.name == "drv"
    assert Path(stat.path) == Path(path).resolve()
    assert stat.refs == 0
    assert stat.devices == ["drv"]
    assert read_dev(kernel) == b"hello"


def test_ids_are_unique_and_kldstat_is_in_load_order(kernel: Kernel, load_driver: Load) -> None:
    a = load_driver(driver("a", "dev_a"), "a")
    b = load_driver(driver("b", "dev_b"), "b")
    assert a != b
    assert [(s.id, s.name) for s in kernel.kldstat()] == [(a, "a"), (b, "b")]
    kernel.kldunload(a)  # by id
    assert [s.name for s in kernel.kldstat()] == ["b"]
    kernel.kldunload(str(b))  # by id as text, as the CLI passes it
    assert kernel.kldstat() == []
    c = load_driver(driver("a", "dev_a"), "a")
    assert c not in (a, b)  # ids are not reused


def test_refs_count_open_files(kernel: Kernel, load_driver: Load) -> None:
    load_driver(driver())
    f = kernel.open("/dev/drv")
    g = kernel.open("/dev/drv")
    assert kernel.kldstat()[0].refs == 2
    f.close()
    g.close()
    assert kernel.kldstat()[0].refs == 0


def test_load_by_name_from_module_path(kernel: Kernel, write_driver: Write, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    write_driver(driver("named", "named"), "named")
    monkeypatch.setenv("PYKLD_MODULE_PATH", str(tmp_path))
    kernel.kldload("named")
    assert [s.name for s in kernel.kldstat()] == ["named"]
    assert read_dev(kernel, "/dev/named") == b"hello"


def test_load_by_name_from_cwd_examples(kernel: Kernel, repo_root: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYKLD_MODULE_PATH", raising=False)
    monkeypatch.chdir(repo_root)
    kernel.kldload("hello")
    assert kernel.kldstat()[0].devices == ["rustmodule"]


def test_load_by_importable_name(kernel: Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "pykld_test_importable.py").write_text(driver("importable", "importable"))
    monkeypatch.setenv("PYKLD_MODULE_PATH", str(tmp_path / "empty"))
    monkeypatch.syspath_prepend(str(site))
    kernel.kldload("pykld_test_importable")
    assert read_dev(kernel, "/dev/importable") == b"hello"


def test_second_load_of_same_name_is_eexist(kernel: Kernel, write_driver: Write) -> None:
    path = write_driver(driver())
    kernel.kldload(path)
    assert errno_of(lambda: kernel.kldload(path)) == errno.EEXIST
    other = write_driver(driver("drv", "other_dev"), "copy")  # another file, same module name
    assert errno_of(lambda: kernel.kldload(other)) == errno.EEXIST
    assert len(kernel.kldstat()) == 1
    assert kernel.lookup("/dev/drv") is not None
    assert errno_of(lambda: kernel.open("/dev/other_dev")) == errno.ENOENT


def test_module_name_defaults_to_class_name(kernel: Kernel, load_driver: Load) -> None:
    load_driver(
        """
        from pykld import Module

        class Quiet(Module):
            pass
        """
    )
    assert kernel.kldstat()[0].name == "quiet"


@pytest.mark.parametrize("target", ["no_such_module_anywhere", "/nonexistent/dir/x.py", "missing.py"])
def test_unknown_module_is_enoent(kernel: Kernel, target: str, monkeypatch: pytest.MonkeyPatch,
                                  tmp_path: Path) -> None:
    monkeypatch.setenv("PYKLD_MODULE_PATH", str(tmp_path))
    assert errno_of(lambda: kernel.kldload(target)) == errno.ENOENT


@pytest.mark.parametrize("target", ["nothing", 12345, "12345"])
def test_unload_unknown_is_enoent(kernel: Kernel, target: str | int) -> None:
    assert errno_of(lambda: kernel.kldunload(target)) == errno.ENOENT


def test_no_module_class_is_enoexec(kernel: Kernel, load_driver: Load) -> None:
    source = "from pykld import Module\nX = 1\n"
    assert errno_of(lambda: load_driver(source)) == errno.ENOEXEC
    assert kernel.kldstat() == []


def test_two_module_classes_is_enoexec(kernel: Kernel, load_driver: Load) -> None:
    source = """
        from pykld import Module

        class One(Module):
            name = "one"

        class Two(Module):
            name = "two"
        """
    assert errno_of(lambda: load_driver(source)) == errno.ENOEXEC
    assert kernel.kldstat() == []


def test_module_attribute_picks_among_classes(kernel: Kernel, load_driver: Load) -> None:
    load_driver(
        """
        from pykld import Module

        class One(Module):
            name = "one"

        class Two(Module):
            name = "two"

        MODULE = Two
        """
    )
    assert [s.name for s in kernel.kldstat()] == ["two"]


def test_import_error_is_enoexec_and_logged(kernel: Kernel, load_driver: Load) -> None:
    assert errno_of(lambda: load_driver("this is not python(\n")) == errno.ENOEXEC
    assert errno_of(lambda: load_driver("raise RuntimeError('at import')\n")) == errno.ENOEXEC
    assert "RuntimeError('at import')" in "\n".join(kernel.dmesg())
    assert kernel.kldstat() == []


# -- failed LOAD -------------------------------------------------------------------

FAILING_LOAD = '''
import errno
from pykld import CharacterDevice, Module, make_dev

class Drv(Module):
    name = "drv"

    def load(self):
        self.cdev = make_dev(CharacterDevice(), "drv")
        make_dev(CharacterDevice(), "drv_extra/sub")
        {failure}
'''


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        ("raise OSError(errno.ENXIO, 'no hardware')", errno.ENXIO),
        ("raise RuntimeError('driver bug')", errno.EIO),
        ("1 / 0", errno.EIO),
        ("make_dev(CharacterDevice(), 'drv')", errno.EEXIST),
        ("import sys; sys.exit(3)", errno.EIO),
    ],
)
def test_failed_load_leaves_nothing(kernel: Kernel, write_driver: Write, failure: str, expected: int) -> None:
    path = write_driver(FAILING_LOAD.format(failure=failure))
    assert errno_of(lambda: kernel.kldload(path)) == expected
    assert kernel.kldstat() == []
    assert list(kernel.devfs) == []
    assert errno_of(lambda: kernel.open("/dev/drv")) == errno.ENOENT
    assert errno_of(lambda: kernel.kldunload("drv")) == errno.ENOENT
    # The same name and device names are free again: a fixed module loads.
    write_driver(FAILING_LOAD.format(failure="pass"))
    kernel.kldload(path)
    assert sorted(kernel.kldstat()[0].devices) == ["drv", "drv_extra/sub"]


def test_failed_construction_leaves_nothing(kernel: Kernel, load_driver: Load) -> None:
    source = """
        from pykld import Module

        class Drv(Module):
            name = "drv"

            def __init__(self):
                raise ValueError("bad constructor")
        """
    assert errno_of(lambda: load_driver(source)) == errno.EIO
    assert kernel.kldstat() == []
    assert "bad constructor" in "\n".join(kernel.dmesg())


def test_non_oserror_load_failure_goes_to_dmesg(kernel: Kernel, write_driver: Write) -> None:
    path = write_driver(FAILING_LOAD.format(failure="raise RuntimeError('driver bug')"))
    with pytest.raises(OSError):
        kernel.kldload(path)
    log = "\n".join(kernel.dmesg())
    assert "RuntimeError('driver bug')" in log
    assert "Traceback" in log


# -- QUIESCE, busy, force ----------------------------------------------------------

VETO = '''
    def quiesce(self):
        printf("quiesce")
        raise OSError(errno.EBUSY, "still in use")
'''


def test_quiesce_veto_is_ebusy_and_module_keeps_working(kernel: Kernel, load_driver: Load) -> None:
    load_driver(driver(extra=VETO))
    assert errno_of(lambda: kernel.kldunload("drv")) == errno.EBUSY
    assert [s.name for s in kernel.kldstat()] == ["drv"]
    assert read_dev(kernel) == b"hello"
    assert any(line.endswith("drv: quiesce") for line in kernel.dmesg())


def test_force_overrides_quiesce_veto(kernel: Kernel, load_driver: Load) -> None:
    load_driver(driver(extra=VETO))
    kernel.kldunload("drv", force=True)
    assert kernel.kldstat() == []
    assert errno_of(lambda: kernel.open("/dev/drv")) == errno.ENOENT


def test_crashing_quiesce_is_a_veto(kernel: Kernel, load_driver: Load) -> None:
    load_driver(driver(extra="\n    def quiesce(self):\n        raise KeyError('x')\n"))
    assert errno_of(lambda: kernel.kldunload("drv")) == errno.EIO
    assert [s.name for s in kernel.kldstat()] == ["drv"]
    kernel.kldunload("drv", force=True)
    assert kernel.kldstat() == []


def test_unload_with_open_device_is_ebusy(kernel: Kernel, load_driver: Load) -> None:
    load_driver(driver())
    f = kernel.open("/dev/drv", os.O_RDWR)
    assert errno_of(lambda: kernel.kldunload("drv")) == errno.EBUSY
    assert f.read() == b"hello"  # untouched by the refused unload
    f.close()
    kernel.kldunload("drv")
    assert kernel.kldstat() == []


def test_forced_unload_with_open_file_gives_enxio(kernel: Kernel, load_driver: Load) -> None:
    load_driver(driver())
    f = kernel.open("/dev/drv", os.O_RDWR)
    kernel.kldunload("drv", force=True)
    assert kernel.kldstat() == []
    assert errno_of(lambda: f.read()) == errno.ENXIO
    assert errno_of(lambda: f.pread(10, 0)) == errno.ENXIO
    assert errno_of(lambda: f.write(b"x")) == errno.ENXIO
    assert errno_of(lambda: f.ioctl(0x1234)) == errno.ENXIO
    assert errno_of(lambda: f.poll(0x1)) == errno.ENXIO
    f.close()  # close still succeeds
    assert f.closed
    assert errno_of(lambda: kernel.open("/dev/drv")) == errno.ENOENT
    # The name can be used again by a new load.
    load_driver(driver(message="again"))
    assert read_dev(kernel) == b"again"


SELF_DESTROYING = '''
from pykld import CharacterDevice, Module, destroy_dev, make_dev

class Dev(CharacterDevice):
    def ioctl(self, file, cmd, data):
        destroy_dev(file.cdev)  # the driver withdraws its own device, an open file still on it

class Drv(Module):
    name = "drv"

    def load(self):
        make_dev(Dev(), "drv", mode=0o666)
'''


def test_opens_of_a_device_its_driver_destroyed_hold_no_reference(kernel: Kernel, load_driver: Load) -> None:
    load_driver(SELF_DESTROYING)
    f = kernel.open("/dev/drv", os.O_RDWR)
    f.ioctl(1)
    assert kernel.kldstat()[0].refs == 0  # the open is on a device that is gone
    kernel.kldunload("drv")  # not EBUSY: nothing of the module is open any more
    assert kernel.kldstat() == []
    assert errno_of(lambda: f.read()) == errno.ENXIO
    f.close()


UNLOAD_FAILS = '''
    def unload(self):
        printf("unload attempt")
        raise OSError(errno.EIO, "cannot unload")
'''


def test_unload_failure_keeps_module_unless_forced(kernel: Kernel, load_driver: Load) -> None:
    load_driver(driver(extra=UNLOAD_FAILS))
    assert errno_of(lambda: kernel.kldunload("drv")) == errno.EIO
    assert [s.name for s in kernel.kldstat()] == ["drv"]
    assert read_dev(kernel) == b"hello"
    kernel.kldunload("drv", force=True)
    assert kernel.kldstat() == []
    # The devices it failed to destroy are destroyed by the kernel.
    assert errno_of(lambda: kernel.open("/dev/drv")) == errno.ENOENT
    assert any("forced unload despite" in line for line in kernel.dmesg())


def test_crashing_unload_kept_unless_forced(kernel: Kernel, load_driver: Load) -> None:
    load_driver(driver(extra="\n    def unload(self):\n        [][1]\n"))
    assert errno_of(lambda: kernel.kldunload("drv")) == errno.EIO
    assert [s.name for s in kernel.kldstat()] == ["drv"]
    kernel.kldunload("drv", force=True)
    assert kernel.kldstat() == []


def test_devices_left_by_unload_are_destroyed(kernel: Kernel, load_driver: Load) -> None:
    load_driver(
        """
        from pykld import CharacterDevice, Module, make_dev

        class Drv(Module):
            name = "drv"

            def load(self):
                for name in ("left/a", "left/b", "c"):
                    make_dev(CharacterDevice(), name)
        """
    )
    assert sorted(kernel.kldstat()[0].devices) == ["c", "left/a", "left/b"]
    kernel.kldunload("drv")
    assert list(kernel.devfs) == []
    assert kernel.devfs.directories() == set()


def test_shutdown_runs_shutdown_then_unloads_everything(kernel: Kernel, load_driver: Load) -> None:
    events = '''
    def shutdown(self):
        printf("SHUTDOWN")

    def unload(self):
        printf("UNLOAD")
        self.cdev.destroy()
'''
    load_driver(driver("a", "dev_a", extra=events), "a")
    load_driver(driver("b", "dev_b", extra=events + VETO), "b")  # a veto does not stop shutdown
    f = kernel.open("/dev/dev_a")  # nor does an open file
    kernel.shutdown()
    assert kernel.kldstat() == []
    assert list(kernel.devfs) == []
    log = [line.split("] ", 1)[1] for line in kernel.dmesg()]
    events_seen = [line for line in log if line.split(": ", 1)[1] in ("SHUTDOWN", "UNLOAD")]
    # Newest first; each module gets SHUTDOWN before its UNLOAD.
    assert events_seen == ["b: SHUTDOWN", "b: UNLOAD", "a: SHUTDOWN", "a: UNLOAD"]
    assert errno_of(lambda: f.read()) == errno.ENXIO
    f.close()


def test_reload_runs_fresh_code(kernel: Kernel, write_driver: Write) -> None:
    path = write_driver(driver(message="version one"))
    kernel.kldload(path)
    assert read_dev(kernel) == b"version one"
    kernel.kldunload("drv")
    write_driver(driver(message="version two"))
    kernel.kldload(path)
    assert read_dev(kernel) == b"version two"


def test_module_globals_are_fresh_per_load(kernel: Kernel, write_driver: Write) -> None:
    path = write_driver(
        """
        from pykld import CharacterDevice, Module, make_dev

        LOADS = []

        class Dev(CharacterDevice):
            def read(self, file, uio):
                uio.move_out(str(len(LOADS)).encode())

        class Drv(Module):
            name = "drv"

            def load(self):
                LOADS.append(1)
                make_dev(Dev(), "drv")
        """
    )
    for _ in range(3):
        kernel.kldload(path)
        assert read_dev(kernel) == b"1"
        kernel.kldunload("drv")


def test_modevent_override_sees_raw_events(kernel: Kernel, load_driver: Load) -> None:
    load_driver(
        """
        from pykld import Module, ModuleEvent, printf

        class Raw(Module):
            name = "raw"

            def modevent(self, event):
                printf(f"event {ModuleEvent(event).name}")
        """
    )
    kernel.kldunload("raw")
    log = [line.split("raw: ", 1)[1] for line in kernel.dmesg() if "raw: " in line]
    assert log == ["event LOAD", "event QUIESCE", "event UNLOAD"]
