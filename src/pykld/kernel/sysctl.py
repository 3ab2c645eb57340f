"""sysctl(9): named, typed values a module publishes, read and set from outside.

Tests and users drive emulated hardware through these: a sensor's reading, an
EEPROM's contents, a chip's counters.  A node has a dotted name
("dev.tmp102.0.temperature"), a kind that says how its value is parsed and
printed, a getter, and a setter when it is writable.  Nodes belong to the
module that added them and go away at its unload, as a sysctl_ctx does.
"""

from __future__ import annotations

import errno
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pykld.kernel.modules import LoadedModule

_COMPONENT = re.compile(r"[A-Za-z0-9_-]+")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse_int(text: str) -> int:
    return int(text, 0)


def _parse_uint(text: str) -> int:
    value = int(text, 0)
    if value < 0:
        raise ValueError("negative")
    return value


def _parse_bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError("not a boolean")


def _parse_hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def _format_bool(value: Any) -> str:
    return "1" if value else "0"


def _format_hex(value: Any) -> str:
    return bytes(value).hex()


# kind -> (parse text, check a Python value, print)
KINDS: dict[str, tuple[Callable[[str], Any], Callable[[Any], bool], Callable[[Any], str]]] = {
    "int": (_parse_int, lambda v: type(v) is int, str),
    "uint": (_parse_uint, lambda v: type(v) is int and v >= 0, str),
    "bool": (_parse_bool, lambda v: type(v) in (bool, int) and v in (0, 1), _format_bool),
    "float": (float, lambda v: type(v) in (int, float), repr),
    "str": (str, lambda v: type(v) is str, str),
    "hex": (_parse_hex, lambda v: isinstance(v, (bytes, bytearray, memoryview)), _format_hex),
}


@dataclass(eq=False)
class SysctlOid:
    """One node: what sysctl -a lists."""

    name: str
    kind: str
    descr: str
    getter: Callable[[], Any]
    setter: Callable[[Any], None] | None
    owner: LoadedModule | None

    @property
    def writable(self) -> bool:
        return self.setter is not None

    def value(self) -> Any:
        return self.getter()

    def holds(self, value: Any) -> bool:
        """Whether `value` is one of this node's kind."""
        return KINDS[self.kind][1](value)

    def format(self, value: Any) -> str:
        return KINDS[self.kind][2](value)

    def parse(self, value: Any) -> Any:
        """A new value, given as text or as a Python value of the node's kind."""
        parse = KINDS[self.kind][0]
        if isinstance(value, str) and self.kind != "str":
            try:
                return parse(value.strip())
            except ValueError:
                raise OSError(errno.EINVAL, f"{self.name}: {value!r} is not a valid {self.kind}", None) from None
        if not self.holds(value):
            raise OSError(errno.EINVAL, f"{self.name}: {value!r} is not a valid {self.kind}", None)
        if self.kind == "bool":
            return bool(value)
        if self.kind == "float":
            return float(value)
        if self.kind == "hex":
            return bytes(value)
        return value


def check_name(name: str) -> None:
    if not isinstance(name, str) or not all(_COMPONENT.fullmatch(part) for part in name.split(".")):
        raise OSError(errno.EINVAL, f"invalid sysctl name {name!r} (dotted words of letters, digits, _ and -)",
                      None)


class SysctlTree:
    """Every node of one kernel, by name."""

    def __init__(self) -> None:
        self._nodes: dict[str, SysctlOid] = {}
        self._lock = threading.Lock()

    def add(self, oid: SysctlOid) -> SysctlOid:
        check_name(oid.name)
        if oid.kind not in KINDS:
            raise OSError(errno.EINVAL, f"{oid.name}: unknown sysctl kind {oid.kind!r}; one of {', '.join(KINDS)}",
                          None)
        with self._lock:
            # A name is either a leaf or a node with children, never both (as in FreeBSD).
            clash = oid.name in self._nodes or any(
                name.startswith(oid.name + ".") or oid.name.startswith(name + ".") for name in self._nodes)
            if clash:
                raise OSError(errno.EEXIST, f"sysctl {oid.name} already exists (or a node on its path)", None)
            self._nodes[oid.name] = oid
        return oid

    def remove(self, oid: SysctlOid) -> None:
        with self._lock:
            if self._nodes.get(oid.name) is oid:
                del self._nodes[oid.name]

    def remove_owned(self, owner: LoadedModule) -> None:
        with self._lock:
            for name in [n for n, oid in self._nodes.items() if oid.owner is owner]:
                del self._nodes[name]

    def find(self, name: str) -> SysctlOid:
        with self._lock:
            oid = self._nodes.get(name)
        if oid is None:
            raise OSError(errno.ENOENT, f"unknown oid '{name}'", None)
        return oid

    def list(self, prefix: str = "") -> list[SysctlOid]:
        """Nodes named `prefix` or below it, by name; ENOENT when there are none."""
        with self._lock:
            nodes = [oid for name, oid in self._nodes.items()
                     if not prefix or name == prefix or name.startswith(prefix + ".")]
        if prefix and not nodes:
            raise OSError(errno.ENOENT, f"unknown oid '{prefix}'", None)
        return sorted(nodes, key=lambda oid: oid.name)
