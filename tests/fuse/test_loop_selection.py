"""PYKLD_LOOP picks the request loop; without the extension the default is the Python loop
and PYKLD_LOOP=compiled is an error that says what is missing."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from pykld.transport import loop
from pykld.transport.session import Session

from .conftest import require_compiled_loop


def session() -> Session:
    return Session(-1, {}, 1 << 16)


def without_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pykld._loop", None)  # import fails as if never built


def test_the_extension_is_built_when_ci_requires_it() -> None:
    require_compiled_loop()  # PYKLD_REQUIRE_COMPILED_LOOP=1 (CI): a failure, not a skip
    assert session().loop == "compiled" or os.environ.get("PYKLD_LOOP") == "python"


def test_pykld_loop_picks_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYKLD_LOOP", "python")
    assert session().loop == "python"
    require_compiled_loop()
    monkeypatch.setenv("PYKLD_LOOP", "compiled")
    assert session().loop == "compiled"
    monkeypatch.delenv("PYKLD_LOOP")
    chosen = session()
    assert chosen.loop == "compiled" and "default" in chosen.loop_why


def test_an_unknown_loop_is_einval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYKLD_LOOP", "fast")
    with pytest.raises(OSError) as raised:
        session()
    assert raised.value.errno == errno.EINVAL and "PYKLD_LOOP=fast" in str(raised.value)


def test_without_the_extension_the_default_is_python_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    without_extension(monkeypatch)
    monkeypatch.delenv("PYKLD_LOOP", raising=False)
    chosen = session()
    assert chosen.loop == "python" and "pykld._loop is missing" in chosen.loop_why


def test_asking_for_the_compiled_loop_without_the_extension_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    without_extension(monkeypatch)
    monkeypatch.setenv("PYKLD_LOOP", "compiled")
    with pytest.raises(OSError) as raised:
        session()
    assert raised.value.errno == errno.ELIBACC
    assert "pykld._loop is missing" in str(raised.value) and "PYKLD_LOOP=python" in str(raised.value)


def test_dmesg_says_once_which_loop_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "_announced", set())
    monkeypatch.setenv("PYKLD_LOOP", "python")
    said: list[str] = []
    for _ in range(2):
        loop.announce(session().loop_why, said.append)
    assert said == ["the Python request loop serves (PYKLD_LOOP=python)"]
