"""spi_adc: a Microchip MCP3008, 10-bit 8-channel ADC, on /dev/spidev0.1.

    import spidev
    s = spidev.SpiDev(); s.open(0, 1); s.max_speed_hz = 1_350_000
    r = s.xfer2([1, 0x80 | ch << 4, 0])             # start bit, single-ended channel ch
    code = (r[1] & 3) << 8 | r[2]                   # 512 for 1.65 V against Vref 3.3 V

Modelled bit by bit, as the datasheet's figure 5-1 draws it, so any framing works:
after chip select falls, leading zeros, a start bit, SGL/DIFF and D2-D0; one clock
to sample; a null bit 0; B9..B0; then, if the clock goes on, B1..B9 again LSB first
and zeros.  Code = min(1023, floor(1024 * Vin / Vref)); differential pairs
(SGL = 0) convert IN+ - IN-, 0 when IN+ < IN-.  MISO is high-impedance, read as 1,
until the null bit.  SPI modes 0,0 and 1,1 only.

sysctl nodes, dev.mcp3008.0.*: vref and ch0..ch7 in volts (settable; 0..vref),
and conversions (a counter).
"""

from __future__ import annotations

import errno
import math

from pykld import Module, sysctl_add
from pykld.bus.spi import SpiPeripheral, SpiWire, make_spidev

CHANNELS = 8
# Differential codes D2..D0 -> (IN+, IN-): 000 is CH0+ CH1-, 001 is CH0- CH1+, ...
PAIRS = [(2 * (d >> 1) + (d & 1), 2 * (d >> 1) + 1 - (d & 1)) for d in range(8)]


class MCP3008(SpiPeripheral):
    modes = frozenset({0, 3})

    def __init__(self, vref: float = 3.3) -> None:
        self.vref = vref
        self.volts = [0.0] * CHANNELS
        self.conversions = 0
        self.select()

    def code(self, config: int) -> int:
        """The conversion for the 4 configuration bits SGL/DIFF, D2, D1, D0."""
        if config & 8:
            vin = self.volts[config & 7]
        else:
            plus, minus = PAIRS[config & 7]
            vin = self.volts[plus] - self.volts[minus]
        return max(0, min(1023, math.floor(1024 * vin / self.vref + 1e-9)))

    def select(self) -> None:
        self.clock = -1  # clocks since the start bit; -1 waits for it
        self.config = 0
        self.out: list[int] = []  # the bits MISO carries from the null bit on

    def exchange(self, mosi: bytes, wire: SpiWire) -> bytes:
        miso = bytearray()
        for byte in mosi:
            out = 0
            for shift in range(7, -1, -1):
                out = out << 1 | self._clock(byte >> shift & 1)
            miso.append(out)
        return bytes(miso)

    def _clock(self, din: int) -> int:
        """One clock: take a DIN bit, give the DOUT bit."""
        clock = self.clock
        if clock < 0:
            self.clock = 0 if din else -1
            return 1
        self.clock += 1
        if clock < 4:  # SGL/DIFF, D2, D1, D0 after the start bit
            self.config = self.config << 1 | din
            if clock == 3:
                code = self.code(self.config)
                self.conversions += 1
                msb_first = [code >> b & 1 for b in range(9, -1, -1)]
                self.out = [0, *msb_first, *msb_first[-2::-1]]  # null, B9..B0, B1..B9
            return 1
        if clock == 4:  # the sample clock: DOUT still high-impedance
            return 1
        index = clock - 5
        return self.out[index] if index < len(self.out) else 0


class SpiAdcModule(Module):
    name = "spi_adc"

    def load(self) -> None:
        self.adc = adc = MCP3008()
        self.spidev = make_spidev(adc, 0, 1, perms=0o666, max_speed_hz=1_350_000)
        node = "dev.mcp3008.0"
        sysctl_add(f"{node}.vref", "float", lambda: adc.vref, self.set_vref, "reference voltage, V")
        for ch in range(CHANNELS):
            sysctl_add(f"{node}.ch{ch}", "float", lambda ch=ch: adc.volts[ch],
                       lambda volts, ch=ch: self.set_volts(ch, volts), f"input CH{ch}, V (0..vref)")
        sysctl_add(f"{node}.conversions", "uint", lambda: adc.conversions, descr="conversions started")

    def set_vref(self, volts: float) -> None:
        if not 0 < volts <= 5.5:
            raise OSError(errno.EINVAL, f"vref {volts} V: the MCP3008 takes up to 5.5 V")
        self.adc.vref = volts

    def set_volts(self, ch: int, volts: float) -> None:
        if not 0 <= volts <= self.adc.vref:
            raise OSError(errno.EINVAL, f"{volts} V on CH{ch}: inputs are from 0 to vref ({self.adc.vref} V)")
        self.adc.volts[ch] = volts

    def unload(self) -> None:
        self.spidev.destroy()
