/* dispatch.h: the contract between a FUSE channel and pykld's request dispatch.
 *
 * One call serves one request: pykld_dispatch() takes the request's
 * fuse_in_header, its op arguments and its payload as three separate pointers
 * (the io_uring ring delivers them in separate buffers; the classic channel,
 * which reads one contiguous message from /dev/fuse or /dev/cuse, passes
 * pointers into that one buffer), runs the driver's operation in Python, and
 * fills a pykld_reply: the fuse_out_header plus a payload made of inline C
 * bytes followed by Python buffers, kept alive until the reply is released.
 *
 *   classic channel (loop.c):   writev(fd, [out header, payload segments...])
 *   io_uring ring   (uring.c):  out header into the ring entry's header area,
 *                               pykld_reply_copy() into the entry's payload buffer
 *
 * Everything here is compiled into the one extension module pykld._loop
 * (setup.py builds every .c file of src/pykld/_ext into it), so uring.c calls these
 * functions directly; it needs nothing else from loop.c.
 *
 * The GIL.  pykld_dispatch() and pykld_reply_release() are called with the GIL
 * held.  Between them the reply may be sent with the GIL released: the buffers
 * it points into are owned by the reply (references taken at dispatch), and
 * nothing in a pykld_reply is touched by other threads.
 *
 * Which requests are decoded in C.  READ, WRITE, OPEN (where the dispatcher
 * was given an open entry: FUSE's; CUSE opens through Python), RELEASE,
 * INTERRUPT, FORGET, BATCH_FORGET and FLUSH are decoded in C and enter Python
 * only for the driver's operation, through the small entry points the
 * dispatcher was built with (transport/fileops.py, FileOps.compiled_entries).
 * Every other request, and every one of those that is malformed or unusual
 * (a short body, an old protocol minor, a length that does not add up), is
 * handed whole to the session's Python answer(view, nbytes) -> reply, the
 * same code the Python loop runs, so errnos and log lines are the same on
 * every path.  For that hand-off the three parts must form one message:
 * header, then args_len bytes of arguments, then payload_len bytes of
 * payload, in that order; when they are not contiguous in memory the
 * dispatcher copies them into one buffer first.
 *
 * Errors.  A driver's OSError becomes -errno in out.error (an errno outside
 * 1..511 becomes EIO); any other exception becomes EIO and a line in dmesg;
 * a malformed request is logged and answered -EIO/-EINVAL as
 * fuse/request.py's decoders say, or not answered when its header is
 * unreadable.  pykld_dispatch() itself returns 0 with a reply to send (or
 * reply->send == 0: FORGET, INTERRUPT, a message with no readable header),
 * and returns -1 with a Python exception set only when pykld itself cannot
 * go on (out of memory); the caller logs it and drops the request.
 *
 * Interrupts.  A request the kernel forgot (its caller was interrupted) gets
 * its reply refused with ENOENT: the sender ignores that, as it ignores
 * ENODEV/EBADF/ECONNABORTED (the connection is over).
 *
 * Blocking.  A driver that sleeps calls its thread's before_block, the
 * Session's ensure_reader, with the GIL held as always: the transport must
 * provide it (another reader/ring thread takes over meanwhile).  The ring
 * passes a session object whose ensure_reader suits it.
 */
#ifndef PYKLD_DISPATCH_H
#define PYKLD_DISPATCH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <linux/fuse.h>
#include <stddef.h>
#include <sys/uio.h>

/* A _loop.Dispatcher: built in Python as _loop.Dispatcher(session, entries).
 *   session: has answer(view, nbytes) -> bytes | list of buffers | None,
 *            minor (int, the negotiated protocol minor, read per request),
 *            name (str) and log(text) (a dmesg line).
 *   entries: {opcode: entry}, FileOps.compiled_entries(): see loop.c.
 * From C: pykld_dispatcher_from(obj) checks the type and returns it (NULL with
 * TypeError set otherwise).  The ring keeps a reference to the object. */
typedef struct pykld_dispatcher pykld_dispatcher;
pykld_dispatcher *pykld_dispatcher_from(PyObject *obj);

#define PYKLD_REPLY_INLINE 64 /* room for the largest reply args C writes itself */
#define PYKLD_REPLY_SEGS 8    /* segments without a heap allocation */

typedef struct pykld_reply {
    /* Public: what to send.  out.len == sizeof(out) + payload_len (as Python
     * built it, for replies Python encodes: the kernel checks it). */
    struct fuse_out_header out;
    int send;              /* 0: no reply for this request */
    size_t payload_len;    /* inline_len + the segments' lengths */
    unsigned char inline_data[PYKLD_REPLY_INLINE]; /* the payload's first bytes */
    size_t inline_len;
    struct iovec *segs;    /* then these, in order; valid until release */
    int nsegs;

    /* Private to dispatch.c: the references that keep segs alive. */
    struct iovec seg_small[PYKLD_REPLY_SEGS];
    Py_buffer view_small[PYKLD_REPLY_SEGS];
    Py_buffer *views;
    int nviews;
    int cap;
    PyObject *keep;        /* the reply object Python returned, if any */
    PyObject *keep_msg;    /* a copy of a scattered message Python's answer saw */
} pykld_reply;

/* Serve one request; GIL held.  in->len is the whole message's length
 * (sizeof *in + args_len + payload_len).  Fills *reply (no init needed). */
int pykld_dispatch(pykld_dispatcher *d, const struct fuse_in_header *in,
                   const void *args, size_t args_len,
                   const void *payload, size_t payload_len, pykld_reply *reply);

/* Drop the buffers a reply kept alive; GIL held.  Safe on a reply with
 * send == 0 and after a failed dispatch; idempotent. */
void pykld_reply_release(pykld_reply *reply);

/* Copy the payload (inline bytes, then the segments) into dst, for the ring.
 * Returns the bytes copied; when cap < payload_len it copies cap bytes and
 * returns (size_t)-1: the caller answers -EIO instead (the ring's payload
 * buffer is sized to max_read/max_write, so this means a driver bug). */
size_t pykld_reply_copy(const pykld_reply *reply, void *dst, size_t cap);

/* The iovec array for writev of the whole reply: out header, inline bytes,
 * segments.  Returns the count (at most 2 + nsegs), or -1 if max is too small. */
int pykld_reply_iov(pykld_reply *reply, struct iovec *iov, int max);

#endif
