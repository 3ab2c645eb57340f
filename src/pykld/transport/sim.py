"""The sim transport: devices exist only inside this process's kernel.

Nothing is mounted or published; callers open them with `Kernel.open`, which
gives the in-process file descriptor (kernel/fd.py).
"""

from __future__ import annotations


class SimTransport:
    """The sim transport as the runners see one: nothing to mount or publish; the
    devices exist only inside this process's kernel (`Kernel.open`)."""

    name = "sim"

    def start(self) -> None:
        pass

    def settle(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def device_path(self, cdev_name: str) -> str:
        return f"/dev/{cdev_name}"
