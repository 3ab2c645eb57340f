"""Bind mounts at /dev/NAME never leave /dev: a symbolic link on the way is refused."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from pykld import Kernel
from pykld.transport.fuse import FuseTransport

from .conftest import require_fuse, require_root, write_driver


def test_a_symlink_in_the_bind_target_path_is_not_followed(dev_dir: str, tmp_path: Path) -> None:
    require_root()
    require_fuse()
    link = f"/dev/pykld-test-link-{uuid.uuid4().hex[:8]}"
    outside = tempfile.mkdtemp(prefix="pykld-outside-")
    os.symlink(outside, link)
    kernel = Kernel()
    transport = FuseTransport(kernel, dev_dir, bind=True)
    transport.start()
    try:
        kernel.kldload(write_driver(tmp_path, "escape", f"""
from pykld import CharacterDevice, Module, make_dev
class Escape(Module):
    name = "escape"
    def load(self):
        make_dev(CharacterDevice(), "{os.path.basename(link)}/x", mode=0o666)
"""))
        transport.settle()
        assert os.listdir(outside) == [], "the bind mount followed the link out of /dev"
        assert any("symbolic link" in line.text for line in kernel.msgbuf.since(0)[1])
    finally:
        kernel.shutdown()
        transport.stop()
        os.unlink(link)
        for name in os.listdir(outside):
            os.system(f"umount -l {outside}/{name}")
            os.unlink(os.path.join(outside, name))
        os.rmdir(outside)
