/* dispatch.c: one request in, one reply description out (see dispatch.h).
 *
 * The requests most of a device's traffic is made of are decoded here and
 * answered through the FileOps entry points (fileops.py, compiled_entries):
 *
 *   READ       read(unique, fh, offset, size, flags) -> sequence of buffers
 *   WRITE      write(unique, fh, offset, data, flags) -> bytes taken (int);
 *              data is a read-only memoryview of the request's payload
 *   OPEN       open(unique, nodeid, flags, uid, gid, pid) -> (fh, open_flags)
 *   RELEASE    release(unique, fh) -> None            (reply: empty)
 *   INTERRUPT  interrupt(target_unique) -> None        (no reply)
 *   FORGET, BATCH_FORGET   entry None: nothing to do  (no reply)
 *   FLUSH      entry an int errno: answered -errno, no Python at all
 *
 * An opcode without an entry, and any message the fast decoders would have
 * to think about (short, old minor, extensions, lengths that do not add up),
 * goes whole to session.answer(view, nbytes), the Python loop's own code.
 */
#include "dispatch.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>

#include "loop.h"

#define OUT_HDR ((uint32_t)sizeof(struct fuse_out_header))
#define IN_HDR ((size_t)sizeof(struct fuse_in_header))

static PyObject *s_answer, *s_minor, *s_log, *s_name, *s_errno;
static int reply_exception(pykld_dispatcher *d, pykld_reply *r, uint32_t opcode);

/* -- the Dispatcher type -------------------------------------------------------- */

static int dispatcher_traverse(pykld_dispatcher *d, visitproc visit, void *arg) {
    Py_VISIT(d->session);
    for (int i = 0; i < ENTRY_COUNT; i++) Py_VISIT(d->entry[i]);
    return 0;
}

static int dispatcher_clear(pykld_dispatcher *d) {
    Py_CLEAR(d->session);
    for (int i = 0; i < ENTRY_COUNT; i++) Py_CLEAR(d->entry[i]);
    return 0;
}

