"""membuf_bench.py's report: markdown tables ready to paste into the READMEs, and the two charts.

Everything here reads the results.json structure (membuf_bench.main's `report`) and nothing else, so a
saved results.json can be reported again: `python bench/membuf_report.py bench/out/results.json`.
Cells with two placements read "own (shared)"; a contender that could not run is a column of n/a
with its reason listed under the tables.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import save_figure, use_file_backend

COLORS = {
    "pykld": "#1f5fa0", "pykld-python": "#7fb2e0", "pykld-uring": "#0b3463",
    "C-3.14": "#8c8c8c", "C-3.18": "#5a5a5a", "C-3.18-uring": "#222222", "pyfuse3": "#e08a2c",
}
BASE = "C-3.14"  # what the relative chart divides by


def _both(report: dict[str, Any], get: Callable[[dict[str, Any]], float | None], fmt: str) -> str:
    """One cell: the value in the first placement and, in brackets, in the second."""
    values = []
    for place in report["placements"].values():
        try:
            value = get(place)
        except KeyError:
            value = None
        values.append("n/a" if value is None else format(value, fmt))
    return values[0] + (f" ({values[1]})" if len(values) > 1 else "")


def _table(head: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(head) - 1)
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _rate(row: dict[str, Any]) -> str:
    text = f"{row['ops_per_s']:,.0f}"
    return text + (f" ({row['mb_per_s']:,.0f} MB/s)" if row.get("mb_per_s") else "")


def _ratio(name: str, value: float, goal: dict[str, float]) -> str:
    text = f"{value:.2f}"
    return f"**{text}**" if name in goal and value >= goal[name] else text


def markdown_report(report: dict[str, Any], names: list[str], ops: list[str], label: dict[str, str],
                    concurrency_ops: list[str]) -> str:
    info, places, goal = report["machine"], report["placements"], report["goal"]
    ran = [n for n in names if n not in report["unavailable"]]
    first = next(iter(places.values()))
    ratio_names = list(first["operations"][ops[0]]["ratios"])
    out = [
        f"membuf over FUSE, {info['date']}, {info['cpus']} x {info['cpu']}, Linux {info['kernel']}, "
        f"Python {info['python']}, libfuse {info['libfuse']} and {info['libfuse_318']}, pyfuse3 {info['pyfuse3']}; "
        f"{report['rounds']} rounds x {report['seconds_per_measurement']} s per operation and daemon "
        f"({report['concurrency_rounds']} rounds of the concurrency series), C fioc {info['fioc_threads']}; "
        f"load average {info['loadavg_start'][0]:.2f} -> {info['loadavg_end'][0]:.2f}; "
        f"fuse.enable_uring {info['enable_uring']}.",
        "Cells: daemons in their own sessions (in the client's session in brackets); ops/s are medians over "
        "rounds; **bold**: a pykld ratio that meets the goal (>= 1.0).",
        "",
        "Contenders: " + "; ".join(f"**{n}** {report['contenders'][n]}" for n in names) + ".",
    ]
    for body in places.values():
        out += ["", f"ops/s, daemons {body['description']}:", ""]
        rows = [[label[op]] + [_rate(body["operations"][op][n]) if n in ran else "n/a" for n in names] for op in ops]
        out.append(_table(["operation", *names], rows))
    if ratio_names:
        out += ["", "Ratios of ops/s:", ""]
        rows = [[label[op]] + [_bold_pair(r, _both(report, lambda p, op=op, r=r: p["operations"][op]["ratios"][r],
                                                   ".2f"), goal) for r in ratio_names] for op in ops]
        out.append(_table(["operation", *ratio_names], rows))
    out += ["", "Daemon CPU per operation, µs (all its threads):", ""]
    rows = [[label[op]] + [_both(report, lambda p, op=op, n=n: p["operations"][op][n]["daemon_cpu_us_per_op"], ",.1f")
                           if n in ran else "n/a" for n in names] for op in ops]
    out.append(_table(["operation", *names], rows))
    levels = [str(n) for n in report["levels"]]
    if levels:
        for op in concurrency_ops:
            out += ["", f"Concurrency, {label[op]}: aggregate ops/s of N client processes at once on the one "
                    "file (thousands), and daemon CPU µs per operation:", ""]
            rows = []
            for n in ran:
                cells = [_both(report, lambda p, op=op, k=k, n=n: p["concurrency"][op][k][n]["ops_per_s"] / 1e3,
                               ".1f") for k in levels]
                cpu = [_both(report, lambda p, op=op, k=k, n=n: p["concurrency"][op][k][n]["daemon_cpu_us_per_op"],
                             ".1f") for k in (levels[0], levels[-1])]
                rows.append([n, *cells, " → ".join(cpu)])
            for r in ratio_names:
                cells = [_bold_pair(r, _both(report, lambda p, op=op, k=k, r=r: p["concurrency"][op][k]["ratios"][r],
                                             ".2f"), goal) for k in levels]
                rows.append([r, *cells, ""])
            out.append(_table(["contender", *[f"{k} client{'s' * (k != '1')}" for k in levels],
                               f"CPU µs/op, {levels[0]} → {levels[-1]}"], rows))
    out += ["", "How each daemon serves (measured after its start: a 4 KiB pread loop):", ""]
    rows = []
    for n in ran:
        here = [report["served"].get(f"{n}@{p}") for p in places]
        here = [h for h in here if h]
        if not here:
            continue
        rings = " / ".join(str(h["io_uring_instances"]) for h in here)
        reads = " / ".join(f"{h['read_calls_per_request']:.2f}" for h in here)
        threads = " / ".join(str(h["threads_at_end"]) for h in here)
        how = "io_uring" if all(h["io_uring_instances"] and h["read_calls_per_request"] < 0.5 for h in here) \
            else "/dev/fuse read(2)"
        rows.append([n, how, rings, reads, threads])
    out.append(_table(["contender", "requests arrive by", "io_uring instances", "read(2) per request",
                       "threads at the end"], rows))
    if report["unavailable"]:
        out += ["", "Not measured here:"]
        out += [f"- **{n}**: {why}" for n, why in report["unavailable"].items()]
    return "\n".join(out)


def _bold_pair(ratio: str, cell: str, goal: dict[str, float]) -> str:
    """Bold each number of an "a (b)" ratio cell that meets the goal."""
    parts = cell.replace("(", "").replace(")", "").split()
    marked = [_ratio(ratio, float(v), goal) if v != "n/a" else v for v in parts]
    return marked[0] + (f" ({marked[1]})" if len(marked) > 1 else "")


# -- charts -----------------------------------------------------------------------------------------------


def chart_relative(report: dict[str, Any], names: list[str], ops: list[str], label: dict[str, str],
                   path: Path) -> None:
    """Grouped bars per placement: ops/s normalised to C 3.14's (= 1); absolute rates in the bars."""
    use_file_backend()
    import matplotlib.pyplot as plt

    info, places = report["machine"], report["placements"]
    base = BASE if BASE in names else names[0]
    width = 0.84 / len(names)
    fig, axes = plt.subplots(len(places), 1, figsize=(13, 5.2 * len(places)), sharey=True, squeeze=False)
    top = max(max(p["operations"][op][n]["ops_per_s"] / p["operations"][op][base]["ops_per_s"]
                  for p in places.values() for op in ops for n in names), 1.0)
    for ax, body in zip(axes[:, 0], places.values(), strict=True):
        summary = body["operations"]
        for i, name in enumerate(names):
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(ops))]
            ys = [summary[op][name]["ops_per_s"] / summary[op][base]["ops_per_s"] for op in ops]
            bars = ax.bar(xs, ys, width, label=name, color=COLORS.get(name))
            for bar, op in zip(bars, ops, strict=True):
                ax.text(bar.get_x() + bar.get_width() / 2, 0.02, f"{summary[op][name]['ops_per_s'] / 1000:,.1f}k",
                        ha="center", va="bottom", rotation=90, fontsize=7, color="white")
        ax.axhline(1.0, color="#444444", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(ops)))
        ax.set_xticklabels([label[op] for op in ops], fontsize=9)
        ax.set_title(f"daemons {body['description']}", fontsize=10)
        ax.set_ylim(0, top * 1.1)
        ax.set_ylabel(f"ops/s relative to {base}")
    axes[0][0].legend(loc="upper left", fontsize=8, ncol=len(names))
    fig.suptitle(f"membuf over FUSE, median ops/s over {report['rounds']} rounds (bars: thousands of ops/s) — "
                 f"{info['date'][:10]}, {info['cpus']} x {info['cpu']}, Linux {info['kernel']}, "
                 f"Python {info['python']}", fontsize=10)
    save_figure(fig, path)


