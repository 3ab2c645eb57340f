"""The Linux termios ABI a serial driver is told about, and the line settings it means.

A program sets its port with tcsetattr (TCSETS*, struct termios, 36 bytes) or,
for custom speeds, TCSETS2 (struct termios2, 44 bytes, with c_ispeed/c_ospeed).
The tty layer stores termios2 and tells the driver only what a UART cares
about: a LineSettings (speed, character size, parity, stop bits, flow control).
Numbers from asm-generic/termbits.h (spec §4.1).
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

TERMIOS2 = struct.Struct("<4IB19B2I")  # c_iflag c_oflag c_cflag c_lflag c_line c_cc[19] c_ispeed c_ospeed
NCCS = 19

TCGETS, TCSETS, TCSETSW, TCSETSF = 0x5401, 0x5402, 0x5403, 0x5404
TCSBRK, TCXONC, TCFLSH = 0x5409, 0x540A, 0x540B
TCGETS2, TCSETS2, TCSETSW2, TCSETSF2 = 0x802C542A, 0x402C542B, 0x402C542C, 0x402C542D
TCIFLUSH, TCOFLUSH, TCIOFLUSH = 0, 1, 2
TCOOFF, TCOON, TCIOFF, TCION = 0, 1, 2, 3
TERMIOS = 36  # bytes of the legacy struct termios: termios2 without c_ispeed/c_ospeed
# The tty ioctls a line discipline answers (asm-generic/ioctls.h, spec §4.1)
TIOCEXCL, TIOCNXCL, TIOCOUTQ, TIOCGWINSZ, TIOCSWINSZ = 0x540C, 0x540D, 0x5411, 0x5413, 0x5414
TIOCMGET, TIOCMBIS, TIOCMBIC, TIOCMSET, TIOCINQ = 0x5415, 0x5416, 0x5417, 0x5418, 0x541B
TIOCGSERIAL, TIOCSSERIAL, TCSBRKP, TIOCSBRK, TIOCCBRK = 0x541E, 0x541F, 0x5425, 0x5427, 0x5428
TIOCGEXCL, TIOCMIWAIT, TIOCGICOUNT = 0x80045440, 0x545C, 0x545D
# Modem lines (TIOCM_*)
TIOCM_DTR, TIOCM_RTS, TIOCM_CTS, TIOCM_CD, TIOCM_RI, TIOCM_DSR = 0x2, 0x4, 0x20, 0x40, 0x80, 0x100
# c_cc indices
VINTR, VQUIT, VERASE, VKILL, VEOF, VTIME, VMIN, VEOL = 0, 1, 2, 3, 4, 5, 6, 11

# c_cflag
CBAUD, BOTHER, CSIZE, CSTOPB, CREAD, PARENB, PARODD = 0x100F, 0x1000, 0x30, 0x40, 0x80, 0x100, 0x200
HUPCL, CLOCAL, CIBAUD, CMSPAR, CRTSCTS = 0x400, 0x800, 0x100F0000, 0x40000000, 0x80000000
CS5, CS6, CS7, CS8 = 0x00, 0x10, 0x20, 0x30
# c_iflag / c_oflag / c_lflag bits the defaults use
INLCR, IGNCR, ICRNL, ISTRIP, IXON, IXOFF = 0x40, 0x80, 0x100, 0x20, 0x400, 0x1000
OPOST, ONLCR = 0x1, 0x4
ISIG, ICANON, ECHO, ECHOE, ECHOK, ECHOCTL, ECHOKE, IEXTEN = 0x1, 0x2, 0x8, 0x10, 0x20, 0x200, 0x800, 0x8000

# The Bnnn codes of CBAUD, in order (B0..B38400, then BOTHER|1..BOTHER|15).
_SPEEDS_LOW = (0, 50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400)
_SPEEDS_HIGH = (57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000, 1500000,
                2000000, 2500000, 3000000, 3500000, 4000000)
SPEED_OF_CODE = {**dict(enumerate(_SPEEDS_LOW)), **{BOTHER | (i + 1): s for i, s in enumerate(_SPEEDS_HIGH)}}
CODE_OF_SPEED = {speed: code for code, speed in SPEED_OF_CODE.items()}

# tty_std_termios, with serial_core's cflag (spec §4.1): what a UART port starts with.
STD_CC = bytes.fromhex("031c7f15040001001113" "1a00120f171600") + bytes(2)


@dataclass(frozen=True)
class LineSettings:
    """What a UART is told: the framing of each character and the flow control."""

    speed: int = 9600  # bits per second; 0 is B0, "hang up"
    bits: int = 8  # 5..8
    parity: str = "N"  # N, E, O, M (mark), S (space)
    stopbits: int = 1  # 1 or 2
    rtscts: bool = False
    xonxoff: bool = False

    def __str__(self) -> str:
        flow = "".join((" rtscts" if self.rtscts else "", " xonxoff" if self.xonxoff else ""))
        return f"{self.speed} {self.bits}{self.parity}{self.stopbits}{flow}"

    @property
    def char_bits(self) -> int:
        """Bits on the wire per character: start, data, parity, stop."""
        return 1 + self.bits + (self.parity != "N") + self.stopbits

    @property
    def byte_time(self) -> float:
        """Seconds one character takes on the wire (0 at B0: nothing is sent)."""
        return self.char_bits / self.speed if self.speed else 0.0


@dataclass(frozen=True)
class Termios:
    """struct termios2, as the kernel keeps it for a port."""

    iflag: int
    oflag: int
    cflag: int
    lflag: int
    line: int
    cc: bytes
    ispeed: int
    ospeed: int

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> Termios:
        if len(data) < TERMIOS2.size:
            raise OSError(errno.EFAULT, f"termios2 needs {TERMIOS2.size} bytes, got {len(data)}", None)
        f = TERMIOS2.unpack_from(data)
        return cls(f[0], f[1], f[2], f[3], f[4], bytes(f[5 : 5 + NCCS]), f[-2], f[-1])

    def pack(self) -> bytes:
        return TERMIOS2.pack(self.iflag, self.oflag, self.cflag, self.lflag, self.line, *self.cc[:NCCS],
                             self.ispeed, self.ospeed)

    @classmethod
    def for_line(cls, line: LineSettings) -> Termios:
        """A UART's initial termios (serial_core: Bspeed|CS8|CREAD|HUPCL|CLOCAL), for `line`."""
        cflag = speed_code(line.speed) | CREAD | HUPCL | CLOCAL | (line.bits - 5) << 4
        cflag |= CSTOPB if line.stopbits == 2 else 0
        cflag |= {"N": 0, "E": PARENB, "O": PARENB | PARODD, "M": PARENB | PARODD | CMSPAR,
                  "S": PARENB | CMSPAR}[line.parity]
        cflag |= CRTSCTS if line.rtscts else 0
        iflag = ICRNL | IXON | (IXOFF if line.xonxoff else 0)
        lflag = ISIG | ICANON | ECHO | ECHOE | ECHOK | ECHOCTL | ECHOKE | IEXTEN
        return cls(iflag, OPOST | ONLCR, cflag, lflag, 0, STD_CC, line.speed, line.speed)

    def line_settings(self) -> LineSettings:
        """What these termios ask of the UART.  The speed is c_ospeed under BOTHER,
        else the Bnnn code's (the kernel's tty_termios_baud_rate)."""
        code = self.cflag & CBAUD
        speed = self.ospeed if code == BOTHER else SPEED_OF_CODE.get(code, self.ospeed)
        parity = "N"
        if self.cflag & PARENB:
            odd = bool(self.cflag & PARODD)
            parity = ("M" if odd else "S") if self.cflag & CMSPAR else ("O" if odd else "E")
        return LineSettings(speed=speed, bits=5 + ((self.cflag & CSIZE) >> 4), parity=parity,
                            stopbits=2 if self.cflag & CSTOPB else 1, rtscts=bool(self.cflag & CRTSCTS),
                            xonxoff=bool(self.iflag & IXOFF))

    def with_legacy(self, data: bytes | bytearray | memoryview) -> Termios:
        """These settings changed by a legacy struct termios (TCSETS*): the speeds
        follow its CBAUD and CIBAUD, as the kernel derives them."""
        if len(data) < TERMIOS:
            raise OSError(errno.EFAULT, f"termios needs {TERMIOS} bytes, got {len(data)}", None)
        return Termios.unpack(bytes(data[:TERMIOS]) + struct.pack("<2I", self.ispeed, self.ospeed)).normalized()

    def normalized(self) -> Termios:
        """c_ospeed and c_ispeed as CBAUD and CIBAUD say, unless BOTHER (then they are the
        caller's); an input speed code of 0 means "as the output" (tty_termios_input_baud_rate)."""
        code, icode = self.cflag & CBAUD, (self.cflag & CIBAUD) >> 16
        ospeed = self.ospeed if code == BOTHER else SPEED_OF_CODE.get(code, self.ospeed)
        ispeed = ospeed if icode == 0 else self.ispeed if icode == BOTHER else SPEED_OF_CODE.get(icode, self.ispeed)
        return Termios(self.iflag, self.oflag, self.cflag, self.lflag, self.line, self.cc, ispeed, ospeed)

    def with_speed(self, speed: int) -> Termios:
        """The same settings at another speed, both directions."""
        cflag = (self.cflag & ~(CBAUD | CIBAUD)) | speed_code(speed)
        return Termios(self.iflag, self.oflag, cflag, self.lflag, self.line, self.cc, speed, speed)


def speed_code(speed: int) -> int:
    """The Bnnn code of a speed, BOTHER for one without."""
    return CODE_OF_SPEED.get(speed, BOTHER)
