"""pykld.tty: serial ports for emulated peripherals (FreeBSD's tty(4) and ttydevsw split).

    from pykld.tty import LineSettings, SerialDevice, make_tty

A peripheral is a SerialDevice; make_tty publishes it as /dev/ttyNAME, over a
pseudo-terminal by default so that programs get the host's real termios, or
with transport="cuse" as a character device with pykld's own line discipline.
"""

from pykld.tty.termios import LineSettings, Termios
from pykld.tty.tty import SerialDevice, Tty, make_tty

__all__ = ["LineSettings", "SerialDevice", "Termios", "Tty", "make_tty"]
