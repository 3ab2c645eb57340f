"""Fuzzed protocol: generated FUSE and CUSE messages into the decoder and the sessions' dispatch
(tests/protocol_fuzz.py), and random and truncated frames into a live daemon's control socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import sys
import time
from collections import Counter
from typing import Any

from common import ROOT
from stress_faults import Daemon

sys.path.insert(0, str(ROOT / "tests"))
import protocol_fuzz  # noqa: E402 - from tests/, shared with the smoke test


def fuse_messages(count: int, log: Any) -> dict[str, Any]:
    started = time.monotonic()
    tally = protocol_fuzz.fuzz(count, seed=int(time.time()))
    figures = tally.as_dict()
    figures["seconds"] = round(time.monotonic() - started, 1)
    log(f"fuse/cuse messages: {json.dumps({k: v for k, v in figures.items() if k != 'errnos'})}")
    return figures


def _frame(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["random", "truncated", "lying_length", "oversized", "not_json", "not_object", "bad_schema",
                       "deep", "valid"])
    if kind == "random":
        return kind, rng.randbytes(rng.randrange(64))
    if kind == "valid":
        body = json.dumps({"op": "stat", "verbose": rng.random() < 0.5}).encode()
        return kind, struct.pack(">I", len(body)) + body
    if kind == "truncated":
        body = json.dumps({"op": "stat"}).encode()
        frame = struct.pack(">I", len(body)) + body
        return kind, frame[: rng.randrange(len(frame))]
    if kind == "lying_length":
        body = json.dumps({"op": "stat"}).encode()
        return kind, struct.pack(">I", len(body) + rng.randint(-len(body), 1000) or 1) + body
    if kind == "oversized":
        return kind, struct.pack(">I", rng.randint((1 << 20) + 1, (1 << 32) - 1))
    if kind == "not_json":
        body = rng.randbytes(rng.randrange(1, 200))
        return kind, struct.pack(">I", len(body)) + body
    if kind == "not_object":
        body = json.dumps(rng.choice([[], 1, "op", None, [{"op": "stat"}]])).encode()
        return kind, struct.pack(">I", len(body)) + body
    if kind == "deep":
        body = b"[" * rng.randint(1000, 100000)
        return kind, struct.pack(">I", len(body)) + body
    message = rng.choice([{"op": "load"}, {"op": "load", "target": 5}, {"op": "unload", "target": None},
                          {"op": "unload", "target": "x", "force": "yes"}, {"op": 7}, {"op": "nosuch"},
                          {"op": "load", "target": ""}, {"op": "load", "target": "/nonexistent.py"},
                          {"op": "dmesg", "follow": 1}])
    body = json.dumps(message).encode()
    return kind, struct.pack(">I", len(body)) + body


def _exchange(path: str, frame: bytes) -> str:
    """Send one frame, close our side, read what the daemon answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        with contextlib.suppress(OSError):
            sock.sendall(frame)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "timeout"
    if len(data) < 4:
        return "closed"
    try:
        reply = json.loads(data[4 : 4 + struct.unpack(">I", data[:4])[0]])
    except ValueError:
        return "garbled"
    return "ok" if reply.get("ok") else f"errno {reply.get('errno')}"


def control_socket(count: int, log: Any) -> dict[str, Any]:
    rng = random.Random(int(time.time()))
    daemon = Daemon()
    kinds: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    crashes = 0
    started = time.monotonic()
    try:
        daemon("daemon", "--transport", "sim")
        pid = daemon.pid
        path = os.path.join(daemon.run_dir, "control.sock")
        for index in range(count):
            kind, frame = _frame(rng)
            kinds[kind] += 1
            try:
                answers[_exchange(path, frame)] += 1
            except OSError as exc:
                answers[f"connect: {exc.strerror}"] += 1
            if index % 200 == 0 or index == count - 1:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    crashes += 1
                    log(f"control socket: the daemon died after {index} frames; restarting it")
                    daemon("daemon", "--transport", "sim")
                    pid = daemon.pid
        stat = daemon("stat")
        threads = int(next(line.split()[1] for line in open(f"/proc/{pid}/status") if line.startswith("Threads:")))
    finally:
        daemon.stop()
    figures = {"frames": count, "kinds": dict(kinds), "answers": dict(answers.most_common()),
               "daemon_crashes": crashes, "stat_after": stat.returncode == 0, "daemon_threads_after": threads,
               "seconds": round(time.monotonic() - started, 1)}
    log(f"control socket: {figures}")
    return figures


def run(messages: int, frames: int, log: Any) -> dict[str, Any]:
    return {"fuse_cuse": fuse_messages(messages, log), "control_socket": control_socket(frames, log)}