static void dispatcher_dealloc(pykld_dispatcher *d) {
    PyObject_GC_UnTrack(d);
    dispatcher_clear(d);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

static const uint32_t entry_opcode[ENTRY_COUNT] = {
    [E_READ] = FUSE_READ, [E_WRITE] = FUSE_WRITE, [E_OPEN] = FUSE_OPEN,
    [E_RELEASE] = FUSE_RELEASE, [E_INTERRUPT] = FUSE_INTERRUPT, [E_FORGET] = FUSE_FORGET,
    [E_BATCH_FORGET] = FUSE_BATCH_FORGET, [E_FLUSH] = FUSE_FLUSH,
};

static int dispatcher_init(pykld_dispatcher *d, PyObject *args, PyObject *kwds) {
    PyObject *session, *entries;
    static char *kwlist[] = {"session", "entries", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!:Dispatcher", kwlist, &session, &PyDict_Type, &entries))
        return -1;
    dispatcher_clear(d);
    Py_INCREF(session);
    d->session = session;
    memset(d->has, 0, sizeof d->has);
    d->flush_errno = 0;
    for (int i = 0; i < ENTRY_COUNT; i++) {
        PyObject *key = PyLong_FromUnsignedLong(entry_opcode[i]);
        if (key == NULL) return -1;
        PyObject *value = PyDict_GetItemWithError(entries, key);
        Py_DECREF(key);
        if (value == NULL) {
            if (PyErr_Occurred()) return -1;
            continue;
        }
        if (i == E_FLUSH) {
            long code = PyLong_AsLong(value);
            if (code == -1 && PyErr_Occurred()) return -1;
            if (code <= 0 || code >= 512) {
                PyErr_SetString(PyExc_ValueError, "the FLUSH entry is an errno in 1..511");
                return -1;
            }
            d->flush_errno = (int)code;
        } else if (i == E_FORGET || i == E_BATCH_FORGET) {
            if (value != Py_None) {
                PyErr_SetString(PyExc_ValueError, "FORGET entries are None (nothing to do)");
                return -1;
            }
        } else {
            if (!PyCallable_Check(value)) {
                PyErr_Format(PyExc_TypeError, "entry for opcode %u is not callable", entry_opcode[i]);
                return -1;
            }
            Py_INCREF(value);
            d->entry[i] = value;
        }
        d->has[i] = 1;
    }
    return 0;
}

static PyObject *dispatcher_serve(pykld_dispatcher *d, PyObject *args);

static PyMethodDef dispatcher_methods[] = {
    {"serve", (PyCFunction)dispatcher_serve, METH_VARARGS,
     "serve(buffer, nbytes, fd): serve the message buffer[:nbytes] and writev its reply to fd"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject pykld_DispatcherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pykld._loop.Dispatcher",
    .tp_doc = "Dispatcher(session, entries): serves requests for a Session (dispatch.h)",
    .tp_basicsize = sizeof(pykld_dispatcher),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)dispatcher_init,
    .tp_dealloc = (destructor)dispatcher_dealloc,
    .tp_traverse = (traverseproc)dispatcher_traverse,
    .tp_clear = (inquiry)dispatcher_clear,
    .tp_methods = dispatcher_methods,
};

pykld_dispatcher *pykld_dispatcher_from(PyObject *obj) {
    if (!PyObject_TypeCheck(obj, &pykld_DispatcherType)) {
        PyErr_SetString(PyExc_TypeError, "expected a pykld._loop.Dispatcher");
        return NULL;
    }
    return (pykld_dispatcher *)obj;
}

int pykld_dispatch_init_module(void) {
    s_answer = PyUnicode_InternFromString("answer");
    s_minor = PyUnicode_InternFromString("minor");
    s_log = PyUnicode_InternFromString("log");
    s_name = PyUnicode_InternFromString("name");
    s_errno = PyUnicode_InternFromString("errno");
    return (s_answer && s_minor && s_log && s_name && s_errno) ? 0 : -1;
}

/* -- replies ----------------------------------------------------------------------- */

static void reply_start(pykld_reply *r, uint64_t unique) {
    r->out.len = OUT_HDR;
    r->out.error = 0;
    r->out.unique = unique;
    r->send = 1;
    r->payload_len = 0;
    r->inline_len = 0;
    r->segs = r->seg_small;
    r->nsegs = 0;
    r->views = r->view_small;
    r->nviews = 0;
    r->cap = PYKLD_REPLY_SEGS;
    r->keep = NULL;
    r->keep_msg = NULL;
}

static void reply_error(pykld_reply *r, int code) {
    pykld_reply_release(r);
    r->send = 1;
    r->out.len = OUT_HDR;
    r->out.error = -code;
}

static void reply_inline(pykld_reply *r, const void *data, size_t len) {
    memcpy(r->inline_data, data, len);
    r->inline_len = len;
    r->payload_len = len;
    r->out.len = OUT_HDR + (uint32_t)len;
}

/* One more payload segment: a buffer of obj from byte `skip` on. */
static int reply_add_buffer(pykld_reply *r, PyObject *obj, size_t skip) {
    if (r->nviews == r->cap) {
        int cap = r->cap * 2;
        Py_buffer *views = PyMem_Malloc(sizeof(Py_buffer) * cap);
        struct iovec *segs = PyMem_Malloc(sizeof(struct iovec) * cap);
        if (views == NULL || segs == NULL) {
            PyMem_Free(views);
            PyMem_Free(segs);
            PyErr_NoMemory();
            return -1;
        }
        memcpy(views, r->views, sizeof(Py_buffer) * r->nviews);
        memcpy(segs, r->segs, sizeof(struct iovec) * r->nsegs);
        if (r->views != r->view_small) PyMem_Free(r->views);
        if (r->segs != r->seg_small) PyMem_Free(r->segs);
        r->views = views;
        r->segs = segs;
        r->cap = cap;
    }
    Py_buffer *view = &r->views[r->nviews];
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) return -1;
    r->nviews++;
    if ((size_t)view->len < skip) skip = (size_t)view->len;
    size_t len = (size_t)view->len - skip;
    if (len) {
        r->segs[r->nsegs].iov_base = (char *)view->buf + skip;
        r->segs[r->nsegs].iov_len = len;
        r->nsegs++;
        r->payload_len += len;
    }
    return 0;
}

void pykld_reply_release(pykld_reply *r) {
    for (int i = 0; i < r->nviews; i++) PyBuffer_Release(&r->views[i]);
    r->nviews = 0;
    r->nsegs = 0;
    if (r->views != r->view_small) PyMem_Free(r->views);
    if (r->segs != r->seg_small) PyMem_Free(r->segs);
    r->views = r->view_small;
    r->segs = r->seg_small;
    r->cap = PYKLD_REPLY_SEGS;
    r->payload_len = 0;
    r->inline_len = 0;
    Py_CLEAR(r->keep);
    Py_CLEAR(r->keep_msg);
}

size_t pykld_reply_copy(const pykld_reply *r, void *dst, size_t cap) {
    char *out = dst;
    size_t done = 0;
    size_t n = r->inline_len < cap ? r->inline_len : cap;
    memcpy(out, r->inline_data, n);
    done += n;
    for (int i = 0; i < r->nsegs && done < cap; i++) {
        n = r->segs[i].iov_len;
        if (n > cap - done) n = cap - done;
        memcpy(out + done, r->segs[i].iov_base, n);
        done += n;
    }
    return done < r->payload_len ? (size_t)-1 : done;
}

int pykld_reply_iov(pykld_reply *r, struct iovec *iov, int max) {
    int n = 0;
    if (max < 2 + r->nsegs) return -1;
    iov[n].iov_base = &r->out;
    iov[n++].iov_len = OUT_HDR;
    if (r->inline_len) {
        iov[n].iov_base = r->inline_data;
        iov[n++].iov_len = r->inline_len;
    }
    for (int i = 0; i < r->nsegs; i++) iov[n++] = r->segs[i];
    return n;
}

/* -- errors, as Session.answer turns them into replies ------------------------------- */

void pykld_log(pykld_dispatcher *d, PyObject *text) {
    PyObject *log = PyObject_GetAttr(d->session, s_log);
    if (log != NULL) {
        PyObject *res = PyObject_CallOneArg(log, text);
        Py_XDECREF(res);
        Py_DECREF(log);
    }
    if (PyErr_Occurred()) PyErr_WriteUnraisable(d->session);
}

/* The entry point raised: OSError -> -errno (outside 1..511: EIO); another
 * Exception -> EIO and a dmesg line; a BaseException (SystemExit,
 * KeyboardInterrupt) goes on up, as from the Python loop: -1. */
static int reply_exception(pykld_dispatcher *d, pykld_reply *r, uint32_t opcode) {
    if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    int code = EIO;
    if (PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_OSError)) {
        PyObject *value = PyObject_GetAttr(exc, s_errno);
        if (value != NULL && PyLong_Check(value)) {
            long v = PyLong_AsLong(value);
            if (v > 0 && v < 512) code = (int)v;
        }
        Py_XDECREF(value);
        PyErr_Clear();
    } else {
        PyObject *name = PyObject_GetAttr(d->session, s_name);
        PyObject *text = name ? PyUnicode_FromFormat("%S: internal error on opcode %u: %R", name,
                                                     (unsigned)(opcode & 0xff), exc) : NULL;
        if (text != NULL) pykld_log(d, text);
        else PyErr_Clear();
        Py_XDECREF(text);
        Py_XDECREF(name);
    }
    Py_DECREF(exc);
    reply_error(r, code);
    return 0;
}

