"""pykld's own line discipline, for serial ports published over CUSE (spec §4.4).

A CUSE node is a character device, not a tty: no n_tty sits between the
program and the driver, so every tty ioctl and the read rules reach pykld.
LdiscTty answers them as a UART driver under n_tty would: both termios
families (so isatty() is true), the modem lines (DTR/RTS to the device's
`modem`, CTS/DSR/CD/RI from its set_signals, TIOCMIWAIT), TIOCINQ/TIOCOUTQ,
TCFLSH, breaks to the device's `brk`, TIOCEXCL, and reads by VMIN/VTIME or, with
ICANON, by lines with ERASE/KILL/EOF, input mapping, ECHO and ONLCR.

Simplifications, said here once: the program's writes reach the device at once
(there is no paced TX queue, so TIOCOUTQ is 0 and TCSBRK 1/TCSETSW wait for
nothing); the device's bytes are cooked (mapped, echoed, lined up) when the
program's side looks at them (read, poll, TIOCINQ), not as they cross the wire;
ISIG, IXON flow control and the special characters other than ERASE, KILL,
EOF and EOL are not interpreted.
"""

from __future__ import annotations

import errno
import struct
import time
from collections import deque
from select import POLLIN, POLLOUT, POLLRDNORM, POLLWRNORM

from pykld.kernel.file import OpenFile
from pykld.kernel.sched import curthread, selrecord, sleep, wakeup
from pykld.kernel.uio import Uio
from pykld.kpi.support import copyin, copyout
from pykld.tty import termios as t
from pykld.tty.termios import Termios
from pykld.tty.tty import SerialDevice, Tty

INT = struct.Struct("<i")
WINSIZE = 8  # struct winsize: 4 x u16
SERIAL_STRUCT = 72  # struct serial_struct
PORT_16550A = 4
BREAK_TIME = 0.25  # seconds of a tcsendbreak(fd, 0)
INPUT_LINES = {"cts": t.TIOCM_CTS, "dsr": t.TIOCM_DSR, "cd": t.TIOCM_CD, "ri": t.TIOCM_RI}


