"""The pykld command: kldload(8), kldunload(8), kldstat(8), dmesg(8) and `run`."""

from __future__ import annotations

import argparse
import sys

from pykld.kld import commands, traces
from pykld.kld import run as runner
from pykld.transport.registry import TRANSPORTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pykld", description="Python device drivers as device files")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="load a module and serve its devices in the foreground")
    run.add_argument("module", help="a driver file (examples/hello.py) or a module name")
    _add_publishing(run, "/run/pykld/dev")
    run.add_argument("--demo", action="store_true",
                     help='write "hi rust" to the first device and read it back, then keep serving')
    run.add_argument("--console", action="store_true",
                     help="print the message buffer (printf, driver faults) on stderr as it is written")
    _add_kld_commands(sub)
    _add_trace_commands(sub)
    return parser


def _add_trace_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    record = sub.add_parser("record", help="publish NAME as a proxy of a device file, tracing every operation",
                            epilog="serves in the foreground until SIGINT or SIGTERM; the trace is written as it goes")
    record.add_argument("source", help="the device file to forward to (/dev/ttyUSB0, /dev/urandom, a pykld device)")
    record.add_argument("--as", dest="name", required=True, help="the proxy's device name")
    record.add_argument("-o", "--output", required=True, help="the trace file to write")
    _add_publishing(record, "/run/pykld/dev")
    replay = sub.add_parser("replay", help="publish a device that answers from a trace",
                            epilog="serves until SIGINT or SIGTERM; exit status 1 when a caller diverged")
    replay.add_argument("trace", help="a trace written by pykld record")
    replay.add_argument("--as", dest="name", help="the device's name (default: the trace's)")
    _add_publishing(replay, "/run/pykld/dev")


def _add_publishing(parser: argparse.ArgumentParser, dev_dir: str = "the runtime directory's dev/") -> None:
    """How devices are published: by `run`, and by a daemon that the command starts."""
    parser.add_argument("--transport", choices=TRANSPORTS, help="default: the best available")
    parser.add_argument("--dev-dir", help=f"where the FUSE devfs is mounted (default: {dev_dir})")
    parser.add_argument("--no-bind", action="store_true", help="do not bind-mount devices at /dev/NAME")


def _add_kld_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    load = sub.add_parser("load", help="load a module into the daemon (kldload), starting the daemon if needed",
                          epilog="--dev-dir and --no-bind apply when this starts the daemon; --transport must "
                                 "match a running daemon's")
    load.add_argument("module", help="a driver file (examples/hello.py) or a module name")
    _add_publishing(load)

    unload = sub.add_parser("unload", help="unload a module (kldunload)")
    unload.add_argument("module", help="the module's name or id")
    unload.add_argument("-f", "--force", action="store_true", help="unload even with its devices open")

    stat = sub.add_parser("stat", help="list the loaded modules (kldstat)")
    stat.add_argument("-v", "--verbose", action="store_true", help="add device counters and malloc usage")
    stat.add_argument("--json", action="store_true", help="machine-readable output")

    dmesg = sub.add_parser("dmesg", help="print the message buffer")
    dmesg.add_argument("-f", "--follow", action="store_true", help="keep printing new messages")

    fail = sub.add_parser("fail", help="fault points on a device's operations (fail(9))",
                          usage="pykld fail DEVICE OP ACTION [VALUE] [--cmd CMD] [--after N] [--times M] "
                                "[--prob P] [--seed S] | -l | -c [DEVICE [OP]]",
                          epilog="OP: open read write ioctl poll close. ACTION VALUE: error ERRNO, delay SECONDS, "
                                 "short BYTES, corrupt [BYTES]. Rules go with the device when its module unloads.")
    fail.add_argument("-l", "--list", action="store_true", help="list the rules, with their calls and firings")
    fail.add_argument("-c", "--clear", action="store_true", help="clear the rules (of DEVICE, of its OP)")
    fail.add_argument("words", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    sysctl = sub.add_parser("sysctl", help="read or set the nodes modules publish (sysctl)",
                            epilog="NAME lists the node or every node below it; NAME=VALUE sets a node")
    sysctl.add_argument("names", nargs="*", metavar="NAME[=VALUE]")
    sysctl.add_argument("-a", "--all", action="store_true", help="list every node")
    sysctl.add_argument("-d", "--descriptions", action="store_true", help="print descriptions, not values")
    sysctl.add_argument("-n", "--values-only", action="store_true", help="print values without names")

    sub.add_parser("shutdown", help="SHUTDOWN every module, unpublish the devices, stop the daemon")

    daemon = sub.add_parser("daemon", help="start the daemon (in the background unless --foreground)")
    _add_publishing(daemon)
    daemon.add_argument("--foreground", action="store_true", help="serve in this process (for systemd)")


def describe(exc: OSError) -> str:
    """An OSError as a FreeBSD tool says it: the problem, and what it was about."""
    text = exc.strerror or str(exc)
    return f"{exc.filename}: {text}" if exc.filename else text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return runner.run(args.module, transport=args.transport, dev_dir=args.dev_dir,
                              bind=not args.no_bind, demo=args.demo, console=args.console)
        if args.command in ("record", "replay"):
            return traces.main(args)
    except OSError as exc:
        print(f"pykld: {describe(exc)}", file=sys.stderr)
        return 1
    return _kld_command(args)


def _kld_command(args: argparse.Namespace) -> int:
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130  # as a shell reports a command ended by SIGINT


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "load":
        return commands.load(args.module, args.transport, args.dev_dir, not args.no_bind)
    if args.command == "unload":
        return commands.unload(args.module, args.force)
    if args.command == "stat":
        return commands.stat(args.verbose, args.json)
    if args.command == "dmesg":
        return commands.dmesg(args.follow)
    if args.command == "sysctl":
        return commands.sysctl(args.names, args.all, args.descriptions, args.values_only)
    if args.command == "shutdown":
        return commands.shutdown()
    if args.command == "fail":
        return commands.fail(args.words, args.list, args.clear)
    if args.command == "daemon":
        return commands.daemon(args.transport, args.dev_dir, not args.no_bind, args.foreground)
    return 2
