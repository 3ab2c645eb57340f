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
"""

from pykld.fuse import abi, notify, reply, request

__all__ = ["abi", "notify", "reply", "request"]
