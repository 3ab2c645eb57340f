"""modem: a Hayes (V.250) AT modem on /dev/ttyACM0, as a USB modem appears.

    $ pykld load examples/modem.py
    $ python3 -c 'import serial; p = serial.Serial("/dev/ttyACM0", 115200, timeout=1); \\
          p.write(b"ATE0\\r"); print(p.read_until(b"OK\\r\\n")); p.write(b"ATI\\r"); print(p.read_until(b"OK\\r\\n"))'

Commands (a line starts with AT, ends with CR or LF; several may follow one
AT, as in ATE0I): E0/E1 echo, I identification, Z reset, H hang up, D<number>
dial, O back online, &C1 (CD follows the carrier), &D2 (a DTR drop hangs up),
+CGMI/+CGMM/+CGMR/+CGSN identity, +CSQ signal quality.  Answers are verbose
(\\r\\nOK\\r\\n, \\r\\nERROR\\r\\n); characters before an AT are ignored.

Dialling connects after dev.modem.0.dial_ms unless dev.modem.0.answer=0 (then
NO CARRIER).  Online, the far end echoes what it is sent; +++ with a guard time
of silence on both sides (dev.modem.0.guard_ms, 1000 as S12=50) returns to
command mode.  CD follows the connection and RI pulses with each RING
(dev.modem.0.ring=1): a program sees those lines only on a transport that
carries modem lines; over a pty the AT dialogue is what it gets.
"""

import errno
import time

from pykld import Module, Mutex, callout_drain, callout_init_mtx, callout_reset, callout_stop, sysctl_add
from pykld.tty import LineSettings, SerialDevice, Tty, make_tty

IDENTITY = {"+CGMI": "pykld", "+CGMM": "pykld virtual modem", "+CGMR": "1.0", "+CGSN": "356938035643809"}
MAX_LINE = 256  # characters of a command line; a longer one is an ERROR, as on real modems


