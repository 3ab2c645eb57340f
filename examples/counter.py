"""counter: a device that counts on its own schedule and tells its readers.

A ticker (a callout) adds one to the count every interval; each open reads the
count as a line ("7\\n") once it has moved since that open last read it, so

    $ cat /dev/counter          # prints 1, 2, 3, ... one line per tick

blocks between ticks (O_NONBLOCK callers get EAGAIN), and poll/select report
POLLIN when a new count is there.  ioctls (numbers in counter_ioctl.py):
CIOCGCOUNT reads the count, CIOCSINTERVAL sets the interval in milliseconds
(0 stops the ticker), CIOCRESET starts again from 0.

The state is shared between device operations and the callout, which does not
run under the device lock: a Mutex guards it.  read() sleeps with that mutex
(sleep releases it and the device lock, and retakes both).
"""

import os

from counter_ioctl import CIOCGCOUNT, CIOCRESET, CIOCSINTERVAL, COUNT, INTERVAL

from pykld import (
    POLLIN,
    POLLRDNORM,
    CharacterDevice,
    Module,
    Mutex,
    OpenFile,
    SelInfo,
    Uio,
    callout_drain,
    callout_init_mtx,
    callout_reset,
    callout_stop,
    make_dev,
    printf,
    selrecord,
    selwakeup,
    sleep,
    wakeup,
)

INTERVAL_MS = int(os.environ.get("PYKLD_COUNTER_INTERVAL_MS", "1000"))


class Counter(CharacterDevice):
    seekable = False  # a stream of lines: offsets mean nothing

    def __init__(self, interval_ms: int = INTERVAL_MS) -> None:
        self.mtx = Mutex("counter")
        self.count = 0
        self.serial = 0  # moves at every change of the count, resets included
        self.interval = interval_ms / 1000
        self.sel = SelInfo()
        self.ticker = callout_init_mtx(self.mtx)  # the ticker runs with mtx held

    def start(self) -> None:
        with self.mtx:
            if self.interval:
                callout_reset(self.ticker, self.interval, self.tick)

    def tick(self) -> None:
        self.mtx.assert_owned()
        self.count += 1
        self.changed()
        if self.interval:
            callout_reset(self.ticker, self.interval, self.tick)

    def changed(self) -> None:
        self.serial += 1
        wakeup(self)
        selwakeup(self.sel)

    def open(self, file: OpenFile) -> None:
        with self.mtx:
            file.private = self.serial  # what this open has seen: the next change is news

    def read(self, file: OpenFile, uio: Uio) -> None:
        with self.mtx:
            while self.serial == file.private:
                sleep(self, lock=self.mtx)  # EAGAIN for O_NONBLOCK, EINTR on a signal
            file.private = self.serial
            line = f"{self.count}\n".encode()
        uio.uiomove(line)

    def poll(self, file: OpenFile, events: int) -> int:
        with self.mtx:
            if self.serial != file.private:
                return events & (POLLIN | POLLRDNORM)
            selrecord(self.sel)
            return 0

    def ioctl(self, file: OpenFile, cmd: int, data: bytearray | int) -> int | None:
        if cmd == CIOCGCOUNT:
            assert isinstance(data, bytearray)
            with self.mtx:
                COUNT.pack_into(data, 0, self.count)
            return 0
        if cmd == CIOCSINTERVAL:
            assert isinstance(data, bytearray)
            (ms,) = INTERVAL.unpack(data)
            with self.mtx:
                self.interval = ms / 1000
                if ms:
                    callout_reset(self.ticker, self.interval, self.tick)
                else:
                    callout_stop(self.ticker)
            printf(f"ticking every {ms} ms" if ms else "ticker stopped")
            return 0
        if cmd == CIOCRESET:
            with self.mtx:
                self.count = 0
                self.changed()
            return 0
        return super().ioctl(file, cmd, data)


class CounterModule(Module):
    name = "counter"

    def load(self) -> None:
        self.counter = Counter()
        self.cdev = make_dev(self.counter, "counter", mode=0o666)
        self.counter.start()

    def unload(self) -> None:
        callout_drain(self.counter.ticker)  # no tick after this returns
        self.cdev.destroy()  # wakes its sleepers (ENXIO) and pollers
