"""What a driver left behind: the check the pytest fixtures run at teardown.

`unload_all(kernel)` unloads every module, forced, as a shutdown does, and
returns one line per leak it found, the kind first:

- open files: files still open on a device when the test ended (closes that
  FUSE sends after close(2) has returned are waited for briefly first);
- sleeping threads: callers still inside a driver when the test ended, and
  kthreads still running after their module unloaded;
- malloc: bytes of a module's malloc types still in use after its unload;
- devices: devices left in devfs once every module is gone (made outside a module);
- sysctl: nodes left once every module is gone (a module's own go at its unload;
  these were added where no module was curthread, by the test or a device made
  outside a module), other than the `kept` ones (those there before the test).

An empty list means the kernel is as it was before anything was loaded.
"""

from __future__ import annotations

from pykld.kernel import file as files
from pykld.kernel.kernel import CLOSE_GRACE, Kernel


def unload_all(kernel: Kernel, grace: float = CLOSE_GRACE, kept: frozenset[str] = frozenset()) -> list[str]:
    leaks: list[str] = []
    files.wait_for_closes(lambda: not any(c.open_count for c in kernel.devfs), grace)
    for cdev in kernel.devfs:
        if cdev.open_count:
            leaks.append(f"open files: {cdev.path}: {cdev.open_count} still open")
        if cdev.active:
            leaks.append(f"sleeping threads: {len(cdev.active)} still inside the driver of {cdev.path}")
    records = [kernel.module(row.id) for row in kernel.kldstat()]
    kernel.shutdown()
    for record in records:
        for mtype in record.malloc_types:
            if mtype.inuse:
                leaks.append(f"malloc: module {record.name}: type {mtype.name}: {mtype.inuse} bytes in "
                             f"{mtype.allocations} allocation(s) still in use after unload")
        alive = [kt.name for kt in record.kthreads if kt.alive]
        if alive:
            leaks.append(f"sleeping threads: module {record.name}: kthread(s) {', '.join(alive)} "
                         "still running after unload")
    leaks.extend(f"devices: {cdev.path} still exists after every module unloaded" for cdev in kernel.devfs)
    leaks.extend(f"sysctl: {oid.name} still exists after every module unloaded"
                 for oid in kernel.sysctl_list() if oid.name not in kept)
    return leaks