class LdiscTty(Tty):
    """A serial port that is its own tty layer: the Tty, with n_tty's rules on top."""

    def __init__(self, device: SerialDevice, name: str) -> None:
        super().__init__(device, name)
        self.exclusive = False
        self.winsize = bytes(WINSIZE)
        self.serial_flags = 0
        self.changes = dict.fromkeys(INPUT_LINES, 0)  # modem-status transitions (TIOCGICOUNT)
        self.modem_changed = object()  # TIOCMIWAIT's sleep channel
        self._cooked = bytearray()  # non-canonical: bytes ready for read
        self._lines: deque[bytes] = deque()  # canonical: complete lines (b"" is an EOF)
        self._line = bytearray()  # canonical: the line being typed
        self._echo = bytearray()  # echo for the device, sent once the tty's mutex is released

    # -- the device's side -------------------------------------------------------------

    def set_signals(self, **lines: bool) -> None:
        with self.mtx:
            changed = [name for name, value in lines.items() if name in self.signals and self.signals[name] != value]
        super().set_signals(**lines)
        if changed:
            with self.mtx:
                for name in changed:
                    self.changes[name] += 1
            wakeup(self.modem_changed)

    # -- the program's side --------------------------------------------------------------

    def open(self, file: OpenFile) -> None:
        with self.mtx:
            if self.exclusive and file.uid != 0:  # CAP_SYS_ADMIN, approximated as root
                raise OSError(errno.EBUSY, f"{self.name} is open for exclusive use (TIOCEXCL)", None)
        super().open(file)

    def close(self, file: OpenFile) -> None:
        super().close(file)
        with self.mtx:
            if not self.opens:
                self.exclusive = False
                self._drop_input()

    def read(self, file: OpenFile, uio: Uio) -> None:
        try:
            with self.mtx:
                if self.termios.lflag & t.ICANON:
                    self._read_line(file, uio)
                else:
                    self._read_raw(file, uio)
        finally:
            self._send_echo()

    def write(self, file: OpenFile, uio: Uio) -> None:
        data = uio.move_in()
        if data:
            self.device.received(self, self._output(data))

    def poll(self, file: OpenFile, events: int) -> int:
        try:
            with self.mtx:
                self._cook()
                revents = events & (POLLOUT | POLLWRNORM)
                if self._readable():
                    revents |= events & (POLLIN | POLLRDNORM)
                elif events & (POLLIN | POLLRDNORM):
                    self._arm_pacer()
                    selrecord(self.sel)
                return revents
        finally:
            self._send_echo()

    def ioctl(self, file: OpenFile, cmd: int, data: bytearray | int) -> int | None:
        arg = data if isinstance(data, int) else 0
        if cmd == t.TCGETS:
            copyout(arg, self.termios.pack()[: t.TERMIOS])
        elif cmd in (t.TCSETS, t.TCSETSW, t.TCSETSF):
            new = self.termios.with_legacy(copyin(arg, t.TERMIOS))
            self.set_termios(new)
            if cmd == t.TCSETSF:
                self.flush(t.TCIFLUSH)
        elif cmd == t.TIOCMGET:
            copyout(arg, INT.pack(self._modem_bits()))
        elif cmd in (t.TIOCMSET, t.TIOCMBIS, t.TIOCMBIC):
            (bits,) = INT.unpack(copyin(arg, INT.size))
            self._set_modem(cmd, bits)
        elif cmd == t.TIOCMIWAIT:
            self._wait_modem(arg)
        elif cmd == t.TIOCGICOUNT:
            with self.mtx:
                counts = [self.changes["cts"], self.changes["dsr"], self.changes["ri"], self.changes["cd"]]
                counts += [0, self.sent]  # rx (the driver does not count what the device is handed), tx
            copyout(arg, struct.pack("<20i", *counts, *[0] * 14))
        elif cmd == t.TIOCINQ:
            try:
                with self.mtx:
                    copyout(arg, INT.pack(self._inq()))
            finally:
                self._send_echo()
        elif cmd == t.TIOCOUTQ:
            copyout(arg, INT.pack(0))  # the program's writes reach the device at once
        elif cmd == t.TCSBRK:
            if arg == 0:
                self._send_break(BREAK_TIME)
        elif cmd == t.TCSBRKP:
            self._send_break(arg / 10 if arg > 0 else BREAK_TIME)
        elif cmd in (t.TIOCSBRK, t.TIOCCBRK):
            self.device.brk(self, cmd == t.TIOCSBRK)
        elif cmd == t.TCXONC:
            if arg not in (t.TCOOFF, t.TCOON, t.TCIOFF, t.TCION):
                raise OSError(errno.EINVAL, f"TCXONC: bad action {arg}", None)
        elif cmd in (t.TIOCEXCL, t.TIOCNXCL):
            with self.mtx:
                self.exclusive = cmd == t.TIOCEXCL
        elif cmd == t.TIOCGEXCL:
            assert isinstance(data, bytearray)
            data[:] = INT.pack(self.exclusive)
        elif cmd == t.TIOCGWINSZ:
            copyout(arg, self.winsize)
        elif cmd == t.TIOCSWINSZ:
            self.winsize = copyin(arg, WINSIZE)
        elif cmd == t.TIOCGSERIAL:
            copyout(arg, _serial_struct(self.serial_flags))
        elif cmd == t.TIOCSSERIAL:
            self.serial_flags = INT.unpack_from(copyin(arg, SERIAL_STRUCT), 16)[0]
        else:
            return super().ioctl(file, cmd, data)  # TCGETS2, TCSETS*2, TCFLSH; else ENOTTY
        return 0

    # -- the tty layer ---------------------------------------------------------------

    def set_termios(self, new: Termios) -> None:
        new = new.normalized()
        canonical_before = self.termios.lflag & t.ICANON
        super().set_termios(new)
        with self.mtx:
            if canonical_before and not new.lflag & t.ICANON:  # what was typed becomes readable
                self._cooked += b"".join(self._lines) + self._line
                self._lines.clear()
                self._line.clear()
            elif new.lflag & t.ICANON and not canonical_before:
                self._line += self._cooked
                self._cooked.clear()

    def flush(self, queue: int) -> None:
        super().flush(queue)
        if queue in (t.TCIFLUSH, t.TCIOFLUSH):
            with self.mtx:
                self._drop_input()

    # -- reading -------------------------------------------------------------------

    def _read_raw(self, file: OpenFile, uio: Uio) -> None:
        """n_tty's non-canonical read: VMIN bytes, VTIME tenths of a second (spec §4.4)."""
        vmin, vtime = self.termios.cc[t.VMIN], self.termios.cc[t.VTIME]
        want = min(vmin, uio.resid)
        self._cook()
        if not vmin and not vtime:  # whatever is there, even nothing, even for O_NONBLOCK
            return self._hand_over(uio)
        if file.nonblock:
            if not self._cooked:
                raise OSError(errno.EAGAIN, "no input", None)
            return self._hand_over(uio)
        # VMIN = 0: one timer from the start; both: an inter-byte timer from the first byte.
        deadline = time.monotonic() + vtime / 10 if vtime and not vmin else None
        while len(self._cooked) < (want if vmin else 1):
            if deadline is not None and time.monotonic() >= deadline:
                break
            had = len(self._cooked)
            self._arm_pacer()
            sleep(self, None if deadline is None else max(deadline - time.monotonic(), 0), lock=self.mtx)
            self._cook()
            if vmin and vtime and len(self._cooked) > had:
                deadline = time.monotonic() + vtime / 10  # each byte restarts the timer
        self._hand_over(uio)

    def _read_line(self, file: OpenFile, uio: Uio) -> None:
        """Canonical: at most one line, once it is complete."""
        self._cook()
        while not self._lines:
            self._arm_pacer()
            sleep(self, lock=self.mtx)  # EAGAIN for O_NONBLOCK
            self._cook()
        line = self._lines.popleft()
        uio.uiomove(line[: uio.resid])
        if len(line) > uio.resid:
            self._lines.appendleft(line[uio.resid:])

    def _hand_over(self, uio: Uio) -> None:
        count = min(len(self._cooked), uio.resid)
        uio.uiomove(bytes(self._cooked[:count]))
        del self._cooked[:count]

    def _readable(self) -> bool:
        """Whether read returns data now (poll's POLLIN): a line, or VMIN bytes when VTIME
        is 0 (n_tty's input_available_p), else one byte."""
        if self.termios.lflag & t.ICANON:
            return bool(self._lines)
        vmin, vtime = self.termios.cc[t.VMIN], self.termios.cc[t.VTIME]
        return len(self._cooked) >= (vmin if vmin and not vtime else 1)

    def _inq(self) -> int:
        self._cook()
        if self.termios.lflag & t.ICANON:
            return sum(len(line) for line in self._lines)
        return len(self._cooked)

    def _cook(self) -> None:
        """Move the bytes that have crossed the wire through the input rules: mapping,
        echo, and the canonical line editing."""
        count = self._arrived()
        if not count:
            return
        raw = bytes(self._out[:count])
        self._consume(count)
        tio = self.termios
        iflag, lflag, cc = tio.iflag, tio.lflag, tio.cc
        canonical, echo = lflag & t.ICANON, lflag & t.ECHO
        for c in raw:
            if iflag & t.ISTRIP:
                c &= 0x7F
            if c == 13:
                if iflag & t.IGNCR:
                    continue
                if iflag & t.ICRNL:
                    c = 10
            elif c == 10 and iflag & t.INLCR:
                c = 13
            if not canonical:
                self._cooked.append(c)
                if echo:
                    self._echo.append(c)
                continue
            if cc[t.VERASE] and c == cc[t.VERASE]:
                if self._line:
                    self._line.pop()
                    if echo:
                        self._echo += b"\b \b" if lflag & t.ECHOE else bytes([c])
            elif cc[t.VKILL] and c == cc[t.VKILL]:
                self._line.clear()
                if echo:
                    self._echo += bytes([c]) + (b"\n" if lflag & t.ECHOK else b"")
            elif cc[t.VEOF] and c == cc[t.VEOF]:
                self._lines.append(bytes(self._line))  # the EOF character itself is not read
                self._line.clear()
            else:
                self._line.append(c)
                if echo:
                    self._echo.append(c)
                if c == 10 or (cc[t.VEOL] and c == cc[t.VEOL]):
                    self._lines.append(bytes(self._line))
                    self._line.clear()

    def _drop_input(self) -> None:
        self._cooked.clear()
        self._lines.clear()
        self._line.clear()

    def _send_echo(self) -> None:
        """The echo goes to the device as the program's own output would (outside the
        mutex: the device answers with send())."""
        with self.mtx:
            echo, self._echo = bytes(self._echo), bytearray()
        if echo:
            self.device.received(self, self._output(echo))

    def _output(self, data: bytes) -> bytes:
        oflag = self.termios.oflag
        if oflag & t.OPOST and oflag & t.ONLCR:
            return data.replace(b"\n", b"\r\n")
        return data

    # -- modem lines and break ---------------------------------------------------------

    def _modem_bits(self) -> int:
        with self.mtx:
            bits = (t.TIOCM_DTR if self.dtr else 0) | (t.TIOCM_RTS if self.rts else 0)
            return bits | sum(bit for name, bit in INPUT_LINES.items() if self.signals[name])

    def _set_modem(self, cmd: int, bits: int) -> None:
        dtr, rts = self.dtr, self.rts
        if cmd == t.TIOCMSET:
            dtr, rts = bool(bits & t.TIOCM_DTR), bool(bits & t.TIOCM_RTS)
        else:
            on = cmd == t.TIOCMBIS
            dtr = on if bits & t.TIOCM_DTR else dtr
            rts = on if bits & t.TIOCM_RTS else rts
        self._set_outputs(dtr, rts)

    def _wait_modem(self, mask: int) -> None:
        """TIOCMIWAIT: sleep until one of the masked inputs changes."""
        watched = [name for name, bit in INPUT_LINES.items() if mask & bit]
        with self.mtx:
            start = {name: self.changes[name] for name in watched}
            while all(self.changes[name] == count for name, count in start.items()):
                _sleep_blocking(self.modem_changed, None, self.mtx)

    def _send_break(self, seconds: float) -> None:
        """A break of `seconds` (tcsendbreak), which the caller waits out; a signal ends it early."""
        self.device.brk(self, True)
        try:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                _sleep_blocking(self, left)
        finally:
            self.device.brk(self, False)


def _sleep_blocking(chan: object, timeout: float | None, lock: object = None) -> bool:
    """sleep(9) that waits for an O_NONBLOCK caller too, as a UART driver's
    TIOCMIWAIT and break do (serial_core ignores O_NONBLOCK there)."""
    td = curthread()
    saved = td.nonblock if td is not None else False
    if td is not None:
        td.nonblock = False
    try:
        return sleep(chan, timeout, lock=lock)
    finally:
        if td is not None:
            td.nonblock = saved


def _serial_struct(flags: int) -> bytes:
    """A plausible struct serial_struct: a 16550A with a 115200 baud base."""
    data = bytearray(SERIAL_STRUCT)
    struct.pack_into("<iiIiiiii", data, 0, PORT_16550A, 0, 0, 0, flags, 16, 0, 115200)
    return bytes(data)
