"""Module records and the loader that finds a module in a Python file (the linker).

A driver file declares one module: a class marked as a pykld module (the kpi's
Module base sets the mark).  Each load imports the file afresh, so a module
reloaded after an edit runs its new code, as kldload of a rebuilt .ko does.
"""

from __future__ import annotations

import enum
import errno
import importlib
import importlib.util
import itertools
import os
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pykld.kernel.callout import Callout
    from pykld.kernel.devfs import Cdev
    from pykld.kernel.kthread import KThread, TaskQueue
    from pykld.kernel.malloc import MallocType


class ModuleEvent(enum.IntEnum):
    """modeventtype_t, with FreeBSD's values."""

    LOAD = 0
    UNLOAD = 1
    SHUTDOWN = 2
    QUIESCE = 3


_imports = itertools.count(1)  # private names for each fresh import


@dataclass(eq=False)
class LoadedModule:
    name: str
    path: str
    instance: Any  # the driver's Module object
    pymodule: types.ModuleType
    id: int
    cdevs: list[Cdev] = field(default_factory=list)
    malloc_types: list[MallocType] = field(default_factory=list)
    # What runs on the module's own schedule; the kernel drains it at unload.
    callouts: list[Callout] = field(default_factory=list)
    kthreads: list[KThread] = field(default_factory=list)
    taskqueues: list[TaskQueue] = field(default_factory=list)
    activity_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def refs(self) -> int:
        """Open files on this module's devices."""
        return sum(c.open_count for c in self.cdevs if not c.destroyed)

    @property
    def live_cdevs(self) -> list[Cdev]:
        return [c for c in self.cdevs if not c.destroyed]


def module_path() -> list[Path]:
    """Where a module named without a path is looked for (kern.module_path)."""
    configured = os.environ.get("PYKLD_MODULE_PATH")
    if configured:
        return [Path(p) for p in configured.split(os.pathsep) if p]
    return [Path.cwd(), Path.cwd() / "examples"]


def find_in_path(name: str) -> str | None:
    """The file NAME.py in the module path, if there is one."""
    for directory in module_path():
        candidate = directory / f"{name}.py"
        if candidate.is_file():
            return str(candidate.resolve())
    return None


def resolve(target: str) -> str:
    """Find the file for a path or a bare name; fall back to an importable module name."""
    as_path = Path(target)
    if as_path.suffix == ".py" or os.sep in target:
        if not as_path.is_file():
            raise OSError(errno.ENOENT, f"no such module file: {target}", None)
        return str(as_path.resolve())
    found = find_in_path(target)
    if found is not None:
        return found
    try:
        spec = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise OSError(errno.ENOENT, f"no module named {target!r} in the module path or importable", None)
    return spec.origin


def import_fresh(path: str) -> types.ModuleType:
    """Import the file at `path` under a name of its own, so every load is a new copy."""
    name = f"pykld_loaded_{next(_imports)}_{Path(path).stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise OSError(errno.ENOEXEC, f"{path}: not a Python module", None)
    pymodule = importlib.util.module_from_spec(spec)
    sys.modules[name] = pymodule  # dataclasses and pickling look a module up by name
    # The driver's directory comes first on the path while it imports, as a
    # script's does: so it finds the header beside it (NAME_ioctl.py: ioctl
    # numbers and structs), which its user-space tests import too.
    directory = str(Path(path).parent)
    sys.path.insert(0, directory)
    try:
        spec.loader.exec_module(pymodule)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(directory)
    return pymodule


def forget(pymodule: types.ModuleType) -> None:
    sys.modules.pop(pymodule.__name__, None)


def module_class(pymodule: types.ModuleType, path: str) -> type:
    """The one module class a driver file declares: the leaf of its module classes,
    so a helper base class in the same file does not count as a second module."""
    declared = getattr(pymodule, "MODULE", None)
    if declared is not None:
        return declared  # type: ignore[no-any-return]
    classes = [
        obj for obj in vars(pymodule).values()
        if isinstance(obj, type) and getattr(obj, "__pykld_module__", False)
        and obj.__module__ == pymodule.__name__
    ]
    found = [cls for cls in classes if not any(other is not cls and issubclass(other, cls) for other in classes)]
    if len(found) != 1:
        what = "no module class" if not found else f"{len(found)} module classes"
        raise OSError(errno.ENOEXEC, f"{path}: {what} (subclass pykld.Module once, or set MODULE)", None)
    return found[0]
