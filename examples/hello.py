"""The seed's hello module: /dev/rustmodule holds the last message written to it.

    kldload hello; echo "hi rust" > /dev/rustmodule; cat /dev/rustmodule; kldunload hello
"""

from pykld import CharacterDevice, Module, OpenFile, Uio, make_dev, printf


class Hello(CharacterDevice):
    def __init__(self) -> None:
        self.message = b"Default hello message\n"

    def open(self, file: OpenFile) -> None:
        printf("[module.py] Hello::open")

    def close(self, file: OpenFile) -> None:
        printf("[module.py] Hello::close")

    def read(self, file: OpenFile, uio: Uio) -> None:
        printf("[module.py] Hello::read")
        uio.move_out(self.message)  # from the caller's offset, at most resid bytes

    def write(self, file: OpenFile, uio: Uio) -> None:
        printf("[module.py] Hello::write")
        self.message = uio.move_in()  # the bytes of this write
        printf(f"Read {len(self.message)} bytes. Setting new message to {self.message!r}")


class HelloModule(Module):
    name = "hello"

    def load(self) -> None:
        printf("[module.py] Hello::load")
        self.cdev = make_dev(Hello(), "rustmodule", mode=0o666)

    def unload(self) -> None:
        printf("[module.py] Hello::unload")
        self.cdev.destroy()
