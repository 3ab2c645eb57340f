"""The pytest plugin (pykld.testing.plugin) as a user meets it: a test file of their own,
no conftest, run by pytest's pytester.  The in-process fixtures here; the ones that mount
a real transport in tests/transport/test_testing_host.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def user_tests(pytester: pytest.Pytester, source: str) -> None:
    pytester.makepyfile(test_user=textwrap.dedent(f"""
        import errno, os, threading, time
        import pytest
        HELLO = {str(EXAMPLES / "hello.py")!r}
        THERMO = {str(EXAMPLES / "thermo.py")!r}
    """) + textwrap.dedent(source))


def test_a_clean_test_passes_and_the_kernel_is_emptied(pytester: pytest.Pytester) -> None:
    user_tests(pytester, """
        def test_hello(pykld_kernel):
            pykld_kernel.kldload(HELLO)
            with pykld_kernel.open("/dev/rustmodule", os.O_RDWR) as f:
                f.write(b"hi rust\\n")
                assert f.pread(100, 0) == b"hi rust\\n"
    """)
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_file_left_open_fails_the_test_at_teardown(pytester: pytest.Pytester) -> None:
    user_tests(pytester, """
        def test_forgets_to_close(pykld_kernel):
            pykld_kernel.kldload(HELLO)
            pykld_kernel.open("/dev/rustmodule")
    """)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*the test left behind:*", "*open files: /dev/rustmodule: 1 still open*"])


def test_malloc_bytes_still_in_use_after_unload_fail_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(leaky=textwrap.dedent("""
        from pykld import M_WAITOK, MallocType, Module, malloc
        M_LEAKY = MallocType("leaky")
        class Leaky(Module):
            def load(self):
                self.buffer = malloc(96, M_LEAKY, M_WAITOK)   # never freed
    """))
    user_tests(pytester, """
        def test_loads_a_leaky_driver(pykld_kernel):
            pykld_kernel.kldload("leaky.py")
    """)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*malloc: module leaky: type leaky: 96 bytes in 1 allocation(s) still in use*"])


def test_a_caller_still_asleep_in_a_driver_is_a_leak(pytester: pytest.Pytester) -> None:
    user_tests(pytester, """
        def test_leaves_a_reader_blocked(pykld_kernel):
            pykld_kernel.kldload(FIFO)
            f = pykld_kernel.open("/dev/fifo")
            errors = []
            def reader():
                try:
                    f.read(10)
                except OSError as exc:
                    errors.append(exc.errno)
            threading.Thread(target=reader, daemon=True).start()
            while not pykld_kernel.lookup("fifo").active:
                time.sleep(0.01)
    """.replace("FIFO", repr(str(EXAMPLES / "fifo.py"))))
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*sleeping threads: 1 still inside the driver of /dev/fifo*"])


def test_module_sysctl_nodes_go_at_unload_and_others_are_a_leak(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(sensor=textwrap.dedent("""
        from pykld import Module, sysctl_add
        class Sensor(Module):
            def load(self):
                sysctl_add("dev.sensor.0.temperature", "int", lambda: 23)
    """))
    user_tests(pytester, """
        from pykld.kernel.sysctl import SysctlOid
        def test_module_node(pykld_kernel):
            pykld_kernel.kldload("sensor.py")
            assert pykld_kernel.sysctl("dev.sensor.0.temperature") == 23

        def test_stray_node(pykld_kernel):
            pykld_kernel.sysctl_add(SysctlOid("debug.stray", "int", "", lambda: 1, None, None))
    """)
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_stray_node*",
                                 "*sysctl: debug.stray still exists after every module unloaded*"])


def test_a_marker_allows_a_kind_of_leak(pytester: pytest.Pytester) -> None:
    user_tests(pytester, """
        @pytest.mark.pykld_leaks(allow=("open files",))
        def test_forgets_to_close(pykld_kernel):
            pykld_kernel.kldload(HELLO)
            pykld_kernel.open("/dev/rustmodule")
    """)
    pytester.runpytest().assert_outcomes(passed=1)


def test_the_fail_fixture_injects_faults_and_clears_them(pytester: pytest.Pytester) -> None:
    user_tests(pytester, """
        def test_sensor_read_fails_once(pykld_kernel, pykld_fail):
            pykld_kernel.kldload(THERMO)
            rule = pykld_fail("thermo0 read error EIO --after 1 --times 1")
            with pykld_kernel.open("/dev/thermo0") as f:
                assert f.pread(64, 0) == b"23500\\n"
                with pytest.raises(OSError) as caught:
                    f.pread(64, 0)
                assert caught.value.errno == errno.EIO
                assert f.pread(64, 0) == b"23500\\n"
            assert (rule.calls, rule.fired) == (3, 1)
            assert pykld_kernel.lookup("thermo0").stats.injected == 1
    """)
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_bad_transport_name_is_an_error_and_sim_serves_in_process(pytester: pytest.Pytester) -> None:
    user_tests(pytester, """
        @pytest.mark.pykld_transport("nosuch")
        def test_bad_name():
            pass

        @pytest.mark.pykld_transport("sim")
        def test_on_sim(pykld_host):
            assert pykld_host.name == "sim"
            assert pykld_host.load(HELLO) == ["/dev/rustmodule"]
    """)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*pykld_transport needs transport names among cuse, fuse, sim*"])


def test_a_missing_transport_skips_or_fails_under_pykld_require(pytester: pytest.Pytester,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from pykld.transport import registry
    monkeypatch.setattr(registry, "cuse_unavailable", lambda: "no /dev/cuse (as on this test's machine)")
    user_tests(pytester, """
        @pytest.mark.pykld_transport("cuse")
        def test_needs_cuse():
            raise AssertionError("must not run")
    """)
    monkeypatch.delenv("PYKLD_REQUIRE_CUSE", raising=False)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*transport cuse is not available here: no /dev/cuse (as on this*"])
    monkeypatch.setenv("PYKLD_REQUIRE_CUSE", "1")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no /dev/cuse*and PYKLD_REQUIRE_CUSE=1 makes it mandatory*"])


def test_the_plugin_comes_with_the_installed_package(pytester: pytest.Pytester) -> None:
    """A fresh interpreter, a file with no conftest and no pytest_plugins: the entry point does it."""
    user_tests(pytester, """
        def test_uses_the_fixture(pykld_kernel):
            assert pykld_kernel.kldload(HELLO) == 1
    """)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
