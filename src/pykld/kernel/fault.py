"""Fault containment: what the caller of driver code gets when that code raises.

One rule for every way into a module (a device operation, a module event, a
callout, a task, a kthread):

- OSError(errno.X) is the driver's answer: the caller gets X.  One without a
  usable errno becomes EIO.
- any other Exception, and SystemExit, is a driver fault: a traceback in
  dmesg, EIO for the caller, and the kernel goes on.
- the kernel's own control-flow signals (NeedIovecs, a BaseException that
  driver code cannot catch by accident) and KeyboardInterrupt pass untouched.
"""

from __future__ import annotations

import errno
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pykld.kernel.kernel import Kernel
    from pykld.kernel.modules import LoadedModule


class Counters(Protocol):
    errors: int
    faults: int


def caller_error(exc: BaseException, kernel: Kernel, module: LoadedModule | None, what: str,
                 where: str | None = None, stats: Counters | None = None) -> BaseException:
    """The exception to raise to the caller for `exc`, which `what` ("read", "LOAD
    event") raised, on device `where` if any; logs faults in dmesg."""
    if isinstance(exc, OSError):
        if stats is not None:
            stats.errors += 1
        if isinstance(exc.errno, int) and exc.errno > 0:
            return exc
        text = f"{exc}"
    elif isinstance(exc, (Exception, SystemExit)):
        if stats is not None:
            stats.faults += 1
        kernel.log_fault(module, what if where is None else f"{what} on {where}", exc)
        text = f"{exc!r}"
    else:
        return exc  # the kernel's own signals, and Ctrl-C
    if where is None:
        where = f"module {module.name}" if module is not None else "kernel"
    error = OSError(errno.EIO, f"{where}: {what} failed: {text}", None)
    error.__cause__ = exc
    return error


def contain(kernel: Kernel, module: LoadedModule | None, what: str, code: Callable[..., Any],
            *args: Any) -> Any:
    """Run module code under the rule above."""
    try:
        return code(*args)
    except BaseException as exc:
        raise caller_error(exc, kernel, module, what)  # noqa: B904 - caller_error sets the cause


def format_fault(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()