/* -- the Python answer, for everything the fast decoders leave alone ------------------ */

static int reply_from_python(pykld_reply *r, PyObject *value) {
    if (value == Py_None) {
        r->send = 0;
        return 0;
    }
    PyObject *first;
    Py_ssize_t count;
    int is_seq = !PyBytes_Check(value);
    if (is_seq) {
        if (!PyList_Check(value) && !PyTuple_Check(value)) {
            PyErr_Format(PyExc_TypeError, "a reply is bytes, a list of buffers or None, not %.100s",
                         Py_TYPE(value)->tp_name);
            return -1;
        }
        count = PySequence_Fast_GET_SIZE(value);
        if (count == 0) {
            PyErr_SetString(PyExc_ValueError, "an empty reply list");
            return -1;
        }
        first = PySequence_Fast_GET_ITEM(value, 0);
    } else {
        count = 1;
        first = value;
    }
    /* The header: the first 16 bytes of the first buffer. */
    Py_buffer head;
    if (PyObject_GetBuffer(first, &head, PyBUF_SIMPLE) < 0) return -1;
    if (head.len < (Py_ssize_t)OUT_HDR) {
        PyBuffer_Release(&head);
        PyErr_SetString(PyExc_ValueError, "a reply shorter than its fuse_out_header");
        return -1;
    }
    memcpy(&r->out, head.buf, OUT_HDR);
    PyBuffer_Release(&head);
    Py_INCREF(value);
    r->keep = value;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = is_seq ? PySequence_Fast_GET_ITEM(value, i) : value;
        if (reply_add_buffer(r, item, i == 0 ? OUT_HDR : 0) < 0) return -1;
    }
    r->send = 1;
    return 0;
}

