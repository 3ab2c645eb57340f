"""An emulated temperature sensor: /dev/thermo0 reads as the temperature in millidegrees
Celsius, one line, as Linux's hwmon temp1_input does; writing a number sets it.

    cat /dev/thermo0            # 23500
    echo 31000 > /dev/thermo0   # the room warms up
"""

import errno

from pykld import CharacterDevice, Module, OpenFile, Uio, make_dev


class Thermometer(CharacterDevice):
    def __init__(self) -> None:
        self.millidegrees = 23500

    def read(self, file: OpenFile, uio: Uio) -> None:
        uio.move_out(f"{self.millidegrees}\n".encode())

    def write(self, file: OpenFile, uio: Uio) -> None:
        text = uio.move_in().strip()
        try:
            self.millidegrees = int(text)
        except ValueError:
            raise OSError(errno.EINVAL, f"not a temperature in millidegrees: {text!r}", None) from None


class ThermoModule(Module):
    name = "thermo"

    def load(self) -> None:
        self.sensor = Thermometer()
        self.cdev = make_dev(self.sensor, "thermo0", mode=0o666)

    def unload(self) -> None:
        self.cdev.destroy()
