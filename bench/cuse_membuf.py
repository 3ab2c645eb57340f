"""examples/membuf.py under the node name PYKLD_BENCH_NODE (default membuf), so that
bench/cuse_bench.py can run several pykld daemons side by side (one per request loop
or memory path), each with a node of its own."""

import importlib.util
import os
from pathlib import Path

from pykld import make_dev

_path = Path(__file__).resolve().parent.parent / "examples" / "membuf.py"
_spec = importlib.util.spec_from_file_location("_bench_membuf_example", _path)
assert _spec is not None and _spec.loader is not None
_example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_example)


class NamedMembufModule(_example.MembufModule):  # type: ignore[misc, name-defined]
    name = "membuf"

    def load(self) -> None:
        self.membuf = _example.Membuf()
        self.cdev = make_dev(self.membuf, os.environ.get("PYKLD_BENCH_NODE", "membuf"), mode=0o666)


MODULE = NamedMembufModule
