"""The import rule the README states, read from the source: drivers → kpi → kernel;
transports → kernel and fuse; fuse imports nothing of pykld; the kld tools on top,
imported by nobody below them.  Imports under TYPE_CHECKING count too."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pykld"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# layer -> the layers its modules may import
ALLOWED = {
    "fuse": {"fuse"},
    "kernel": {"kernel"},
    "kpi": {"kpi", "kernel"},
    "bus": {"bus", "kpi"},  # emulated buses above the KPI; drivers import them
    "tty": {"tty", "kpi", "kernel"},  # serial ports above the KPI; drivers import them
    "transport": {"transport", "kernel", "fuse", "_ext"},  # _ext: their compiled half, the C extensions
    "kld": {"kld", "kernel", "transport", "fuse", "testing"},
    "testing": {"testing", "", "kpi", "kernel", "transport"},  # the pytest plugin and record/replay
    "": {"", "kernel", "kpi"},  # pykld/__init__.py: the kernel and the KPI, the package's face
    "__main__": {"kld"},
}


def layer_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    if rel.parts[0] == "__main__.py":
        return "__main__"
    return "" if len(rel.parts) == 1 else rel.parts[0]


def pykld_imports(path: Path) -> list[str]:
    """Every pykld module `path` imports, as dotted names below pykld ("kernel.sched")."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pykld":
                names += [alias.name for alias in node.names]
            elif node.module.startswith("pykld."):
                names.append(node.module[len("pykld."):])
        elif isinstance(node, ast.Import):
            names += [a.name[len("pykld."):] for a in node.names if a.name.startswith("pykld.")]
    return names


# The C extensions built from src/pykld/_ext/: the request loops, which only transports run.
EXTENSIONS = {"_loop"}


def target_layer(name: str) -> str:
    head = name.split(".")[0]
    if head in EXTENSIONS:
        return "_ext"
    return head if (SRC / head).is_dir() else ""


def test_every_import_follows_the_layering() -> None:
    broken = []
    for path in sorted(SRC.rglob("*.py")):
        layer = layer_of(path)
        for name in pykld_imports(path):
            if target_layer(name) not in ALLOWED[layer]:
                broken.append(f"{path.relative_to(SRC)} imports pykld.{name}")
    assert broken == []


def test_examples_import_only_the_kpi_and_buses() -> None:
    for path in sorted(EXAMPLES.glob("*.py")):
        for name in pykld_imports(path):
            assert target_layer(name) in ("", "bus", "tty"), \
                f"{path.name} imports pykld.{name}: drivers use `from pykld import`, `pykld.bus` and `pykld.tty`"


def test_the_checker_sees_a_broken_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pykld.transport.sim import SimFile\n"
                   "import pykld.kld.cli\nfrom pykld import kernel\n")
    assert sorted(pykld_imports(bad)) == ["kernel", "kld.cli", "transport.sim"]
    assert sorted(target_layer(n) for n in pykld_imports(bad)) == ["kernel", "kld", "transport"]


def test_the_client_does_not_import_the_daemon() -> None:
    """A `pykld stat` must not load the daemon's code (and its transports) to talk to it."""
    assert not [n for n in pykld_imports(SRC / "kld" / "client.py") if n.startswith("kld.daemon")]