class Modem(SerialDevice):
    line = LineSettings(115200)
    paced = True

    def __init__(self) -> None:
        self.mtx = Mutex("modem")
        self.tty: Tty | None = None
        self.echo = True
        self.line_buf = bytearray()
        self.online = False  # data mode: bytes go to the far end
        self.connected = False
        self.answer = True  # the far end picks up
        self.dial_ms, self.guard_ms = 300, 1000
        self.last_rx = 0.0
        self.pluses = 0  # escape characters seen after a guard time of silence
        self.dialler = callout_init_mtx(self.mtx)
        self.guard = callout_init_mtx(self.mtx)

    def say(self, *lines: str) -> None:
        assert self.tty is not None
        self.tty.send(b"".join(f"\r\n{text}\r\n".encode() for text in lines))

    def reset(self) -> None:
        self.echo, self.online, self.line_buf, self.pluses = True, False, bytearray(), 0
        self.hang_up()

    def hang_up(self) -> None:
        self.connected = self.online = False
        callout_stop(self.dialler)
        if self.tty is not None:
            self.tty.set_signals(cd=False)

    # -- the port ------------------------------------------------------------------

    def received(self, tty: Tty, data: bytes) -> None:
        with self.mtx:
            now = time.monotonic()
            for byte in data:
                if self.online:
                    self.data_byte(byte, now)
                else:
                    self.command_byte(byte)
                now = self.last_rx = time.monotonic()

    def modem(self, tty: Tty, dtr: bool, rts: bool) -> None:
        with self.mtx:
            if not dtr and self.connected:  # &D2: a DTR drop hangs up
                self.hang_up()

    def close(self, tty: Tty) -> None:
        with self.mtx:
            callout_stop(self.guard)
            self.line_buf.clear()

    # -- command mode --------------------------------------------------------------

    def command_byte(self, byte: int) -> None:
        if self.echo:
            self.tty.send(bytes([byte]))  # type: ignore[union-attr]
        if byte in (8, 127):  # S5 backspace
            del self.line_buf[-1:]
        elif byte in (13, 10):  # S3 (and LF)
            line, self.line_buf = self.line_buf.decode("ascii", "replace"), bytearray()
            start = line.upper().find("AT")
            if start >= 0:
                self.execute(line[start + 2 :].strip())
        elif len(self.line_buf) < MAX_LINE:
            self.line_buf.append(byte)
        else:
            self.line_buf.clear()
            self.say("ERROR")

    def execute(self, commands: str) -> None:
        """One command line after its AT; OK when every command in it succeeds."""
        rest = commands
        while rest:
            head = rest[0].upper()
            if rest[:1] == "+":
                name = rest.split("=")[0].split("?")[0].upper()
                if name in IDENTITY:
                    self.say(IDENTITY[name])
                elif name == "+CSQ":
                    self.say("+CSQ: 20,99")
                else:
                    return self.say("ERROR")
                rest = rest[len(name) :]
                continue
            if head == "D":
                return self.dial(rest[1:].strip())
            digits = ""
            rest = rest[1:]
            if head == "&":
                if not rest:
                    return self.say("ERROR")
                head, rest = "&" + rest[0].upper(), rest[1:]
            while rest[:1].isdigit():
                digits, rest = digits + rest[0], rest[1:]
            value = int(digits) if digits else 0
            if head == "E" and value in (0, 1):
                self.echo = bool(value)
            elif head == "I":
                self.say(IDENTITY["+CGMM"], f"{IDENTITY['+CGMI']} {IDENTITY['+CGMR']}")
            elif head == "Z":
                self.reset()
            elif head == "H" and value == 0:
                self.hang_up()
            elif head == "O":
                if not self.connected:
                    return self.say("NO CARRIER")
                self.online = True
                return self.say("CONNECT")
            elif head in ("&C", "&D", "V", "Q", "X") and value <= 4:
                pass  # accepted: this modem always behaves as &C1 &D2 V1 Q0
            else:
                return self.say("ERROR")
        self.say("OK")

    def dial(self, number: str) -> None:
        digits = "".join(c for c in number if c.isdigit() or c in "*#+")
        if not digits:
            return self.say("ERROR")
        callout_reset(self.dialler, self.dial_ms / 1000, self.dialled)
        return None

    def dialled(self) -> None:
        if not self.answer:
            return self.say("NO CARRIER")
        self.connected = self.online = True
        self.tty.set_signals(cd=True)  # type: ignore[union-attr]
        assert self.tty is not None
        self.say(f"CONNECT {self.tty.line.speed}")
        return None

    # -- data mode -------------------------------------------------------------------

    def data_byte(self, byte: int, now: float) -> None:
        guard = self.guard_ms / 1000
        if byte == ord("+") and self.pluses < 3 and (self.pluses or now - self.last_rx >= guard):
            self.pluses += 1
            if self.pluses == 3:
                callout_reset(self.guard, guard, self.escaped)
            return
        self.far_end(b"+" * self.pluses + bytes([byte]))  # not an escape after all: they were data
        self.pluses = 0
        callout_stop(self.guard)

    def escaped(self) -> None:
        """+++ and a guard time of silence: back to command mode, still connected."""
        self.pluses = 0
        self.online = False
        self.say("OK")

    def far_end(self, data: bytes) -> None:
        self.tty.send(data)  # type: ignore[union-attr]  # the far end echoes


class ModemModule(Module):
    name = "modem"

    def load(self) -> None:
        self.modem = m = Modem()
        m.tty = make_tty(m, "ttyACM0", mode=0o666)
        sysctl_add("dev.modem.0.answer", "bool", lambda: m.answer, self._set("answer"), "the far end picks up")
        sysctl_add("dev.modem.0.dial_ms", "uint", lambda: m.dial_ms, self._set("dial_ms"), "ms until CONNECT")
        sysctl_add("dev.modem.0.guard_ms", "uint", lambda: m.guard_ms, self._set("guard_ms"),
                   "+++ escape guard time, ms")
        sysctl_add("dev.modem.0.connected", "bool", lambda: m.connected, descr="a call is up (the CD line)")
        sysctl_add("dev.modem.0.ring", "bool", lambda: False, self._ring, "set to 1: the phone rings once")

    def _set(self, name: str):
        def set_value(value: object) -> None:
            if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= 60000:
                raise OSError(errno.EINVAL, f"{name} must be within 0..60000")
            with self.modem.mtx:
                setattr(self.modem, name, value)
        return set_value

    def _ring(self, value: bool) -> None:
        m = self.modem
        if value and m.tty is not None:
            with m.mtx:
                m.tty.set_signals(ri=True)
                m.say("RING")
                m.tty.set_signals(ri=False)

    def unload(self) -> None:
        callout_drain(self.modem.dialler)
        callout_drain(self.modem.guard)
        assert self.modem.tty is not None and self.modem.tty.cdev is not None
        self.modem.tty.cdev.destroy()
