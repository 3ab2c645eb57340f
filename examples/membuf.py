"""membuf: a resizable in-memory buffer, compatible with libfuse's fioc example device.

pread/pwrite at any offset (writing past the end grows the buffer), and the
fioc ioctls: FIOC_GET_SIZE/FIOC_SET_SIZE with the size in the argument, and
FIOC_READ/FIOC_WRITE through pointers in a struct fioc_rw_arg, which only an
unrestricted-ioctl transport (CUSE) can carry.  The buffer's malloc type has a
limit: growth past it is ENOMEM and leaves the buffer as it was.
"""

import errno
import os
import struct

from pykld import (
    _IO,
    _IOR,
    _IOW,
    M_WAITOK,
    CharacterDevice,
    MallocType,
    Module,
    OpenFile,
    Uio,
    copyin,
    copyout,
    free,
    make_dev,
    malloc,
    realloc,
)

SIZE_T = struct.Struct("=Q")
# struct fioc_rw_arg { off_t offset; void *buf; size_t size; size_t prev_size; size_t new_size; }
FIOC_RW_ARG = struct.Struct("=qQQQQ")

FIOC_GET_SIZE = _IOR("E", 0, SIZE_T.size)
FIOC_SET_SIZE = _IOW("E", 1, SIZE_T.size)
FIOC_READ = _IO("E", 2)
FIOC_WRITE = _IO("E", 3)

LIMIT = int(os.environ.get("PYKLD_MEMBUF_LIMIT", str(64 << 20)))
M_MEMBUF = MallocType("membuf", limit=LIMIT, description="membuf device contents")


class Membuf(CharacterDevice):
    def __init__(self) -> None:
        self.data = malloc(0, M_MEMBUF, M_WAITOK)

    def resize(self, size: int) -> None:
        if size < 0:
            raise OSError(errno.EINVAL, f"invalid size {size}")
        realloc(self.data, size, M_WAITOK)  # ENOMEM past the limit, buffer unchanged

    def read(self, file: OpenFile, uio: Uio) -> None:
        uio.move_out(self.data)

    def write(self, file: OpenFile, uio: Uio) -> None:
        offset, end = uio.offset, uio.offset + uio.resid
        if end > len(self.data):
            self.resize(end)
        uio.move_into(self.data, offset)

    def ioctl(self, file: OpenFile, cmd: int, data: bytearray | int) -> int | None:
        if cmd == FIOC_GET_SIZE:
            assert isinstance(data, bytearray)
            SIZE_T.pack_into(data, 0, len(self.data))
        elif cmd == FIOC_SET_SIZE:
            assert isinstance(data, bytearray)
            self.resize(SIZE_T.unpack_from(data)[0])
        elif cmd in (FIOC_READ, FIOC_WRITE):
            assert isinstance(data, int)
            return self.rw_through_pointers(data, cmd == FIOC_READ)
        else:
            return super().ioctl(file, cmd, data)
        return 0

    def rw_through_pointers(self, addr: int, is_read: bool) -> int:
        """FIOC_READ/FIOC_WRITE: all copyins first, then the change, then copyouts."""
        offset, buf, size, _, _ = FIOC_RW_ARG.unpack(copyin(addr, FIOC_RW_ARG.size))
        if offset < 0:
            raise OSError(errno.EINVAL, f"invalid offset {offset}")
        prev_size = len(self.data)
        if is_read:
            chunk = bytes(self.data[offset : offset + size])
            copyout(buf, chunk)
            done = len(chunk)
        else:
            incoming = copyin(buf, size) if size else b""
            if offset + size > prev_size:
                self.resize(offset + size)
            self.data[offset : offset + size] = incoming
            done = size
        copyout(addr, FIOC_RW_ARG.pack(offset, buf, size, prev_size, len(self.data)))
        return done


class MembufModule(Module):
    name = "membuf"

    def load(self) -> None:
        self.membuf = Membuf()
        self.cdev = make_dev(self.membuf, "membuf", mode=0o666)

    def unload(self) -> None:
        self.cdev.destroy()
        free(self.membuf.data)  # a module gives its memory back; the kernel reports leaks