/* The whole message as one view for session.answer: the classic channel's
 * buffer as it is, or the three parts copied into a bytearray kept by the reply. */
static int answer_in_python(pykld_dispatcher *d, const struct fuse_in_header *in, const void *args,
                            size_t args_len, const void *payload, size_t payload_len, pykld_reply *r) {
    size_t nbytes = IN_HDR + args_len + payload_len;
    PyObject *view;
    if ((const char *)args == (const char *)in + IN_HDR &&
        (payload_len == 0 || (const char *)payload == (const char *)args + args_len)) {
        view = PyMemoryView_FromMemory((char *)in, (Py_ssize_t)nbytes, PyBUF_WRITE);
    } else {
        PyObject *copy = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)nbytes);
        if (copy == NULL) return -1;
        char *p = PyByteArray_AS_STRING(copy);
        memcpy(p, in, IN_HDR);
        if (args_len) memcpy(p + IN_HDR, args, args_len);
        if (payload_len) memcpy(p + IN_HDR + args_len, payload, payload_len);
        view = PyMemoryView_FromObject(copy);
        r->keep_msg = copy;
    }
    if (view == NULL) return -1;
    PyObject *value = pykld_answer(d, view, nbytes);
    Py_DECREF(view);
    if (value == NULL) return -1; /* answer() catches every Exception itself */
    int rc = reply_from_python(r, value);
    Py_DECREF(value);
    if (rc < 0 && PyErr_ExceptionMatches(PyExc_Exception))
        return reply_exception(d, r, in->opcode);
    return rc;
}

PyObject *pykld_answer(pykld_dispatcher *d, PyObject *view, size_t nbytes) {
    PyObject *n = PyLong_FromSize_t(nbytes);
    if (n == NULL) return NULL;
    PyObject *value = PyObject_CallMethodObjArgs(d->session, s_answer, view, n, NULL);
    Py_DECREF(n);
    return value;
}

int pykld_reply_from_python(pykld_dispatcher *d, pykld_reply *r, PyObject *value, uint32_t opcode) {
    reply_start(r, 0);
    if (reply_from_python(r, value) == 0) return 0;
    return PyErr_ExceptionMatches(PyExc_Exception) ? reply_exception(d, r, opcode) : -1;
}

/* -- the fast requests ------------------------------------------------------------------ */

/* Call an entry with a reference of our own: Session.set_entries may re-init the
 * dispatcher (dropping its references) while a driver runs in another thread. */
