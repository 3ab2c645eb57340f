"""The counter device's user-space ABI: its ioctl numbers and argument structures.

A header, as FreeBSD's <sys/*io.h> are: data only.  The driver (counter.py)
imports it by name (a driver's directory is on the path while it loads), and
so do programs and tests that talk to /dev/counter; nobody imports the driver
file itself a second time.
"""

import struct

from pykld import _IO, _IOR, _IOW

COUNT = struct.Struct("=Q")  # uint64_t: the count
INTERVAL = struct.Struct("=I")  # uint32_t: milliseconds between ticks, 0 stops the ticker

CIOCGCOUNT = _IOR("C", 0, COUNT.size)  # read the count
CIOCSINTERVAL = _IOW("C", 1, INTERVAL.size)  # set the tick interval
CIOCRESET = _IO("C", 2)  # count from 0 again
