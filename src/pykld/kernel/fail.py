"""fail(9): fault points on devices, to test the programs that use them.

FreeBSD's fail(9) puts named points in kernel code and lets a sysctl say what
each does ("2*return(5)": the next two passes return EIO).  Here the points
are fixed, one per device operation (open, read, write, ioctl, poll, close),
and a rule set on a device says what happens there:

    error ERRNO   the caller gets ERRNO; the driver is not called (close: after
                  the driver's close, as close(2) fails with the descriptor gone)
    delay SECS    the operation waits first; a signal (EINTR) or a destroy ends the wait
    short N       read, write: at most N bytes reach the driver, a short transfer
    corrupt N     read, write, ioctl: N bytes of the data flipped (XOR 0xff) at
                  positions the rule's seeded generator picks; ioctl corrupts what
                  goes out to the caller when the command copies out, else what goes in

and when: after `after` matching calls, at most `times` times (None: every
time), each with probability `prob` drawn from random.Random(seed), so a run
repeats.  An ioctl rule may match only one command (`cmd`).  A poll that gets
an error sees POLLERR, as a poll whose driver crashed does.

Rules live on the cdev, so they go with it when its module unloads.  Each
firing is counted (the device's `injected` counter) and said in dmesg.  The
dispatch in file.py pays one truth test of an empty list when no rule is set.
"""

from __future__ import annotations

import errno
import itertools
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pykld.kernel.sched import Thread

if TYPE_CHECKING:
    from pykld.kernel.devfs import Cdev
    from pykld.kernel.file import OpenFile

OPS = ("open", "read", "write", "ioctl", "poll", "close")
# action -> the operations it makes sense on
ACTIONS: dict[str, tuple[str, ...]] = {
    "error": OPS,
    "delay": OPS,
    "short": ("read", "write"),
    "corrupt": ("read", "write", "ioctl"),
}
_ids = itertools.count(1)


def _errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


@dataclass(eq=False)
class FailRule:
    device: str  # the cdev's name ("rustmodule", "bus/i2c-1")
    op: str
    action: str
    value: float  # the errno, the seconds, or the byte count of the action
    after: int = 0
    times: int | None = None
    prob: float | None = None
    seed: int = 0
    cmd: int | None = None  # ioctl only: the one command this rule matches
    id: int = field(default_factory=lambda: next(_ids))
    calls: int = 0  # matching calls seen
    fired: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        why = check(self)
        if why:
            raise OSError(errno.EINVAL, f"fail point {self.device} {self.op}: {why}", None)
        self._rng = random.Random(self.seed)

    def describe(self) -> str:
        """One line, as `pykld fail -l` prints it and `pykld fail` takes it back."""
        value = _errno_name(int(self.value)) if self.action == "error" else f"{self.value:g}"
        words = [self.device, self.op, self.action, value]
        if self.cmd is not None:
            words.append(f"--cmd {self.cmd:#x}")
        if self.after:
            words.append(f"--after {self.after}")
        if self.times is not None:
            words.append(f"--times {self.times}")
        if self.prob is not None:
            words.append(f"--prob {self.prob:g} --seed {self.seed}")
        return " ".join(words) + f"  (calls {self.calls}, fired {self.fired})"

    def matches(self, op: str, cmd: int | None) -> bool:
        return self.op == op and (self.cmd is None or self.cmd == cmd)

    def decide(self) -> bool:
        """Count one matching call; True when the rule fires on it."""
        with self._lock:
            self.calls += 1
            if self.calls <= self.after or (self.times is not None and self.fired >= self.times):
                return False
            if self.prob is not None and self._rng.random() >= self.prob:
                return False
            self.fired += 1
            return True

    def corrupt(self, data: bytes | bytearray | memoryview) -> bytes:
        """`data` with `value` of its bytes flipped (all of them when it is shorter)."""
        out = bytearray(data)
        if not out:
            return bytes(out)
        with self._lock:
            spots = self._rng.sample(range(len(out)), min(int(self.value), len(out)))
        for spot in spots:
            out[spot] ^= 0xFF
        return bytes(out)


def check(rule: FailRule) -> str | None:
    """Why `rule` cannot be set, or None."""
    if rule.op not in OPS:
        return f"unknown operation {rule.op!r}; one of {', '.join(OPS)}"
    if rule.action not in ACTIONS:
        return f"unknown action {rule.action!r}; one of {', '.join(ACTIONS)}"
    if rule.op not in ACTIONS[rule.action]:
        return f"{rule.action} applies to {', '.join(ACTIONS[rule.action])}, not {rule.op}"
    if rule.action == "error" and not (isinstance(rule.value, int) and rule.value > 0):
        return f"error needs a positive errno, not {rule.value!r}"
    if rule.action in ("short", "corrupt") and not (isinstance(rule.value, int) and rule.value >= 0):
        return f"{rule.action} needs a byte count, not {rule.value!r}"
    if rule.action == "delay" and not 0 <= rule.value <= 3600:
        return f"delay needs 0 to 3600 seconds, not {rule.value!r}"
    if rule.cmd is not None and rule.op != "ioctl":
        return "a command filter is for ioctl rules"
    if rule.after < 0 or (rule.times is not None and rule.times < 0):
        return "after and times must not be negative"
    if rule.prob is not None and not 0 <= rule.prob <= 1:
        return f"probability {rule.prob!r} is not between 0 and 1"
    return None


