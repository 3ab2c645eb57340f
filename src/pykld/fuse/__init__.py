"""Sans-I/O FUSE and CUSE wire protocol (Linux ``<linux/fuse.h>``, protocol 7.x).

The bottom layer of pykld: no file descriptors, threads or I/O, and no imports from the
rest of pykld. Transports (``pykld.transport.fuse`` and ``.cuse``) own the device fd and
the loop; this package only converts between bytes and values:

* :mod:`~pykld.fuse.abi`: opcodes, flag bits, sizes, limits.
* :mod:`~pykld.fuse.request`: ``parse(buf, nbytes)`` -> :class:`~pykld.fuse.request.Request`
  with op-specific ``args``; malformed input raises ``ProtocolError`` (with ``unique`` and
  ``errno`` so the caller can still answer).
* :mod:`~pykld.fuse.reply`: reply encoders, ``bytes`` for ``os.write`` or (``data``) a list
  of buffers for a zero-copy ``os.writev``.
* :mod:`~pykld.fuse.notify`: unsolicited notifications (poll wakeup, invalidations).

Modelled on h11 (bytes in, events out) and the Rust fuser crate's ``ll`` modules.

Complete on purpose, not cut to what pykld's devfs answers.  About 40 % of it (the
reply encoders of opcodes the devfs refuses or never gets: CREATE, READLINK, LSEEK,
BMAP, LK, xattrs, READDIRPLUS; layouts of protocol minors below the one the hot
path accepts) has no caller in the transports today.  It stays because the devfs
must still decode every request the kernel may send in order to answer it with a
clear errno; because the layers above are meant to grow on it (a passthrough or
record/replay transport for the testing toolkit, richer devfs semantics) without
reopening the wire format; and because the whole of it is tested on its own,
against the layouts of ``<linux/fuse.h>``, by tests/fuse/test_protocol.py, which
needs no mount.  Code kept without a caller must keep a test: that is the rule.
"""

from pykld.fuse import abi, notify, reply, request

__all__ = ["abi", "notify", "reply", "request"]
