"""pykld's pytest plugin, registered through the `pytest11` entry point: installing
pykld gives every test file these fixtures and markers, no conftest needed.

Fixtures
    pykld_kernel   an in-process Kernel.  At teardown every module is unloaded and the
                   test fails (an error at teardown) on what was leaked: open files,
                   malloc bytes in use, sleeping threads, devices or sysctl nodes left.
    pykld_host     a Kernel in this process published on a real transport: the best this
                   machine has (cuse, then fuse), or the one `pykld_transport` asks for.
                   `pykld_host.load(PATH)` loads a module and returns its device paths,
                   which any program can open.  Torn down (unloaded, unmounted) even when
                   the test fails, with the same leak check.
    pykld_fail     set fail(9) fault points on the test's kernel (pykld_host's when the test
                   uses it, else pykld_kernel's) from the words `pykld fail` takes:
                   pykld_fail("rustmodule read error EIO --after 1 --times 2").  Cleared at
                   teardown.

Markers
    @pytest.mark.pykld_transport("fuse", ...)   run on the first of these transports this
        machine has; skip, saying why, where none is, or fail instead when a
        PYKLD_REQUIRE_<NAME>=1 variable (PYKLD_REQUIRE_FUSE, PYKLD_REQUIRE_CUSE) makes one mandatory.
    @pytest.mark.pykld_leaks(allow=("malloc",))  kinds of leak this test may leave.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from pykld.kernel.fail import FailRule, parse
from pykld.kernel.kernel import Kernel
from pykld.testing.leaks import unload_all
from pykld.transport import registry

if TYPE_CHECKING:
    from pykld.transport.registry import Transport

REAL_TRANSPORTS = ("cuse", "fuse")
DMESG_TAIL = 20  # lines of dmesg shown with a leak report


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pykld_transport(*names): run on the first of these pykld transports this machine has; "
        "skip where none is (fail under PYKLD_REQUIRE_<NAME>=1)")
    config.addinivalue_line("markers", "pykld_leaks(allow=()): kinds of leak (open files, malloc, sleeping "
                            "threads, devices, sysctl) the pykld fixtures accept from this test")


def required(name: str) -> bool:
    return os.environ.get(f"PYKLD_REQUIRE_{name.upper()}") == "1"


def choose_transport(wanted: tuple[str, ...]) -> registry.Choice:
    """The first of `wanted` this machine can run; else skip with every reason, or fail
    when PYKLD_REQUIRE_<NAME>=1 names one of them."""
    why: list[str] = []
    for name in wanted:
        try:
            return registry.pick(name)
        except OSError as exc:
            why.append(exc.strerror or str(exc))
    reason = "; ".join(why)
    mandatory = [f"PYKLD_REQUIRE_{n.upper()}=1" for n in wanted if required(n)]
    if mandatory:
        pytest.fail(f"{reason}, and {' '.join(mandatory)} makes it mandatory", pytrace=False)
    pytest.skip(reason)


def _wanted(item: pytest.Item) -> tuple[str, ...] | None:
    marker = item.get_closest_marker("pykld_transport")
    if marker is None:
        return None
    names = tuple(marker.args)
    unknown = [n for n in names if n not in registry.TRANSPORTS]
    if not names or unknown:
        pytest.fail(f"pykld_transport needs transport names among {', '.join(registry.TRANSPORTS)}, "
                    f"got {names!r}", pytrace=False)
    return names


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    wanted = _wanted(item)
    if wanted is not None:
        choose_transport(wanted)  # skips (or fails) before any fixture mounts anything


def _check_leaks(request: pytest.FixtureRequest, kernel: Kernel, kept: frozenset[str] = frozenset()) -> None:
    """Unload everything; fail the test on the leaks its marker does not allow.
    `kept`: sysctl nodes there before the test (a transport's own), not leaks."""
    marker = request.node.get_closest_marker("pykld_leaks")
    allowed = tuple(marker.kwargs.get("allow", ())) if marker is not None else ()
    leaks = [leak for leak in unload_all(kernel, kept=kept) if not leak.startswith(allowed)]
    if leaks:
        tail = "\n".join(kernel.dmesg()[-DMESG_TAIL:])
        pytest.fail("pykld: the test left behind:\n  " + "\n  ".join(leaks) + f"\ndmesg (last lines):\n{tail}",
                    pytrace=False)


@pytest.fixture
def pykld_kernel(request: pytest.FixtureRequest) -> Iterator[Kernel]:
    kernel = Kernel()
    yield kernel
    _check_leaks(request, kernel)


class Host:
    """A kernel whose devices are published on a real transport."""

    def __init__(self, kernel: Kernel, transport: Transport, how: str) -> None:
        self.kernel = kernel
        self.transport = transport
        self.how = how  # "asked for", or how the best available was picked

    @property
    def name(self) -> str:
        return self.transport.name

    def load(self, target: str) -> list[str]:
        """kldload `target` and return the paths of its devices, once they exist."""
        module_id = self.kernel.kldload(target)
        self.transport.settle()
        return [self.transport.device_path(c.name) for c in self.kernel.module(module_id).live_cdevs]

    def path(self, device: str) -> str:
        """Where programs open the device named `device` ("rustmodule")."""
        return self.transport.device_path(device)


@pytest.fixture
def pykld_host(request: pytest.FixtureRequest) -> Iterator[Host]:
    choice = choose_transport(_wanted(request.node) or REAL_TRANSPORTS)
    kernel = Kernel()
    dev_dir = tempfile.mkdtemp(prefix="pykld-dev-")
    os.chmod(dev_dir, 0o755)  # other users' programs may be under test too
    transport = registry.make_transport(kernel, choice.name, dev_dir, bind=False)
    try:
        transport.start()
        # The transport's own nodes (FUSE's kern.fuse.uring.*) live as long as it does.
        kept = frozenset(oid.name for oid in kernel.sysctl_list())
        yield Host(kernel, transport, choice.how)
        _check_leaks(request, kernel, kept)
    finally:
        kernel.shutdown()  # a no-op after the leak check; the test failing before it is why it is here
        transport.stop()
        shutil.rmtree(dev_dir, ignore_errors=True)


@pytest.fixture
def pykld_fail(request: pytest.FixtureRequest) -> Iterator[Callable[[str], FailRule]]:
    kernel: Kernel
    if "pykld_host" in request.fixturenames:
        kernel = request.getfixturevalue("pykld_host").kernel
    else:
        kernel = request.getfixturevalue("pykld_kernel")

    def fail(words: str) -> FailRule:
        return kernel.fail(**parse(words))

    yield fail
    kernel.fail_clear()
