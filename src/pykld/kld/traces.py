"""`pykld record` and `pykld replay`, served in the foreground as `pykld run` serves a module."""

from __future__ import annotations

import argparse
import sys

from pykld.kernel.kernel import Kernel
from pykld.kld import run as runner
from pykld.testing.record import recorder
from pykld.testing.replay import replayer
from pykld.testing.trace import Trace, TraceError


def main(args: argparse.Namespace) -> int:
    publishing = {"transport": args.transport, "dev_dir": args.dev_dir, "bind": not args.no_bind}
    if args.command == "record":
        with open(args.output, "w", encoding="utf-8") as stream:
            status = runner.run(recorder(args.source, args.name, stream), **publishing)
        print(f"pykld: trace written to {args.output}", file=sys.stderr)
        return status
    try:
        trace = Trace.load(args.trace)
    except TraceError as exc:
        print(f"pykld: can't replay: {exc}", file=sys.stderr)
        return 1
    return runner.run(replayer(trace, args.name), outcome=_verdict, **publishing)


def _verdict(kernel: Kernel) -> int:
    """Exit status 1 when a caller diverged from the trace, each divergence on stderr."""
    device = kernel.module("replay").instance.device
    for text in device.divergences:
        print(f"pykld: replay {text}", file=sys.stderr)
    if device.unplayed():
        print(f"pykld: replay: {device.unplayed()} recorded open(s) never came", file=sys.stderr)
    if device.divergences:
        print(f"pykld: replay diverged from the trace {len(device.divergences)} time(s)", file=sys.stderr)
        return 1
    print("pykld: replay followed the trace", file=sys.stderr)
    return 0
