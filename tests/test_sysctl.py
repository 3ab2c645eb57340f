"""sysctl(9) in process: nodes a module publishes, read and set through the Kernel."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from pykld import Kernel

SENSOR = """
    import errno
    from pykld.kpi import Module, sysctl_add

    class Sensor(Module):
        name = "sensor"

        def load(self):
            self.millidegrees = 25000
            self.contents = bytes(4)
            self.log = []
            def set_temperature(value):
                if not -40000 <= value <= 125000:
                    raise OSError(errno.EINVAL, "outside the sensor's range")
                self.millidegrees = value
                self.log.append(value)
            sysctl_add("dev.sensor.0.temperature", "int", lambda: self.millidegrees, set_temperature,
                       "temperature in millidegrees Celsius")
            sysctl_add("dev.sensor.0.contents", "hex", lambda: self.contents,
                       lambda value: setattr(self, "contents", value), "memory contents")
            sysctl_add("dev.sensor.0.enabled", "bool", lambda: True)
            sysctl_add("dev.sensor.0.gain", "float", lambda: 1.5, lambda value: None)
            sysctl_add("dev.sensor.0.model", "str", lambda: "TMP102")
"""


@pytest.fixture
def sensor(kernel: Kernel, load_driver: Callable[..., int]) -> Kernel:
    load_driver(SENSOR, "sensor")
    return kernel


def test_values_read_and_set_as_python_values_and_as_text(sensor: Kernel) -> None:
    assert sensor.sysctl("dev.sensor.0.temperature") == 25000
    assert sensor.sysctl("dev.sensor.0.temperature", 30000) == 25000  # the old value comes back
    assert sensor.sysctl("dev.sensor.0.temperature", " -0x10 ") == 30000  # text, as the command line gives
    assert sensor.sysctl("dev.sensor.0.temperature") == -16
    assert sensor.module("sensor").instance.log == [30000, -16]  # the setter got parsed ints
    sensor.sysctl("dev.sensor.0.contents", "de ad be ef")
    assert sensor.sysctl("dev.sensor.0.contents") == b"\xde\xad\xbe\xef"
    assert sensor.sysctl("dev.sensor.0.model") == "TMP102"
    assert sensor.sysctl("dev.sensor.0.enabled") is True


def test_listing_is_by_name_below_a_prefix(sensor: Kernel) -> None:
    names = [oid.name for oid in sensor.sysctl_list("dev.sensor")]
    assert names == sorted(names) and len(names) == 5
    assert [oid.name for oid in sensor.sysctl_list("dev.sensor.0.model")] == ["dev.sensor.0.model"]
    temperature = sensor.sysctl_list("dev.sensor.0.temperature")[0]
    assert (temperature.kind, temperature.writable, temperature.descr) == (
        "int", True, "temperature in millidegrees Celsius")
    assert temperature.format(temperature.value()) == "25000"
    with pytest.raises(OSError) as partial:
        sensor.sysctl_list("dev.sens")  # a prefix counts whole components only
    assert partial.value.errno == errno.ENOENT


@pytest.mark.parametrize(("name", "value", "code"), [
    ("dev.sensor.0.nothing", None, errno.ENOENT),
    ("dev.sensor.0.model", "TMP117", errno.EPERM),  # read-only
    ("dev.sensor.0.temperature", "warm", errno.EINVAL),  # not an int
    ("dev.sensor.0.temperature", 200000, errno.EINVAL),  # the driver refuses it
    ("dev.sensor.0.temperature", True, errno.EINVAL),  # a bool is not an int
    ("dev.sensor.0.contents", "xyz", errno.EINVAL),
    ("dev.sensor.0.gain", "warm", errno.EINVAL),
])
def test_bad_names_and_values_are_refused_and_change_nothing(sensor: Kernel, name: str, value: object,
                                                             code: int) -> None:
    with pytest.raises(OSError) as refused:
        if value is None:
            sensor.sysctl(name)
        else:
            sensor.sysctl(name, value)
    assert refused.value.errno == code
    assert sensor.sysctl("dev.sensor.0.temperature") == 25000


def test_nodes_go_away_with_their_module(sensor: Kernel) -> None:
    sensor.kldunload("sensor")
    assert sensor.sysctl_list() == []
    with pytest.raises(OSError) as gone:
        sensor.sysctl("dev.sensor.0.temperature")
    assert gone.value.errno == errno.ENOENT


def test_a_second_module_cannot_take_a_name_or_hang_a_leaf_under_one(
        sensor: Kernel, load_driver: Callable[..., int]) -> None:
    for name in ("dev.sensor.0.temperature", "dev.sensor.0.model.x", "dev.sensor", "bad..name", "sp ace"):
        source = f"""
            from pykld.kpi import Module, sysctl_add
            class Other(Module):
                name = "other"
                def load(self):
                    sysctl_add({name!r}, "int", lambda: 1)
        """
        with pytest.raises(OSError) as refused:
            load_driver(source, "other")
        assert refused.value.errno in (errno.EEXIST, errno.EINVAL), name
    assert sensor.sysctl("dev.sensor.0.temperature") == 25000  # the failed loads left it alone


def test_a_getter_that_crashes_or_returns_garbage_is_eio_and_logged(
        kernel: Kernel, load_driver: Callable[..., int]) -> None:
    load_driver("""
        from pykld.kpi import Module, sysctl_add
        class Broken(Module):
            name = "broken"
            def load(self):
                sysctl_add("dev.broken.crash", "int", lambda: 1 // 0)
                sysctl_add("dev.broken.garbage", "int", lambda: "seven")
                sysctl_add("dev.broken.setter", "int", lambda: 1, lambda value: [][value])
    """, "broken")
    for name in ("dev.broken.crash", "dev.broken.garbage"):
        with pytest.raises(OSError) as broken:
            kernel.sysctl(name)
        assert broken.value.errno == errno.EIO
    with pytest.raises(OSError) as setter:
        kernel.sysctl("dev.broken.setter", 3)
    assert setter.value.errno == errno.EIO
    log = "\n".join(kernel.dmesg())
    assert "ZeroDivisionError" in log and "'seven'" in log and "IndexError" in log


def test_sysctl_remove_takes_a_node_away_before_unload(kernel: Kernel, load_driver: Callable[..., int]) -> None:
    load_driver("""
        from pykld.kpi import Module, sysctl_add, sysctl_remove
        class Brief(Module):
            name = "brief"
            def load(self):
                sysctl_remove(sysctl_add("dev.brief.gone", "int", lambda: 1))
                sysctl_add("dev.brief.kept", "int", lambda: 2)
    """, "brief")
    assert [oid.name for oid in kernel.sysctl_list()] == ["dev.brief.kept"]
