"""The request loop a test runs on: each test that takes `request_loop` runs once per
loop (PYKLD_LOOP=python, then compiled).  Without the extension the compiled run is
skipped, or fails when PYKLD_REQUIRE_COMPILED_LOOP=1 (CI)."""

from __future__ import annotations

import importlib
import os

import pytest


def require_compiled_loop() -> None:
    try:
        importlib.import_module("pykld._loop")
    except ImportError as exc:
        why = f"the compiled request loop pykld._loop is not built ({exc})"
        if os.environ.get("PYKLD_REQUIRE_COMPILED_LOOP") == "1":
            pytest.fail(f"{why}, and PYKLD_REQUIRE_COMPILED_LOOP=1 makes it mandatory")
        pytest.skip(why)


@pytest.fixture(params=["python", "compiled"])
def request_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "compiled":
        require_compiled_loop()
    monkeypatch.setenv("PYKLD_LOOP", request.param)
    return str(request.param)
