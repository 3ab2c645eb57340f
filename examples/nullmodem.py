"""nullmodem: two serial ports wired to each other, /dev/ttyNULL0 <-> /dev/ttyNULL1.

What one program writes on its port the other reads on its own, each paced at
its reader's line speed; as in a null-modem cable, each side's RTS is the
other's CTS and its DTR the other's DSR and CD (seen by programs only on a
transport with modem lines; over a pty, DTR rises while a port is open):

    $ pykld load examples/nullmodem.py
    $ cat /dev/ttyNULL1 &  echo hello > /dev/ttyNULL0      # prints hello

Bytes for a port nobody has open are lost, as on a cable with nothing at its
end; bytes for a port whose program does not read wait (up to BACKLOG bytes a
direction, then dev.nullmodem.0.overruns counts what was lost).
"""

from pykld import Module, Mutex, callout_drain, callout_init_mtx, callout_reset, sysctl_add
from pykld.tty import LineSettings, SerialDevice, Tty, make_tty

BACKLOG = 1 << 20  # bytes a direction holds for a reader that is behind
RETRY = 0.01  # seconds between tries to hand a slow reader what waits for it


class End(SerialDevice):
    """One end of the cable."""

    line = LineSettings(115200)

    def __init__(self, cable: "Cable") -> None:
        self.cable = cable
        self.tty: Tty | None = None
        self.peer: End | None = None
        self.waiting = b""  # for this end's program, not taken by its tty yet
        self.retry = callout_init_mtx(cable.mtx)

    def received(self, tty: Tty, data: bytes) -> None:
        assert self.peer is not None
        with self.cable.mtx:
            self.peer.deliver(data)

    def modem(self, tty: Tty, dtr: bool, rts: bool) -> None:
        assert self.peer is not None and self.peer.tty is not None
        self.peer.tty.set_signals(cts=rts, dsr=dtr, cd=dtr)

    def deliver(self, data: bytes) -> None:
        """Bytes from the other end, for this end's program (the cable's mutex held)."""
        if self.tty is None or not self.tty.is_open:
            return  # nobody at this end of the cable
        room = BACKLOG - len(self.waiting)
        self.cable.overruns += max(0, len(data) - room)
        self.waiting += data[:room]
        self.flush()

    def flush(self) -> None:
        assert self.tty is not None
        self.waiting = self.waiting[self.tty.send(self.waiting):]
        if self.waiting:
            callout_reset(self.retry, RETRY, self.flush)

    def close(self, tty: Tty) -> None:
        with self.cable.mtx:
            self.waiting = b""


class Cable:
    def __init__(self) -> None:
        self.mtx = Mutex("nullmodem")
        self.overruns = 0
        self.ends = (End(self), End(self))
        self.ends[0].peer, self.ends[1].peer = self.ends[1], self.ends[0]


class NullModemModule(Module):
    name = "nullmodem"

    def load(self) -> None:
        self.cable = Cable()
        for number, end in enumerate(self.cable.ends):
            end.tty = make_tty(end, f"ttyNULL{number}", mode=0o666)
        sysctl_add("dev.nullmodem.0.overruns", "uint", lambda: self.cable.overruns,
                   descr="bytes lost: a reader was more than a backlog behind")

    def unload(self) -> None:
        for end in self.cable.ends:
            callout_drain(end.retry)
