"""How close can a Python FUSE daemon get to C on a 4 KiB read?  The floor under pykld's figure.

    .venv/bin/python bench/python_floor.py [--rounds 8] [--seconds 0.5]

Three daemons serve a 4 KiB pread loop, alternating round by round:
- pykld: `pykld run examples/membuf.py` over FUSE, the real thing;
- floor: the same pykld session (the same thread, read(2), decode-free reply, writev), but every READ
  answered from a constant, without the kernel's dispatch, the driver or its uio: what Python costs
  before pykld does any work of its own;
- C: libfuse's fioc example, as in membuf_bench.py.
It prints the median ops/s and the ratios pykld/C, floor/C and pykld/floor.  The floor is not a
device anyone could use; it says which share of the gap to C is pykld's and which the interpreter's.
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import sys
import tempfile
import threading
from pathlib import Path

from common import (
    BENCH,
    ROOT,
    DaemonProcess,
    StderrLog,
    apt_need,
    copy_libfuse_examples,
    fuse3_build_flags,
    gcc,
    median_and_quartiles,
    pykld_command,
    run_client,
)

log = StderrLog("floor")


def serve_floor(dev_dir: str) -> None:
    """The floor daemon itself (run with --serve DIR)."""
    sys.path.insert(0, str(ROOT / "src"))
    os.environ["PYKLD_LOOP"] = "python"  # the floor replaces a table entry of the Python loop
    from pykld import Kernel
    from pykld.fuse import abi
    from pykld.transport.fuse import FuseTransport

    kernel = Kernel()
    transport = FuseTransport(kernel, dev_dir, bind=False)
    transport.start()
    kernel.kldload(str(ROOT / "examples" / "membuf.py"))
    assert transport.session is not None
    header = struct.Struct("<IiQ").pack
    data = b"x" * 4096

    def constant_read(view: memoryview) -> list[bytes]:
        return [header(16 + len(data), 0, int.from_bytes(view[8:16], "little")), data]

    # READ's table entry replaced whole: no decoding, the same bytes every time.
    transport.session.table[abi.Opcode.READ] = (lambda view, nbytes, minor: view, constant_read)
    print("pykld: serving", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait(3600)
    kernel.shutdown()
    transport.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_floor(args.serve)
        return 0
    apt_need("gcc", "pkg-config", "libfuse3-dev")
    with tempfile.TemporaryDirectory(prefix="pykld-floor-") as tmp:
        work = Path(tmp)
        copy_libfuse_examples(work, ["ioctl.c", "ioctl.h"], log)
        gcc(work / "fioc", str(work / "ioctl.c"), *fuse3_build_flags())
        gcc(work / "client", str(BENCH / "client.c"))
        mounts = {name: work / name for name in ("pykld", "floor", "C")}
        daemons = {
            "pykld": DaemonProcess("pykld", [*pykld_command(), "run", "examples/membuf.py", "--transport", "fuse",
                                             "--dev-dir", str(mounts["pykld"]), "--no-bind"],
                                   "pykld: serving", work / "pykld.log"),
            "floor": DaemonProcess("floor", [sys.executable, str(BENCH / "python_floor.py"), "--serve",
                                             str(mounts["floor"])], "pykld: serving", work / "floor.log"),
            "C": DaemonProcess("C", [str(work / "fioc"), "-f", str(mounts["C"])], None, work / "C.log"),
        }
        files = {"pykld": "membuf", "floor": "membuf", "C": "fioc"}
        rates: dict[str, list[float]] = {name: [] for name in daemons}
        try:
            for name, daemon in daemons.items():
                mounts[name].mkdir()
                daemon.spawn(own_session=True)
                target = mounts[name] / files[name]
                daemon.wait_serving(target.exists, 30, f"{name} did not mount")
                if name != "floor":  # its reads are a constant 4 KiB: nothing to fill or check
                    run_client(work / "client", str(target), "fill", timeout=30)
            for round_no in range(args.rounds):
                order = list(daemons)[round_no % 3:] + list(daemons)[: round_no % 3]
                for name in order:
                    result = run_client(work / "client", str(mounts[name] / files[name]), "pread4k",
                                        str(args.seconds), timeout=args.seconds + 30)
                    rates[name].append(result["ops"] / result["seconds"])
        finally:
            for name, daemon in daemons.items():
                daemon.terminate(log)
                os.system(f"umount -l {mounts[name]} 2>/dev/null")
    median = {name: median_and_quartiles(values)[1] for name, values in rates.items()}
    print(f"pread 4 KiB over FUSE, median ops/s over {args.rounds} rounds of {args.seconds} s")
    for name in daemons:
        print(f"  {name:6} {median[name]:10,.0f}")
    print(f"  pykld/C {median['pykld'] / median['C']:.2f}   floor/C {median['floor'] / median['C']:.2f}   "
          f"pykld/floor {median['pykld'] / median['floor']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
