"""The message buffer: printf(9) output of every module, kept in a bounded ring."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import NamedTuple


class LogLine(NamedTuple):
    time: float  # seconds since the epoch
    module: str  # the module that printed, or "kernel"
    text: str

    def format(self, boot: float) -> str:
        return f"[{self.time - boot:12.6f}] {self.module}: {self.text}"


class MessageBuffer:
    def __init__(self, capacity: int = 4096) -> None:
        self.boot = time.time()
        self._lines: deque[LogLine] = deque(maxlen=capacity)
        self._seq = 0  # lines ever written, so followers can tell what they missed
        self._changed = threading.Condition(threading.Lock())
        self._followers = 0  # threads waiting in since(): only then does a write pay for notify_all

    def write(self, module: str, text: str) -> None:
        # A driver may printf on every request (hello does): one clock reading and no
        # notify_all without a follower keep that cheap.
        now = time.time()
        parts = text.rstrip("\n").split("\n") if "\n" in text else (text,)
        with self._changed:
            for part in parts:
                self._lines.append(LogLine(now, module, part))
            self._seq += len(parts)
            if self._followers:
                self._changed.notify_all()

    def lines(self) -> list[LogLine]:
        with self._changed:
            return list(self._lines)

    def formatted(self) -> list[str]:
        return [line.format(self.boot) for line in self.lines()]

    def since(self, seq: int, timeout: float | None = None) -> tuple[int, list[LogLine]]:
        """Lines written after `seq` (waiting up to `timeout` for one), and the new seq."""
        with self._changed:
            if self._seq == seq and timeout:
                self._followers += 1
                try:
                    self._changed.wait(timeout)
                finally:
                    self._followers -= 1
            missed = min(self._seq - seq, len(self._lines))
            fresh = list(self._lines)[len(self._lines) - missed :] if missed > 0 else []
            return self._seq, fresh
