"""malloc(9): accounting per malloc type, limits, M_NOWAIT/M_WAITOK/M_ZERO, realloc and free."""

from __future__ import annotations

import errno
import gc
from collections.abc import Callable

import pytest

from pykld import M_NOWAIT, M_WAITOK, M_ZERO, Kernel, MallocType, Memory, free, malloc, realloc


def test_malloc_accounts_per_type() -> None:
    a, b = MallocType("a"), MallocType("b")
    m1 = malloc(100, a)
    m2 = malloc(50, a, M_WAITOK | M_ZERO)
    m3 = malloc(7, b, M_NOWAIT)
    assert isinstance(m1, Memory) and len(m1) == 100 and m1.mtype is a
    assert m2 == bytearray(50)  # zeroed
    assert m3 is not None and len(m3) == 7
    sa, sb = a.stat(), b.stat()
    assert (sa.name, sa.inuse, sa.allocations, sa.requests, sa.failures, sa.highwater) == ("a", 150, 2, 2, 0, 150)
    assert (sb.inuse, sb.allocations, sb.requests) == (7, 1, 1)


def test_free_returns_the_bytes_and_highwater_stays() -> None:
    t = MallocType("t")
    mem = malloc(64, t)
    assert mem is not None
    free(mem)
    assert len(mem) == 0
    stat = t.stat()
    assert (stat.inuse, stat.allocations, stat.highwater) == (0, 0, 64)
    free(mem)  # a second free does not credit twice
    assert t.stat().inuse == 0


def test_dropping_the_last_reference_credits_the_account() -> None:
    t = MallocType("gc")
    mem = malloc(1000, t)
    assert t.stat().inuse == 1000
    del mem
    gc.collect()
    assert (t.stat().inuse, t.stat().allocations) == (0, 0)


def test_dropping_a_freed_allocation_does_not_credit_twice() -> None:
    t = MallocType("t")
    mem = malloc(10, t)
    keep = malloc(5, t)
    assert mem is not None and keep is not None
    free(mem)
    del mem
    gc.collect()
    assert (t.stat().inuse, t.stat().allocations) == (5, 1)


def test_limit_nowait_returns_none() -> None:
    t = MallocType("lim", limit=100)
    first = malloc(60, t, M_NOWAIT)
    assert first is not None
    assert malloc(41, t, M_NOWAIT) is None
    stat = t.stat()
    assert (stat.inuse, stat.failures, stat.requests, stat.limit) == (60, 1, 2, 100)
    assert malloc(40, t, M_NOWAIT) is not None  # exactly at the limit is fine


def test_limit_waitok_raises_enomem() -> None:
    t = MallocType("lim", limit=10)
    with pytest.raises(OSError) as excinfo:
        malloc(11, t, M_WAITOK)
    assert excinfo.value.errno == errno.ENOMEM
    assert t.stat().failures == 1
    assert t.stat().inuse == 0


def test_realloc_grows_and_shrinks_keeping_contents() -> None:
    t = MallocType("r")
    mem = malloc(4, t)
    assert mem is not None
    mem[:] = b"abcd"
    assert realloc(mem, 8) is mem
    assert bytes(mem) == b"abcd\0\0\0\0"
    assert t.stat().inuse == 8
    realloc(mem, 2)
    assert bytes(mem) == b"ab"
    assert (t.stat().inuse, t.stat().highwater, t.stat().allocations) == (2, 8, 1)


def test_realloc_past_limit_leaves_buffer_unchanged() -> None:
    t = MallocType("r", limit=16)
    mem = malloc(8, t)
    assert mem is not None
    mem[:] = b"12345678"
    assert realloc(mem, 17, M_NOWAIT) is None
    with pytest.raises(OSError) as excinfo:
        realloc(mem, 1000, M_WAITOK)
    assert excinfo.value.errno == errno.ENOMEM
    assert bytes(mem) == b"12345678"
    stat = t.stat()
    assert (stat.inuse, stat.failures) == (8, 2)
    assert realloc(mem, 16) is mem  # up to the limit still works


@pytest.mark.parametrize("size", [-1, -100])
def test_negative_size_is_einval(size: int) -> None:
    t = MallocType("neg")
    with pytest.raises(OSError) as excinfo:
        malloc(size, t, M_NOWAIT)  # EINVAL even for M_NOWAIT: it is bad input, not a shortage
    assert excinfo.value.errno == errno.EINVAL
    mem = malloc(3, t)
    assert mem is not None
    with pytest.raises(OSError) as excinfo:
        realloc(mem, size)
    assert excinfo.value.errno == errno.EINVAL
    assert len(mem) == 3
    assert t.stat().inuse == 3


def test_negative_limit_rejected() -> None:
    with pytest.raises(ValueError):
        MallocType("bad", limit=-1)


def test_zero_size_allocation() -> None:
    t = MallocType("z", limit=0)
    mem = malloc(0, t)
    assert mem is not None and len(mem) == 0
    assert malloc(1, t, M_NOWAIT) is None


def test_kernel_malloc_stats_shows_module_types(kernel: Kernel, load_driver: Callable[..., int]) -> None:
    load_driver(
        """
        from pykld import M_WAITOK, MallocType, Module, malloc

        M_DRV = MallocType("drvbuf", limit=4096)
        M_OTHER = MallocType("drvother")

        class Drv(Module):
            name = "drv"

            def load(self):
                self.buf = malloc(1000, M_DRV, M_WAITOK)
        """
    )
    stats = {s.name: s for s in kernel.malloc_stats()}
    assert stats["drvbuf"].inuse == 1000
    assert stats["drvbuf"].limit == 4096
    assert stats["drvother"].inuse == 0
    kernel.kldunload("drv")
    assert kernel.malloc_stats() == []


def test_malloc_stats_include_types_not_at_module_level(
    kernel: Kernel, load_driver: Callable[..., int]
) -> None:
    # A type held elsewhere (here on the class) is shown once the module allocates from it.
    load_driver(
        """
        from pykld import MallocType, Module, malloc

        class Drv(Module):
            name = "drv"
            hidden = MallocType("hidden")

            def load(self):
                self.buf = malloc(12, self.hidden)
        """
    )
    assert [(s.name, s.inuse) for s in kernel.malloc_stats()] == [("hidden", 12)]


def test_unload_reports_leaked_memory(kernel: Kernel, load_driver: Callable[..., int]) -> None:
    load_driver(
        """
        from pykld import MallocType, Module, malloc

        M_LEAKY = MallocType("leaky")

        class Drv(Module):
            name = "drv"

            def load(self):
                self.buf = malloc(300, M_LEAKY)
        """
    )
    kernel.kldunload("drv")
    assert any(line.endswith("drv: malloc type leaky leaks 300 bytes") for line in kernel.dmesg())


def test_membuf_frees_its_memory_at_unload(kernel: Kernel, example: Callable[[str], str]) -> None:
    import os

    kernel.kldload(example("membuf"))
    with kernel.open("/dev/membuf", os.O_RDWR) as f:
        f.write(b"x" * 100)
    kernel.kldunload("membuf")
    assert not any("leaks" in line for line in kernel.dmesg())
