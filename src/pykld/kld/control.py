"""The control protocol between `pykld` commands and the daemon, without I/O.

A message is a JSON object preceded by its length (4 bytes, big-endian), at
most MAX_MESSAGE bytes.  A request names its operation:

    {"op": "load", "target": "/abs/path/hello.py", "transport": null}
    {"op": "unload", "target": "hello", "force": false}
    {"op": "stat", "verbose": false}
    {"op": "dmesg", "follow": false}
    {"op": "shutdown"}
    {"op": "fail", "rule": "rustmodule read error EIO --times 1"}
    {"op": "fail_list"}
    {"op": "fail_clear", "device": null, "operation": null}

and every reply says whether it worked:

    {"ok": true, ...}
    {"ok": false, "errno": 16, "error": "module hello: 1 open file(s)"}

`dmesg` answers with a stream of replies {"ok": true, "lines": [...], "end": bool}
ending with end=true (never, when following, until the daemon stops).

Bytes in, messages out (Decoder); messages in, bytes out (encode).  What the
peer sends wrong becomes a ProtocolError carrying the errno to reply with;
`fatal` means the stream cannot be resynchronised and must be closed.
"""

from __future__ import annotations

import errno
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_MESSAGE = 1 << 20
EXIT_ALREADY_RUNNING = 3  # a starting daemon's exit status: another daemon won the race
HEADER = struct.Struct(">I")
_REQUIRED = object()


class ProtocolError(Exception):
    def __init__(self, code: int, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.errno = code
        self.message = message
        self.fatal = fatal


def encode(message: Mapping[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise ProtocolError(errno.EMSGSIZE, f"message of {len(body)} bytes exceeds {MAX_MESSAGE}")
    return HEADER.pack(len(body)) + body


class Decoder:
    """Frames a byte stream into JSON objects."""

    def __init__(self, max_size: int = MAX_MESSAGE) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_message(self) -> dict[str, Any] | None:
        """The next complete message, or None until more bytes arrive."""
        if len(self._buffer) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self._buffer)
        if size > self.max_size:
            # Refused before its body arrives: nobody gets to make us buffer it.
            raise ProtocolError(errno.EMSGSIZE, f"message of {size} bytes exceeds {self.max_size}", fatal=True)
        end = HEADER.size + size
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[HEADER.size:end])
        del self._buffer[:end]
        try:
            message = json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
            raise ProtocolError(errno.EINVAL, f"not JSON: {type(exc).__name__}") from None
        if not isinstance(message, dict):
            raise ProtocolError(errno.EINVAL, "a message is a JSON object")
        return message

    def eof(self) -> None:
        """The peer closed its side: anything buffered is a truncated message."""
        if self._buffer:
            size = len(self._buffer)
            self._buffer.clear()
            raise ProtocolError(errno.EPROTO, f"truncated message ({size} bytes, then end of stream)", fatal=True)


# -- requests ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    kinds: tuple[type, ...]
    default: Any = _REQUIRED


SCHEMA: dict[str, dict[str, Field]] = {
    "load": {"target": Field((str,)), "transport": Field((str, type(None)), None)},
    "unload": {"target": Field((str, int)), "force": Field((bool,), False)},
    "stat": {"verbose": Field((bool,), False)},
    "dmesg": {"follow": Field((bool,), False)},
    "sysctl": {"name": Field((str,), ""), "value": Field((str, type(None)), None)},
    "shutdown": {},
    "fail": {"rule": Field((str,))},  # a rule as `pykld fail` takes it (kernel/fail.py: parse)
    "fail_list": {},
    "fail_clear": {"device": Field((str, type(None)), None), "operation": Field((str, type(None)), None)},
}


@dataclass(frozen=True)
class Request:
    op: str
    args: dict[str, Any]


def request(op: str, **args: Any) -> dict[str, Any]:
    return {"op": op, **args}


def parse_request(message: Mapping[str, Any]) -> Request:
    """Check a request against SCHEMA; unknown fields are ignored (newer clients)."""
    op = message.get("op")
    if not isinstance(op, str) or op not in SCHEMA:
        raise ProtocolError(errno.EINVAL, f"unknown operation {op!r}; one of {', '.join(SCHEMA)}")
    args: dict[str, Any] = {}
    for name, field in SCHEMA[op].items():
        value = message.get(name, field.default)
        if value is _REQUIRED:
            raise ProtocolError(errno.EINVAL, f"{op}: {name} is required")
        # type() rather than isinstance: JSON true must not pass as an int
        if type(value) not in field.kinds:
            raise ProtocolError(errno.EINVAL, f"{op}: {name} has the wrong type ({type(value).__name__})")
        if isinstance(value, str) and field.default is _REQUIRED and not value:
            raise ProtocolError(errno.EINVAL, f"{op}: {name} is empty")
        args[name] = value
    return Request(op, args)


# -- replies ----------------------------------------------------------------------------

def ok(**fields: Any) -> dict[str, Any]:
    return {"ok": True, **fields}


def error(code: int, message: str) -> dict[str, Any]:
    return {"ok": False, "errno": code, "error": message}


def error_from(exc: OSError) -> dict[str, Any]:
    code = exc.errno if isinstance(exc.errno, int) else errno.EIO
    return error(code, exc.strerror or str(exc))


def check_reply(reply: Mapping[str, Any]) -> dict[str, Any]:
    """A reply as the client uses it: the fields of a success, or the OSError of a failure."""
    if reply.get("ok") is True:
        return dict(reply)
    code, text = reply.get("errno"), reply.get("error")
    if reply.get("ok") is not False or type(code) is not int or not isinstance(text, str):
        raise OSError(errno.EPROTO, f"malformed reply from the daemon: {reply!r:.200}", None)
    raise OSError(code, text, None)
