"""kldload(8), kldunload(8), kldstat(8), dmesg(8) and shutdown, spoken to the daemon.

Each command returns its exit status and says what went wrong as the FreeBSD
tools do ("pykld: can't unload hello: Device busy"), with the daemon's own
account of it on a second line when that adds something.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from pykld.kernel import modules
from pykld.kld import client, rundir

# Where Linux's wording differs from what a FreeBSD user knows.
FREEBSD_STRERROR = {
    errno.EBUSY: "Device busy",
    errno.ENXIO: "Device not configured",
    errno.ENODEV: "Operation not supported by device",
}


def strerror(code: int | None) -> str:
    if code is None:
        return "error"
    return FREEBSD_STRERROR.get(code) or os.strerror(code)


def fail_with(what: str, exc: OSError) -> int:
    """Report a failed command; the exit status is 1, as err(1, ...) gives."""
    if isinstance(exc, client.NotRunning):
        print(f"pykld: {what}: {exc.strerror} ({exc.filename})", file=sys.stderr)
        return 1
    headline = strerror(exc.errno)
    print(f"pykld: {what}: {headline}", file=sys.stderr)
    detail = exc.strerror
    if exc.filename and detail:
        detail = f"{detail} ({exc.filename})"
    if detail and detail != headline and detail != os.strerror(exc.errno or 0):
        print(f"pykld: {detail}", file=sys.stderr)
    if exc.errno in (errno.EIO, errno.ENOEXEC):
        print("pykld: `pykld dmesg` has the traceback", file=sys.stderr)
    return 1


def resolve_target(target: str) -> str:
    """What to ask the daemon to load.  A path is made absolute against the caller's
    directory, and a bare name found in the caller's module path (., ./examples or
    PYKLD_MODULE_PATH) becomes that file: the daemon runs in / and sees neither.
    Any other name is left for the daemon to look up."""
    if target.endswith(".py") or os.sep in target:
        return os.path.abspath(target)
    return modules.find_in_path(target) or target


# -- the commands ---------------------------------------------------------------------------

def load(target: str, transport: str | None, dev_dir: str | None, bind: bool) -> int:
    what = f"can't load {target}"
    try:
        try:
            conn = client.connect()
        except client.NotRunning:
            started = client.start_daemon(transport, dev_dir, bind)
            print(f"pykld: started the daemon (pid {started['pid']}, transport {started['transport']}; "
                  f"log {rundir.log_path(rundir.run_dir())})", file=sys.stderr)
            conn = client.connect()
        with conn:
            loaded = conn.call("load", target=resolve_target(target), transport=transport)
    except OSError as exc:
        return fail_with(what, exc)
    devices = ", ".join(loaded["devices"]) or "no devices"
    print(f"Loaded {loaded['name']}, id={loaded['id']}: {devices}")
    if loaded["transport"] == "sim":
        print("pykld: the daemon runs the sim transport: these devices exist only inside the daemon, "
              "no program can open them (use --transport fuse or cuse)", file=sys.stderr)
    return 0


def unload(target: str, force: bool) -> int:
    try:
        client.call("unload", target=target, force=force)
    except OSError as exc:
        return fail_with(f"can't unload {target}", exc)
    return 0


def stat(verbose: bool, as_json: bool) -> int:
    try:
        status = client.call("stat", verbose=verbose)
    except OSError as exc:
        return fail_with("can't stat", exc)
    status.pop("ok", None)
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    print(format_stat(status, verbose))
    return 0


def sysctl(names: Sequence[str], everything: bool, descriptions: bool, values_only: bool) -> int:
    """sysctl(8): `name: value` for each node asked for, `name: old -> new` for each set."""
    if not names and not everything:
        print("usage: pykld sysctl [-adn] NAME[=VALUE] ... | pykld sysctl [-dn] -a", file=sys.stderr)
        return 1
    status = 0
    for spec in names or [""]:
        name, sep, value = spec.partition("=")
        try:
            answer = client.call("sysctl", name=name, value=value if sep else None)
        except OSError as exc:
            status = fail_with(f"{name or 'sysctl'}", exc)
            continue
        for node in answer["nodes"]:
            if "error" in node:
                status = fail_with(node["name"], OSError(node["error"], node["message"]))
                continue
            shown = node["descr"] if descriptions else node["value"]
            if sep and not descriptions:
                shown = f"{answer['old']} -> {node['value']}"
            print(shown if values_only else f"{node['name']}: {shown}")
    return status


def format_stat(status: dict[str, Any], verbose: bool) -> str:
    rows = [("Id", "Refs", "Transport", "Name", "Devices", "Path")]
    for module in status["modules"]:
        devices = ",".join(d["path"] for d in module["devices"]) or "-"
        # Each device's own transport (a serial port is a pty whatever the daemon's), once each.
        transports = ",".join(dict.fromkeys(d.get("transport", status["transport"]) for d in module["devices"]))
        rows.append((str(module["id"]), str(module["refs"]), transports or status["transport"], module["name"],
                     devices, module["path"]))
    lines = _table(rows, right=(0, 1))
    if not verbose:
        return "\n".join(lines)
    out = [lines[0]]
    for line, module in zip(lines[1:], status["modules"], strict=True):
        out.append(line)
        out.extend("    " + row for row in _device_table(module["devices"]))
        if module.get("malloc"):
            out.extend("    " + row for row in _malloc_table(module["malloc"]))
    return "\n".join(out)


def _device_table(devices: Sequence[dict[str, Any]]) -> list[str]:
    if not devices:
        return []
    names = ("opens", "reads", "writes", "ioctls", "polls", "bytes_read", "bytes_written", "errors", "faults",
             "injected")
    rows = [("Device", "Transport", "Open", "Opens", "Reads", "Writes", "Ioctls", "Polls", "BytesRead", "BytesWritten",
             "Errors", "Faults", "Injected")]
    for device in devices:
        counters = device.get("stats", {})
        rows.append((device["name"], device.get("transport", "-"), str(device["open"]),
                     *(str(counters.get(n, "-")) for n in names)))
    return _table(rows, right=range(2, 13))


def _malloc_table(types: Sequence[dict[str, Any]]) -> list[str]:
    """vmstat -m: per malloc type, live allocations and bytes, high-water mark, requests."""
    rows = [("Type", "InUse", "MemUse", "HighUse", "Requests", "Failures", "Limit")]
    for t in types:
        rows.append((t["name"], str(t["allocations"]), str(t["inuse"]), str(t["highwater"]), str(t["requests"]),
                     str(t["failures"]), "-" if t["limit"] is None else str(t["limit"])))
    return _table(rows, right=range(1, 7))


def _table(rows: Sequence[Sequence[str]], right: Sequence[int] | range = ()) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    last = len(widths) - 1
    return [" ".join(cell.rjust(widths[i]) if i in right else (cell if i == last else cell.ljust(widths[i]))
                     for i, cell in enumerate(row)).rstrip() for row in rows]


def dmesg(follow: bool) -> int:
    try:
        with client.connect(timeout=None if follow else client.CALL_TIMEOUT) as conn:
            for reply in conn.stream("dmesg", follow=follow):
                for line in reply["lines"]:
                    print(line, flush=follow)
    except KeyboardInterrupt:
        return 0  # how one stops following
    except BrokenPipeError:
        _quiet_stdout()  # `pykld dmesg | head`: the reader has what it wanted
        return 0
    except OSError as exc:
        return fail_with("can't read the message buffer", exc)
    return 0


def fail(words: list[str], listing: bool, clearing: bool) -> int:
    """fail(9) rules in the daemon: set one (the words), list them (-l), or clear (-c [DEVICE [OP]])."""
    try:
        if listing:
            for rule in client.call("fail_list")["rules"]:
                print(rule)
            return 0
        if clearing:
            if len(words) > 2:
                raise OSError(errno.EINVAL, "fail -c takes at most DEVICE and OP", None)
            device, operation = (*words, None, None)[:2]
            cleared = client.call("fail_clear", device=device, operation=operation)
            print(f"pykld: cleared {cleared['cleared']} rule(s)", file=sys.stderr)
            return 0
        added = client.call("fail", rule=" ".join(words))
    except OSError as exc:
        return fail_with("can't set the fault point" if not (listing or clearing) else "fail", exc)
    print(f"rule {added['id']}: {added['rule']}")
    return 0


def shutdown() -> int:
    try:
        client.call("shutdown")
    except OSError as exc:
        return fail_with("can't shut down", exc)
    return 0


def daemon(transport: str | None, dev_dir: str | None, bind: bool, foreground: bool) -> int:
    if foreground:
        from pykld.kld import daemon as server

        return server.main(transport, dev_dir, bind)
    try:
        client.connect().sock.close()
        print(f"pykld: a daemon is already running at {rundir.socket_path(rundir.run_dir())}", file=sys.stderr)
        return 1
    except client.NotRunning:
        pass
    except OSError as exc:
        return fail_with("can't start the daemon", exc)
    try:
        started = client.start_daemon(transport, dev_dir, bind)
    except OSError as exc:
        return fail_with("can't start the daemon", exc)
    print(f"pykld: daemon running (pid {started['pid']}, transport {started['transport']}; "
          f"log {rundir.log_path(rundir.run_dir())})", file=sys.stderr)
    return 0


def _quiet_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush is silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
