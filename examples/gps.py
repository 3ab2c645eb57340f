"""gps: an NMEA-0183 GPS receiver on /dev/ttyGPS0, 9600 8N1 as u-blox ships it.

Once a second it sends RMC, GGA, GSA and GSV sentences with correct checksums
for a position, speed, course, fix quality and satellite count set by sysctl:

    $ pykld load examples/gps.py
    $ pykld sysctl dev.gps.0.latitude=48.1173 dev.gps.0.longitude=11.516667
    $ python3 -c 'import serial; print(serial.Serial("/dev/ttyGPS0", 9600, timeout=2).readline())'
    b'$GPRMC,123519.00,A,4807.0380,N,01131.0000,E,0.0,0.0,011226,,,A*..\\r\\n'
    $ stty -F /dev/ttyGPS0 4800        # the receiver follows, as one told to change speed does

dev.gps.0.utc pins the clock ("2026-12-01T12:35:19"; empty: the host's).  The
receiver ignores what it is sent (consumers write vendor probes at it).  A
program that stops reading loses whole seconds, never half a sentence:
dev.gps.0.overruns counts the cycles that found no room.
"""

import errno
from datetime import UTC, datetime

from pykld import Module, Mutex, callout_drain, callout_init_mtx, callout_reset, callout_stop, sysctl_add
from pykld.tty import LineSettings, SerialDevice, Tty, make_tty

SPEEDS = (4800, 9600, 19200, 38400, 57600, 115200, 230400)  # what the receiver's UART can be set to
PRNS = (2, 5, 7, 10, 13, 15, 18, 20, 24, 26, 29, 31)  # the satellites it tracks, in order
MAX_SATELLITES = len(PRNS)


def checksum(body: str) -> str:
    """The XOR of every character between '$' and '*', as two uppercase hex digits."""
    value = 0
    for char in body.encode("ascii"):
        value ^= char
    return f"{value:02X}"


def sentence(body: str) -> bytes:
    return f"${body}*{checksum(body)}\r\n".encode("ascii")


def coordinate(degrees: float, width: int, hemispheres: str) -> tuple[str, str]:
    """ddmm.mmmm (dddmm.mmmm for longitude) and N/S (E/W)."""
    ten_thousandths = round(abs(degrees) * 60 * 10000)  # rounded once, so 59.99999' never prints as 60'
    whole, minutes = divmod(ten_thousandths, 60 * 10000)
    return f"{whole:0{width}d}{minutes // 10000:02d}.{minutes % 10000:04d}", hemispheres[degrees < 0]


