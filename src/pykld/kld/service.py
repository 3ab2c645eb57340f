"""What the daemon does for each control request: Kernel calls in, reply fields out.

Its methods raise OSError for what the caller should hear as an errno; the
daemon turns anything else into EIO, so no request can take the daemon down.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

from pykld.kernel import fail as failpoints
from pykld.kernel.devfs import Cdev
from pykld.kernel.kernel import Kernel
from pykld.kernel.modules import resolve
from pykld.kernel.sysctl import SysctlOid
from pykld.kld.trust import trusted_module_file
from pykld.transport.registry import Publisher

DMESG_CHUNK = 256 * 1024  # bytes of lines per dmesg reply, well under control.MAX_MESSAGE
MAX_LINE = 16 * 1024  # a longer printf is cut, so one line always fits a reply


class Service:
    def __init__(self, kernel: Kernel, publisher: Publisher, stopping: threading.Event) -> None:
        self.kernel = kernel
        self.publisher = publisher
        self.stopping = stopping
        # Loads and unloads one at a time, and never once the daemon is tearing down:
        # a module loaded after the final shutdown would be left unpublished and unfreed.
        self.registry = threading.Lock()

    def load(self, target: str, transport: str | None) -> dict[str, Any]:
        if transport is not None and transport != self.publisher.name:
            raise OSError(errno.EINVAL, f"the daemon publishes over {self.publisher.name}, not {transport}; "
                          "`pykld shutdown` first to change the transport", None)
        with self._registry_open():
            module_id = self.kernel.kldload(trusted_module_file(resolve(target)))
            self.publisher.settle()  # /dev entries exist before the caller hears "loaded"
            record = self.kernel.module(module_id)
            return {"id": record.id, "name": record.name, "path": record.path, "transport": self.publisher.name,
                    "devices": [self.publisher.device_path(c.name) for c in record.live_cdevs]}

    def unload(self, target: str | int, force: bool) -> dict[str, Any]:
        with self._registry_open():
            name = self.kernel.module(target).name
            self.kernel.kldunload(target, force=force)
            self.publisher.settle()  # and are gone before it hears "unloaded"
            return {"name": name}

    def _registry_open(self) -> _Held:
        if not self.registry.acquire(timeout=30):
            raise OSError(errno.EAGAIN, "another load or unload is still running", None)
        if self.stopping.is_set():
            self.registry.release()
            raise OSError(errno.ESHUTDOWN, "the daemon is shutting down", None)
        return _Held(self.registry)

    def stat(self, verbose: bool) -> dict[str, Any]:
        modules = []
        for row in self.kernel.kldstat():
            try:
                record = self.kernel.module(row.id)
            except OSError:
                continue  # unloaded since kldstat
            entry: dict[str, Any] = {"id": row.id, "name": row.name, "path": row.path, "refs": row.refs,
                                     "devices": [self._device(c, verbose) for c in record.live_cdevs]}
            if verbose:
                entry["malloc"] = [t.stat()._asdict() for t in record.malloc_types]
            modules.append(entry)
        return {"pid": os.getpid(), "transport": self.publisher.name, "modules": modules}

    def _device(self, cdev: Cdev, verbose: bool) -> dict[str, Any]:
        device: dict[str, Any] = {"name": cdev.name, "path": self.publisher.device_path(cdev.name),
                                  "transport": self.publisher.transport_of(cdev), "open": cdev.open_count}
        if verbose:
            device["stats"] = dataclasses.asdict(cdev.stats)
        return device

    # -- fail(9) rules: set, listed and cleared by `pykld fail` ------------------------

    def fail(self, rule: str) -> dict[str, Any]:
        words = failpoints.parse(rule)
        words["device"] = self._device_name(words["device"])
        added = self.kernel.fail(**words)
        return {"id": added.id, "rule": added.describe()}

    def fail_list(self) -> dict[str, Any]:
        return {"rules": [rule.describe() for rule in self.kernel.fail_list()]}

    def fail_clear(self, device: str | None, operation: str | None) -> dict[str, Any]:
        return {"cleared": self.kernel.fail_clear(None if device is None else self._device_name(device), operation)}

    def _device_name(self, given: str) -> str:
        """A device as the user names it: its name, /dev/NAME, or where the transport published it."""
        for cdev in self.kernel.devfs:
            if given in (cdev.name, cdev.path, self.publisher.device_path(cdev.name)):
                return cdev.name
        raise OSError(errno.ENOENT, f"no such device: {given}", None)

    def sysctl(self, name: str, value: str | None) -> dict[str, Any]:
        """The nodes at or below `name` (every node for ""), or, given a value, that
        node set, with its old value.  Values travel as sysctl(8) prints them."""
        if value is None:
            return {"nodes": [self._sysctl_node(oid) for oid in self.kernel.sysctl_list(name)]}
        oid = self.kernel.sysctls.find(name)
        old = self.kernel.sysctl(name, value)
        return {"nodes": [self._sysctl_node(oid)], "old": oid.format(old)}

    def _sysctl_node(self, oid: SysctlOid) -> dict[str, Any]:
        node: dict[str, Any] = {"name": oid.name, "kind": oid.kind, "descr": oid.descr, "writable": oid.writable}
        try:
            node["value"] = oid.format(self.kernel.sysctl_read(oid))
        except OSError as exc:  # one broken node does not hide the others from sysctl -a
            node["error"] = exc.errno
            node["message"] = exc.strerror
        return node

    def dmesg(self) -> tuple[int, Iterator[list[str]]]:
        """The message buffer now: its sequence number (to follow from) and chunks of lines."""
        seq, lines = self.kernel.msgbuf.since(0)
        return seq, chunked([line.format(self.kernel.msgbuf.boot) for line in lines])

    def dmesg_after(self, seq: int, timeout: float) -> tuple[int, Iterator[list[str]]]:
        """Lines printed after `seq`, waiting up to `timeout` for the first."""
        seq, lines = self.kernel.msgbuf.since(seq, timeout)
        return seq, chunked([line.format(self.kernel.msgbuf.boot) for line in lines])


class _Held:
    """A lock already acquired, released by `with`."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def chunked(lines: list[str]) -> Iterator[list[str]]:
    """Lines in groups that each fit one reply; at least one group, maybe empty."""
    chunk: list[str] = []
    size = 0
    for line in lines:
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE] + f"... [{len(line) - MAX_LINE} characters cut]"
        if chunk and size + len(line) > DMESG_CHUNK:
            yield chunk
            chunk, size = [], 0
        chunk.append(line)
        size += len(json.dumps(line))  # as it will be encoded: escapes can make it 6 times longer
    yield chunk
