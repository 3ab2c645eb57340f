"""An ordinary program, the kind one tests against an emulated device: it reads a
temperature sensor (millidegrees Celsius, as Linux's hwmon temp1_input gives them)
and says whether it is too hot.

    tempalarm.py DEVICE [LIMIT]     exit status 0: fine; 2: hotter than LIMIT (30 C);
                                    1: the sensor could not be read
"""

import sys


def main(argv: list[str]) -> int:
    path = argv[1]
    limit = float(argv[2]) if len(argv) > 2 else 30.0
    try:
        with open(path, "rb", buffering=0) as sensor:
            celsius = int(sensor.read(32)) / 1000
    except (OSError, ValueError) as exc:
        print(f"tempalarm: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    if celsius > limit:
        print(f"ALARM {celsius:.1f} C")
        return 2
    print(f"ok {celsius:.1f} C")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