def chart_concurrency(report: dict[str, Any], names: list[str], ops: list[str], label: dict[str, str],
                      path: Path) -> None:
    """Aggregate ops/s against the number of client processes: one panel per operation and placement."""
    use_file_backend()
    import matplotlib.pyplot as plt

    info, places = report["machine"], report["placements"]
    levels = [str(n) for n in report["levels"]]
    fig, axes = plt.subplots(len(ops), len(places), figsize=(6.5 * len(places), 4.6 * len(ops)), sharey="row",
                             squeeze=False)
    for row, op in enumerate(ops):
        top = max(body["concurrency"][op][k][n]["ops_per_s"] / 1e3 for body in places.values() for k in levels
                  for n in names)
        for col, body in enumerate(places.values()):
            ax = axes[row][col]
            for name in names:
                ys = [body["concurrency"][op][k][name]["ops_per_s"] / 1e3 for k in levels]
                ax.plot([int(k) for k in levels], ys, marker="o", label=name, color=COLORS.get(name),
                        linestyle="-" if name.startswith("pykld") else "--")
            ax.set_xscale("log", base=2)
            ax.set_xticks([int(k) for k in levels])
            ax.set_xticklabels(levels)
            ax.set_ylim(0, top * 1.08)
            ax.set_xlabel("client processes at once")
            ax.set_ylabel(f"{label[op]}: thousands of ops/s, all clients")
            ax.set_title(f"{label[op]}, daemons {body['description']}", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"membuf over FUSE, concurrency: median over {report['concurrency_rounds']} rounds — "
                 f"{info['date'][:10]}, {info['cpus']} x {info['cpu']}, Linux {info['kernel']}", fontsize=10)
    save_figure(fig, path)


if __name__ == "__main__":
    # Report a saved run again: python bench/membuf_report.py bench/out/results.json
    from membuf_bench import CONCURRENCY_OPS, OP_LABEL, OPS

    saved = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/out/results.json").read_text())
    print(markdown_report(saved, list(saved["contenders"]), OPS, OP_LABEL, CONCURRENCY_OPS))