class Receiver(SerialDevice):
    line = LineSettings(9600)

    def __init__(self) -> None:
        self.mtx = Mutex("gps")
        self.latitude, self.longitude, self.altitude = 48.1173, 11.516667, 545.4
        self.speed, self.course = 0.0, 0.0  # knots, degrees true
        self.fix = 1  # GGA quality: 0 none, 1 GPS, 2 DGPS
        self.satellites = 8
        self.utc = ""  # pinned time, ISO 8601; empty: the host's clock
        self.overruns = 0
        self.tty: Tty | None = None
        self.ticker = callout_init_mtx(self.mtx)

    # -- the sentences ---------------------------------------------------------------

    def now(self) -> datetime:
        if self.utc:
            return datetime.fromisoformat(self.utc).replace(tzinfo=UTC)
        return datetime.now(UTC)

    def cycle(self) -> bytes:
        """One second's sentences: RMC first, which gives consumers the date."""
        when = self.now()
        hms = when.strftime("%H%M%S") + f".{when.microsecond // 10000:02d}"
        fixed = self.fix > 0 and self.satellites >= 3
        lat, ns = coordinate(self.latitude, 2, "NS") if fixed else ("", "")
        lon, ew = coordinate(self.longitude, 3, "EW") if fixed else ("", "")
        used = PRNS[: self.satellites] if fixed else ()
        mode = ("D" if self.fix == 2 else "A") if fixed else "N"
        rmc = (f"GPRMC,{hms},{'A' if fixed else 'V'},{lat},{ns},{lon},{ew},"
               + (f"{self.speed:.1f},{self.course:.1f}" if fixed else ",") + f",{when:%d%m%y},,,{mode}")
        gga = (f"GPGGA,{hms},{lat},{ns},{lon},{ew},{self.fix if fixed else 0},{len(used):02d},"
               + (f"1.0,{self.altitude:.1f},M,46.9,M,," if fixed else ",,M,,M,,"))
        prns = [f"{p:02d}" for p in used] + [""] * (12 - len(used))
        gsa = f"GPGSA,A,{3 if fixed else 1},{','.join(prns)}," + ("1.8,1.0,1.5" if fixed else ",,")
        return b"".join([sentence(rmc), sentence(gga), sentence(gsa), *self.gsv()])

    def gsv(self) -> list[bytes]:
        """Satellites in view, four to a sentence."""
        view = PRNS[: self.satellites]
        total = max(1, (len(view) + 3) // 4)
        out = []
        for number in range(total):
            group = view[number * 4 : number * 4 + 4]
            fields = "".join(f",{p:02d},{20 + 7 * i % 60:02d},{(37 * p) % 360:03d},{30 + i % 15:02d}"
                             for i, p in enumerate(group, start=number * 4))
            out.append(sentence(f"GPGSV,{total},{number + 1},{len(view):02d}{fields}"))
        return out

    def tick(self) -> None:
        tty = self.tty
        if tty is not None and tty.is_open:
            burst = self.cycle()
            if tty.room() >= len(burst):
                tty.send(burst)
            else:
                self.overruns += 1  # the program is not reading: this second is lost, whole
        callout_reset(self.ticker, 1.0, self.tick)

    # -- the port ------------------------------------------------------------------

    def open(self, tty: Tty) -> None:
        with self.mtx:
            callout_reset(self.ticker, 0.0, self.tick)  # the first second starts now

    def close(self, tty: Tty) -> None:
        with self.mtx:
            callout_stop(self.ticker)

    def param(self, tty: Tty, line: LineSettings) -> None:
        if line.speed and line.speed not in SPEEDS:
            raise OSError(errno.EINVAL, f"the receiver has no {line.speed} baud (it has {SPEEDS})")


class GpsModule(Module):
    name = "gps"

    def load(self) -> None:
        self.receiver = r = Receiver()
        r.tty = make_tty(r, "ttyGPS0", mode=0o666)
        for name, kind, descr, low, high in (
            ("latitude", "float", "degrees north (negative: south)", -90.0, 90.0),
            ("longitude", "float", "degrees east (negative: west)", -180.0, 180.0),
            ("altitude", "float", "metres above mean sea level", -1000.0, 100000.0),
            ("speed", "float", "speed over ground, knots", 0.0, 1000.0),
            ("course", "float", "course over ground, degrees true", 0.0, 359.99),
            ("fix", "int", "GGA fix quality: 0 none, 1 GPS, 2 DGPS", 0, 2),
            ("satellites", "int", "satellites in use", 0, MAX_SATELLITES),
        ):
            sysctl_add(f"dev.gps.0.{name}", kind, self._getter(name), self._setter(name, low, high), descr)
        sysctl_add("dev.gps.0.utc", "str", lambda: r.utc, self._set_utc, "pinned UTC time (ISO 8601); empty: now")
        sysctl_add("dev.gps.0.overruns", "uint", lambda: r.overruns, descr="seconds lost: the program did not read")

    def _getter(self, name: str):
        return lambda: getattr(self.receiver, name)

    def _setter(self, name: str, low: float, high: float):
        def set_value(value: float) -> None:
            if not low <= value <= high:
                raise OSError(errno.EINVAL, f"{name} must be within {low}..{high}")
            with self.receiver.mtx:
                setattr(self.receiver, name, value)
        return set_value

    def _set_utc(self, value: str) -> None:
        if value:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise OSError(errno.EINVAL, f"not an ISO 8601 time: {value!r}") from None
        with self.receiver.mtx:
            self.receiver.utc = value

    def unload(self) -> None:
        callout_drain(self.receiver.ticker)
        assert self.receiver.tty is not None and self.receiver.tty.cdev is not None
        self.receiver.tty.cdev.destroy()

