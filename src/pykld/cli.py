"""The pykld command: kldload(8), kldunload(8), kldstat(8), dmesg(8) and `run`."""

from __future__ import annotations

import argparse
import sys

from pykld import run as runner


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pykld", description="Python device drivers as device files")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="load a module and serve its devices in the foreground")
    run.add_argument("module", help="a driver file (examples/hello.py) or a module name")
    run.add_argument("--transport", choices=runner.TRANSPORTS, help="default: the best available")
    run.add_argument("--dev-dir", help="where the FUSE devfs is mounted (default /run/pykld/dev)")
    run.add_argument("--no-bind", action="store_true", help="do not bind-mount devices at /dev/NAME")
    run.add_argument("--demo", action="store_true",
                     help='write "hi rust" to the first device and read it back, then keep serving')
    return parser


def describe(exc: OSError) -> str:
    """An OSError as a FreeBSD tool says it: the problem, and what it was about."""
    text = exc.strerror or str(exc)
    return f"{exc.filename}: {text}" if exc.filename else text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return runner.run(args.module, transport=args.transport, dev_dir=args.dev_dir,
                              bind=not args.no_bind, demo=args.demo)
    except OSError as exc:
        print(f"pykld: {describe(exc)}", file=sys.stderr)
        return 1
    return 2
