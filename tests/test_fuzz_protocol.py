"""The protocol fuzzer's smoke run, and the failures it found, each pinned by a test.

The full run (100,000+ messages) is `make stress`; this one feeds a few thousand in well under a second.
"""

from __future__ import annotations

import errno
import os
import struct

from protocol_fuzz import OUT_HEADER, Rig, fuzz, header

from pykld.fuse.abi import Opcode


def test_generated_messages_all_answered_none_escapes() -> None:
    tally = fuzz(5000, seed=12)
    assert tally.messages >= 5000
    assert set(tally.kinds) == {"valid", "truncated", "oversized", "wrong_opcode", "lying_length",
                                "unknown_unique", "interrupted", "random_bytes"}
    assert tally.failures() == 0, tally.as_dict()["first_failures"]
    assert tally.logged_drops > 0 and tally.errnos[errno.ENOSYS] > 0  # both outcomes were exercised


def _error_of(replies: list[bytes], unique: int) -> int | None:
    for raw in replies:
        _, error, reply_unique = OUT_HEADER.unpack_from(raw)
        if reply_unique == unique:
            return -error
    return None


def _ino(rig: Rig, name: str) -> int:
    cdev = rig.kernel.devfs.lookup(name)
    assert cdev is not None
    return cdev.ino


def _read(fh: int | None, size: int, flags: int = 0) -> bytes:
    assert fh is not None
    return struct.pack("<QQIIQI4x", fh, 0, size, 0, 0, flags)


def test_a_read_too_short_for_its_arguments_is_refused_not_served_from_stale_bytes() -> None:
    """The READ fast path unpacked its arguments from the reused buffer past the message's end:
    a 60-byte READ following a full one was served as that one."""
    rig = Rig(seed=1)
    try:
        fh = rig.open(rig.fuse, _ino(rig, "rustmodule"), os.O_RDWR)
        full = header(Opcode.READ, rig.next_unique(), 40) + _read(fh, 16)
        assert _error_of(rig.fuse.serve(full), rig.unique) == 0
        unique = rig.next_unique()
        short = header(Opcode.READ, unique, 20) + _read(fh, 16)[:20]
        assert _error_of(rig.fuse.serve(short), unique) == errno.EINVAL  # a body shorter than READ's arguments
    finally:
        rig.close()


def test_at_max_workers_a_request_that_would_sleep_gets_eagain() -> None:
    """With every worker taken no thread is left to read the request that would wake a
    sleeper; the one that would sleep is told EAGAIN instead of stalling the channel."""
    rig = Rig(seed=2)  # its sessions run with max_workers=0: always at the cap
    try:
        fh = rig.open(rig.fuse, _ino(rig, "fifo"), os.O_RDWR)
        unique = rig.next_unique()
        assert _error_of(rig.fuse.serve(header(Opcode.READ, unique, 40) + _read(fh, 16)), unique) == errno.EAGAIN
    finally:
        rig.close()