def fire(file: OpenFile, op: str, td: Thread | None, cmd: int | None = None) -> FailRule | None:
    """The fault point of `op` on `file`'s device.  An error rule raises its errno, a
    delay waits; a short or corrupt rule that fires is returned for the caller to apply."""
    cdev = file.cdev
    for rule in list(cdev.failpoints):
        if rule.matches(op, cmd) and rule.decide():
            break
    else:
        return None
    cdev.stats.injected += 1
    what = f"{op}" if cmd is None else f"ioctl {cmd:#x}"
    file.kernel.printf("fail", f"{cdev.path} {what}: injected {rule.action} "
                       f"{_errno_name(int(rule.value)) if rule.action == 'error' else f'{rule.value:g}'} "
                       f"(rule {rule.id}, firing {rule.fired})")
    if rule.action == "error":
        raise OSError(int(rule.value), f"{cdev.path}: {op} failed (injected fault)", None)
    if rule.action == "delay":
        _pause(td or Thread(), rule.value)
        return None
    return rule


def _pause(td: Thread, seconds: float) -> None:
    """Wait `seconds`; an interrupt of the caller (a signal, a destroy) ends it with its errno."""
    wait = threading.Event()
    td._wait = wait
    try:
        if not td.interrupted:
            if td.before_block is not None:
                td.before_block()  # let the transport serve others meanwhile
            wait.wait(seconds)
    finally:
        td._wait = None
    if td.interrupted:
        raise OSError(td.interrupted, "interrupted during an injected delay", None)


def add(cdev: Cdev, rule: FailRule) -> FailRule:
    cdev.failpoints = [*cdev.failpoints, rule]  # a new list: dispatch reads it without a lock
    return rule


def clear(cdev: Cdev, op: str | None = None) -> int:
    """Remove the device's rules (for one operation only, if given); returns how many."""
    kept = [r for r in cdev.failpoints if op is not None and r.op != op]
    removed = len(cdev.failpoints) - len(kept)
    cdev.failpoints = kept
    return removed


_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--cmd": ("cmd", lambda s: int(s, 0)), "--after": ("after", int), "--times": ("times", int),
    "--prob": ("prob", float), "--seed": ("seed", int)}


def parse(words: str | list[str]) -> dict[str, Any]:
    """A rule as `pykld fail` and the pytest fixture take it, as Kernel.fail's arguments:

        DEVICE OP ACTION [VALUE] [--cmd CMD] [--after N] [--times M] [--prob P] [--seed S]

    VALUE: an errno name or number (error), seconds (delay), bytes (short; corrupt, 1 if
    left out).  OSError(EINVAL) says what is wrong."""
    tokens = words.split() if isinstance(words, str) else list(words)
    positional = []
    rule: dict[str, Any] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token in _OPTIONS:
            if index + 1 == len(tokens):
                raise OSError(errno.EINVAL, f"fail: {token} needs a value", None)
            key, convert = _OPTIONS[token]
            try:
                rule[key] = convert(tokens[index + 1])
            except ValueError:
                raise OSError(errno.EINVAL, f"fail: {token}: not a number: {tokens[index + 1]!r}", None) from None
            index += 2
        elif token.startswith("--"):
            raise OSError(errno.EINVAL, f"fail: unknown option {token}; one of {', '.join(_OPTIONS)}", None)
        else:
            positional.append(token)
            index += 1
    if len(positional) == 3 and positional[2] == "corrupt":
        positional.append("1")
    if len(positional) != 4:
        raise OSError(errno.EINVAL, "fail: expected DEVICE OP ACTION VALUE [--cmd CMD] [--after N] [--times M] "
                      f"[--prob P] [--seed S], got {' '.join(tokens)!r}", None)
    device, op, action, text = positional
    rule.update(device=device, op=op, action=action, value=_value(action, text))
    return rule


def _value(action: str, text: str) -> float:
    try:
        if action == "error":
            if text.upper() in errno.__dict__ and text.upper().startswith("E"):
                return int(errno.__dict__[text.upper()])
            return int(text, 0)
        if action == "delay":
            return float(text)
        return int(text, 0)
    except ValueError:
        raise OSError(errno.EINVAL, f"fail: {action}: bad value {text!r}", None) from None
