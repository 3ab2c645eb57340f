"""gps: the NMEA stream as a consumer parses it (pynmea2, checksums checked), in process."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator

import pynmea2
import pytest

from pykld import Kernel
from pykld.kernel.fd import SimFile
from pykld.tty import termios as t
from pykld.tty.termios import Termios
from pykld.tty.tty import TX_LIMIT

DEV = "/dev/ttyGPS0"
PINNED = "2026-12-01T12:35:19.250000"


@pytest.fixture
def gps(kernel: Kernel, example: Callable[[str], str]) -> Kernel:
    kernel.kldload(example("gps"))
    kernel.sysctl("dev.gps.0.utc", PINNED)
    return kernel


@pytest.fixture
def port(gps: Kernel) -> Iterator[SimFile]:
    with gps.open(DEV, os.O_RDWR) as f:
        yield f


def readline(f: SimFile) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        line += f.read(1)
    return line


def cycle(f: SimFile) -> dict[str, pynmea2.NMEASentence]:
    """One second's sentences, from its RMC on, parsed with their checksums checked."""
    line = readline(f)
    while not line.startswith(b"$GPRMC"):
        line = readline(f)
    found = {}
    while True:
        sentence = pynmea2.parse(line.decode("ascii").strip(), check=True)
        assert len(line) <= 82
        key = sentence.sentence_type + (str(sentence.msg_num) if sentence.sentence_type == "GSV" else "")
        found[key] = sentence
        if sentence.sentence_type == "GSV" and sentence.msg_num == sentence.num_messages:
            return found
        line = readline(f)


def test_checksums_are_those_of_the_spec() -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    import gps  # the example's own function, against sentences checked by hand

    for sentence in ("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47",
                     "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A",
                     "GPGSA,A,3,10,07,05,02,29,04,08,13,,,,,1.72,1.03,1.38*0A",
                     "GPRMC,123519.00,V,,,,,,,230394,,,N*7F"):
        body, _, expected = sentence.partition("*")
        assert gps.checksum(body) == expected


def test_a_second_of_rmc_gga_gsa_gsv_at_the_position_set(port: SimFile) -> None:
    s = cycle(port)
    assert sorted(s) == ["GGA", "GSA", "GSV1", "GSV2", "RMC"]
    rmc, gga = s["RMC"], s["GGA"]
    assert rmc.status == "A" and rmc.datestamp.isoformat() == "2026-12-01"
    assert rmc.timestamp.isoformat() == "12:35:19.250000+00:00"
    assert (rmc.lat, rmc.lat_dir, rmc.lon, rmc.lon_dir) == ("4807.0380", "N", "01131.0000", "E")
    assert rmc.latitude == pytest.approx(48.1173, abs=1e-6) and rmc.longitude == pytest.approx(11.516667, abs=1e-6)
    assert (gga.gps_qual, gga.num_sats, gga.altitude) == (1, "08", 545.4)
    assert [getattr(s["GSA"], f"sv_id{i:02d}") for i in range(1, 10)] == \
        ["02", "05", "07", "10", "13", "15", "18", "20", ""]
    assert s["GSV1"].num_sv_in_view == "08"


def test_the_position_speed_and_fix_follow_the_sysctls(gps: Kernel, port: SimFile) -> None:
    gps.sysctl("dev.gps.0.latitude", "-12.345678")  # 20.74068': 20.7407, rounded
    gps.sysctl("dev.gps.0.longitude", -70.5)
    gps.sysctl("dev.gps.0.speed", 12.5)
    gps.sysctl("dev.gps.0.course", 271.3)
    gps.sysctl("dev.gps.0.fix", 2)
    gps.sysctl("dev.gps.0.satellites", 5)
    s = cycle(port)
    while s["RMC"].lat_dir != "S":  # a second already queued may predate the change
        s = cycle(port)
    rmc, gga = s["RMC"], s["GGA"]
    assert (rmc.lat, rmc.lat_dir, rmc.lon, rmc.lon_dir) == ("1220.7407", "S", "07030.0000", "W")
    assert (rmc.spd_over_grnd, rmc.true_course, rmc.mode_indicator) == (12.5, 271.3, "D")
    assert (gga.gps_qual, gga.num_sats) == (2, "05")
    assert sorted(s) == ["GGA", "GSA", "GSV1", "GSV2", "RMC"]  # 5 satellites: two GSV sentences


def test_no_fix_is_status_v_and_empty_fields(gps: Kernel, port: SimFile) -> None:
    gps.sysctl("dev.gps.0.fix", 0)
    s = cycle(port)
    while s["RMC"].status != "V":
        s = cycle(port)
    assert s["RMC"].lat == "" and s["RMC"].mode_indicator == "N" and s["GGA"].gps_qual == 0


@pytest.mark.parametrize(("name", "value"), [("latitude", 90.5), ("longitude", -181), ("fix", 3),
                                             ("satellites", 13), ("utc", "yesterday"), ("speed", -1)])
def test_values_no_receiver_could_have_are_einval(gps: Kernel, name: str, value: object) -> None:
    before = gps.sysctl(f"dev.gps.0.{name}")
    with pytest.raises(OSError) as refused:
        gps.sysctl(f"dev.gps.0.{name}", value)
    assert refused.value.errno == errno.EINVAL
    assert gps.sysctl(f"dev.gps.0.{name}") == before


def test_the_receiver_takes_its_speeds_and_refuses_others(port: SimFile) -> None:
    now = Termios.unpack(port.ioctl(t.TCGETS2, bytearray(t.TERMIOS2.size)).data or b"")
    assert now.line_settings().speed == 9600
    port.ioctl(t.TCSETS2, now.with_speed(4800).pack())
    with pytest.raises(OSError) as refused:
        port.ioctl(t.TCSETS2, now.with_speed(14400).pack())
    assert refused.value.errno == errno.EINVAL
    cycle(port)  # and it goes on, at 4800


def test_a_program_that_does_not_read_loses_whole_seconds_never_half_a_sentence(
        gps: Kernel, port: SimFile, wait_until) -> None:
    tty = gps.module("gps").instance.receiver.tty
    readline(port)
    tty.send(b"#" * (tty.room() - 100))  # the program's queue all but full, and it does not read
    wait_until(lambda: gps.sysctl("dev.gps.0.overruns") > 0)  # a second found no room for its 400 bytes
    assert tty.queued() == TX_LIMIT - 100  # nothing of it went in
    port.ioctl(t.TCFLSH, t.TCIFLUSH)
    assert sorted(cycle(port)) == ["GGA", "GSA", "GSV1", "GSV2", "RMC"]  # and the next second is whole