static PyObject *call_entry(pykld_dispatcher *d, int which, const char *format, ...) {
    PyObject *entry = d->entry[which];
    if (entry == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the dispatcher lost an entry point");
        return NULL;
    }
    Py_INCREF(entry);
    va_list va;
    va_start(va, format);
    PyObject *args = Py_VaBuildValue(format, va); /* a tuple: every format has 2+ items or (..) */
    va_end(va);
    PyObject *result = args ? PyObject_Call(entry, args, NULL) : NULL;
    Py_XDECREF(args);
    Py_DECREF(entry);
    return result;
}

static long session_minor(pykld_dispatcher *d) {
    PyObject *value = PyObject_GetAttr(d->session, s_minor);
    if (value == NULL) return -1;
    long minor = PyLong_AsLong(value);
    Py_DECREF(value);
    return minor;
}

static int serve_read(pykld_dispatcher *d, const struct fuse_in_header *in, const struct fuse_read_in *a,
                      pykld_reply *r) {
    PyObject *chunks = call_entry(d, E_READ, "KKKIk", (unsigned long long)in->unique,
                                             (unsigned long long)a->fh, (unsigned long long)a->offset,
                                             a->size, (unsigned long)a->flags);
    if (chunks == NULL) return reply_exception(d, r, in->opcode);
    PyObject *fast = PySequence_Fast(chunks, "read entry returns a sequence of buffers");
    Py_DECREF(chunks);
    if (fast == NULL) return reply_exception(d, r, in->opcode);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (reply_add_buffer(r, PySequence_Fast_GET_ITEM(fast, i), 0) < 0) {
            Py_DECREF(fast);
            return reply_exception(d, r, in->opcode);
        }
    }
    Py_DECREF(fast);
    r->out.len = OUT_HDR + (uint32_t)r->payload_len;
    return 0;
}

static int serve_write(pykld_dispatcher *d, const struct fuse_in_header *in, const struct fuse_write_in *a,
                       const void *data, pykld_reply *r) {
    PyObject *view = PyMemoryView_FromMemory((char *)data, a->size, PyBUF_READ);
    if (view == NULL) return -1;
    PyObject *count = call_entry(d, E_WRITE, "KKKOk", (unsigned long long)in->unique,
                                            (unsigned long long)a->fh, (unsigned long long)a->offset, view,
                                            (unsigned long)a->flags);
    Py_DECREF(view);
    if (count == NULL) return reply_exception(d, r, in->opcode);
    unsigned long size = PyLong_AsUnsignedLong(count);
    Py_DECREF(count);
    if (PyErr_Occurred()) return reply_exception(d, r, in->opcode);
    struct fuse_write_out out = {.size = (uint32_t)size};
    reply_inline(r, &out, sizeof out);
    return 0;
}

static int serve_open(pykld_dispatcher *d, const struct fuse_in_header *in, const struct fuse_open_in *a,
                      pykld_reply *r) {
    PyObject *res = call_entry(d, E_OPEN, "KKkkkk", (unsigned long long)in->unique,
                                          (unsigned long long)in->nodeid, (unsigned long)a->flags,
                                          (unsigned long)in->uid, (unsigned long)in->gid, (unsigned long)in->pid);
    if (res == NULL) return reply_exception(d, r, in->opcode);
    unsigned long long fh;
    unsigned int open_flags;
    int ok = PyArg_ParseTuple(res, "KI;open entry returns (fh, open_flags)", &fh, &open_flags);
    Py_DECREF(res);
    if (!ok) return reply_exception(d, r, in->opcode);
    struct fuse_open_out out = {.fh = fh, .open_flags = open_flags};
    reply_inline(r, &out, sizeof out);
    return 0;
}

static int serve_none(pykld_dispatcher *d, int which, const struct fuse_in_header *in, PyObject *result,
                      pykld_reply *r, int answered) {
    (void)which;
    if (result == NULL) return reply_exception(d, r, in->opcode);
    Py_DECREF(result);
    r->send = answered;
    return 0;
}

