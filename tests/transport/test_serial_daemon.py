"""Serial ports through the daemon: `pykld load examples/gps.py` makes /dev/ttyGPS0 a pty
whatever the daemon's transport, `pykld stat` says so; a tty asked to go over FUSE is
raw bytes there, and pyserial reports the usual ENOTTY."""

from __future__ import annotations

import errno
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import serial
from test_cli import AS_NOBODY, PYKLD, Pykld, pykld, require_free, sh  # noqa: F401, F811 - pykld is a fixture

from pykld.kernel.kernel import Kernel
from pykld.transport.fuse import FuseTransport

from .conftest import EXAMPLES, require_fuse, require_root, wait_for

GPS = str(EXAMPLES / "gps.py")


def test_load_publishes_the_gps_as_a_pty_beside_fuse_and_stat_says_so(pykld: Pykld) -> None:  # noqa: F811
    require_root()
    require_fuse()
    require_free("/dev/ttyGPS0")
    loaded = pykld.ok("load", GPS, "--transport", "fuse")
    assert "/dev/ttyGPS0" in loaded.stdout
    assert os.readlink("/dev/ttyGPS0").startswith("/dev/pts/")
    table = pykld.ok("stat").stdout.splitlines()
    assert table[1].split()[2:4] == ["pty", "gps"]
    devices = pykld.stat_json()["modules"][0]["devices"]
    assert [(d["name"], d["transport"], d["path"]) for d in devices] == [("ttyGPS0", "pty", "/dev/ttyGPS0")]
    # the FUSE devfs shows the port too, as a symlink to the same slave
    assert os.readlink(pykld.device("ttyGPS0")) == os.readlink("/dev/ttyGPS0")
    assert "not bound" not in pykld.ok("dmesg").stdout  # FUSE left /dev/ttyGPS0 to the pty transport
    pykld.ok("sysctl", "dev.gps.0.latitude=-10.25")
    done = sh("stty -F /dev/ttyGPS0 4800 raw -echo && timeout 5 head -c 400 /dev/ttyGPS0", as_nobody=True)
    assert "$GPRMC," in done.stdout and ",1015.0000,S," in done.stdout, done.stderr
    pykld.ok("unload", "gps")
    assert not os.path.lexists("/dev/ttyGPS0")


def test_a_daemon_of_another_user_links_its_ports_in_its_fuse_devfs(pykld: Pykld, fuse_for_other_users) -> None:  # noqa: F811
    os.chown(pykld.run_dir, 65534, 65534)
    daemon = subprocess.Popen([*AS_NOBODY, *PYKLD, "daemon", "--foreground", "--transport", "fuse"],
                              env=pykld.env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert daemon.stdout is not None
        assert "pykld daemon: pid" in daemon.stdout.readline()
        loaded = pykld("load", GPS, as_nobody=True)
        assert loaded.returncode == 0, loaded.stderr
        link = pykld.device("ttyGPS0")
        assert f"Loaded gps, id=1: {link}" in loaded.stdout
        # (root may not look into another user's FUSE mount: nobody looks)
        owner = sh(f"readlink {link} && stat -L -c %u {link}", as_nobody=True).stdout.split()
        assert owner[0].startswith("/dev/pts/") and owner[1] == "65534"  # not root: the slave stays the daemon's
        done = sh(f"stty -F {link} 9600 raw -echo && timeout 5 head -c 300 {link}", as_nobody=True)
        assert "$GPRMC," in done.stdout, done.stderr
        pykld.ok("shutdown", as_nobody=True)
    finally:
        daemon.kill()
        daemon.wait(30)


TTY_OVER_FUSE = """
from pykld import Module
from pykld.tty import SerialDevice, make_tty

class Chatty(SerialDevice):
    paced = False
    def open(self, tty):
        tty.send(b"raw bytes\\n")

class ChattyModule(Module):
    name = "chatty"
    def load(self):
        make_tty(Chatty(), "ttyRAW0", mode=0o666, transport=None)  # the daemon's: FUSE here
"""


def test_a_tty_over_fuse_is_raw_bytes_and_not_a_terminal(fuse: tuple[Kernel, FuseTransport], tmp_path: Path) -> None:
    kernel, transport = fuse
    driver = tmp_path / "chatty.py"
    driver.write_text(textwrap.dedent(TTY_OVER_FUSE))
    kernel.kldload(str(driver))
    path = transport.device_path("ttyRAW0")
    with open(path, "rb", buffering=0) as raw:
        assert raw.read(100) == b"raw bytes\n"  # cat and dd work
        assert not os.isatty(raw.fileno())
    with pytest.raises(serial.SerialException) as refused:
        serial.Serial(path, 9600)
    assert f"({errno.ENOTTY}, 'Inappropriate ioctl for device')" in str(refused.value)  # as for any non-tty
    assert wait_for(lambda: kernel.lookup(path.rsplit("/", 1)[1]).open_count == 0)