int pykld_dispatch(pykld_dispatcher *d, const struct fuse_in_header *in, const void *args, size_t args_len,
                   const void *payload, size_t payload_len, pykld_reply *r) {
    reply_start(r, in->unique);
    uint32_t op = in->opcode;
    /* The fast decoders take a well-framed message only; the rest is Python's. */
    if (in->len != IN_HDR + args_len + payload_len || in->total_extlen != 0) goto python;
    switch (op) {
    case FUSE_READ:
        if (!d->has[E_READ] || args_len < sizeof(struct fuse_read_in) || payload_len) goto python;
        if (session_minor(d) < 9) goto minor;
        return serve_read(d, in, args, r);
    case FUSE_WRITE: {
        const struct fuse_write_in *a = args;
        const char *data;
        if (!d->has[E_WRITE] || args_len < sizeof *a) goto python;
        if (args_len == sizeof *a) data = payload;            /* the ring: data apart */
        else if (payload_len == 0) data = (const char *)args + sizeof *a;
        else goto python;
        if ((size_t)a->size != args_len + payload_len - sizeof *a) goto python;
        if (session_minor(d) < 9) goto minor;
        return serve_write(d, in, a, data, r);
    }
    case FUSE_OPEN: {
        const struct fuse_open_in *a = args;
        if (!d->has[E_OPEN] || args_len < sizeof *a || payload_len) goto python;
        return serve_open(d, in, a, r);
    }
    case FUSE_RELEASE: {
        const struct fuse_release_in *a = args;
        if (!d->has[E_RELEASE] || args_len < sizeof *a || payload_len) goto python;
        if (session_minor(d) < 8) goto minor;
        PyObject *res = call_entry(d, E_RELEASE, "KK", (unsigned long long)in->unique,
                                              (unsigned long long)a->fh);
        return serve_none(d, E_RELEASE, in, res, r, 1);
    }
    case FUSE_INTERRUPT: {
        const struct fuse_interrupt_in *a = args;
        if (!d->has[E_INTERRUPT] || args_len < sizeof *a || payload_len) goto python;
        PyObject *res = call_entry(d, E_INTERRUPT, "(K)", (unsigned long long)a->unique);
        return serve_none(d, E_INTERRUPT, in, res, r, 0);
    }
    case FUSE_FORGET:
        if (!d->has[E_FORGET] || args_len < sizeof(struct fuse_forget_in) || payload_len) goto python;
        r->send = 0;
        return 0;
    case FUSE_BATCH_FORGET: {
        const struct fuse_batch_forget_in *a = args;
        if (!d->has[E_BATCH_FORGET] || args_len < sizeof *a || payload_len) goto python;
        if ((size_t)a->count * sizeof(struct fuse_forget_one) > args_len - sizeof *a) goto python;
        r->send = 0;
        return 0;
    }
    case FUSE_FLUSH:
        if (!d->has[E_FLUSH] || args_len < sizeof(struct fuse_flush_in) || payload_len) goto python;
        reply_error(r, d->flush_errno);
        return 0;
    default:
        goto python;
    }
minor:
    if (PyErr_Occurred()) return -1;
python:
    return answer_in_python(d, in, args, args_len, payload, payload_len, r);
}

/* Dispatcher.serve(buffer, nbytes): one message from a Python buffer, the reply
 * written to the session's fd: what the classic loop does per request, for
 * tests and benchmarks that feed messages one by one. */
static PyObject *dispatcher_serve(pykld_dispatcher *d, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t nbytes;
    int fd;
    if (!PyArg_ParseTuple(args, "w*ni:serve", &buf, &nbytes, &fd)) return NULL;
    if (nbytes < 0 || nbytes > buf.len) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "nbytes outside the buffer");
        return NULL;
    }
    int rc = pykld_serve_message(d, buf.buf, (size_t)nbytes, fd);
    PyBuffer_Release(&buf);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}
