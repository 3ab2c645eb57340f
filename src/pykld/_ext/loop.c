/* loop.c: pykld._loop, the compiled request loop of the classic channel.
 *
 * One call of work() is one worker thread of a transport/session.Session:
 * read(2) a request from /dev/fuse or /dev/cuse with the GIL released, serve
 * it through dispatch.c (the driver's operation is the only Python on the
 * way for the common requests), writev(2) the reply with the GIL released,
 * then take the reader role again or park, as Session._work does.  The
 * leader/follower bookkeeping stays the Session's (its lock, its condition
 * for parked followers, ensure_reader called when a driver blocks).  Its two
 * per-request steps are done here on the Session's own state, under its own
 * lock: after each read, what Session._took does; after each reply, the part
 * of Session._take_reader_role that keeps the role without waiting (nobody
 * else reads, or a promotion is ours).  Only when this worker would park or
 * leave is the Python method called.  (bench/loop_bench.py: the two Python
 * calls cost 0.7-1.0 us a request, as much as the rest of this loop.)
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "loop.h"

/* Request buffers outlive their worker: a driver that kept a view of a
 * WRITE's data past its request (against the rules: the Python loop reuses
 * the buffer too) reads stale bytes, never freed memory.  A few are kept for
 * the next workers; the pool is guarded by the GIL. */
#define POOL_MAX 16
static struct {
    char *buf;
    size_t size;
} pool[POOL_MAX];
static int pooled;

static char *buffer_get(size_t size) {
    for (int i = 0; i < pooled; i++) {
        if (pool[i].size == size) {
            char *buf = pool[i].buf;
            pool[i] = pool[--pooled];
            return buf;
        }
    }
    return PyMem_RawMalloc(size);
}

static void buffer_put(char *buf, size_t size) {
    if (pooled < POOL_MAX) {
        pool[pooled].buf = buf;
        pool[pooled].size = size;
        pooled++;
    } else {
        PyMem_RawFree(buf);
    }
}

static int gone(int code) { return code == ENODEV || code == EBADF || code == ECONNABORTED; }

static void reply_failed(pykld_dispatcher *d, int code) {
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", code, strerror(code));
    PyObject *name = PyObject_GetAttrString(d->session, "name");
    PyObject *text = exc && name ? PyUnicode_FromFormat("%S: reply failed: %S", name, exc) : NULL;
    if (text != NULL) pykld_log(d, text);
    else PyErr_Clear();
    Py_XDECREF(text);
    Py_XDECREF(name);
    Py_XDECREF(exc);
}

static int send_reply(pykld_dispatcher *d, pykld_reply *r, int fd) {
    struct iovec small[2 + PYKLD_REPLY_SEGS], *iov = small;
    int max = 2 + PYKLD_REPLY_SEGS;
    if (r->nsegs > PYKLD_REPLY_SEGS) {
        max = 2 + r->nsegs;
        iov = PyMem_Malloc(sizeof *iov * max);
        if (iov == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    int n = pykld_reply_iov(r, iov, max);
    ssize_t done;
    int code = 0;
    Py_BEGIN_ALLOW_THREADS
    done = writev(fd, iov, n);
    if (done < 0) code = errno;
    Py_END_ALLOW_THREADS
    if (iov != small) PyMem_Free(iov);
    /* ENOENT: the caller was interrupted and the kernel forgot the request. */
    if (done < 0 && code != ENOENT && !gone(code)) reply_failed(d, code);
    return 0;
}

int pykld_serve_message(pykld_dispatcher *d, char *buf, size_t nbytes, int fd) {
    pykld_reply r;
    int rc;
    if (nbytes < sizeof(struct fuse_in_header)) {
        /* No header to decode: Python's answer logs it and drops it. */
        PyObject *view = PyMemoryView_FromMemory(buf, (Py_ssize_t)nbytes, PyBUF_WRITE);
        if (view == NULL) return -1;
        PyObject *value = pykld_answer(d, view, nbytes);
        Py_DECREF(view);
        if (value == NULL) return -1;
        rc = pykld_reply_from_python(d, &r, value, 0);
        Py_DECREF(value);
    } else {
        const struct fuse_in_header *in = (const struct fuse_in_header *)buf;
        rc = pykld_dispatch(d, in, buf + sizeof *in, nbytes - sizeof *in, NULL, 0, &r);
    }
    if (rc == 0 && r.send) rc = send_reply(d, &r, fd);
    pykld_reply_release(&r);
    return rc;
}

/* The Session's state this loop touches: its lock and four of its counters
 * (the roles struct is in loop.h: the ring's loop, uring.c, shares it). */
static PyObject *s_readers, *s_progress, *s_promotions, *s_stopping;

static int counter(PyObject *session, PyObject *name, long *value) {
    PyObject *v = PyObject_GetAttr(session, name);
    if (v == NULL) return -1;
    *value = PyLong_AsLong(v);
    Py_DECREF(v);
    return (*value == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int set_counter(PyObject *session, PyObject *name, long value) {
    PyObject *v = PyLong_FromLong(value);
    if (v == NULL) return -1;
    int rc = PyObject_SetAttr(session, name, v);
    Py_DECREF(v);
    return rc;
}

static int lock(roles *r) {
    PyObject *res = PyObject_CallNoArgs(r->acquire); /* waits with the GIL released */
    Py_XDECREF(res);
    return res ? 0 : -1;
}

static int unlock(roles *r, int rc) {
    PyObject *res = PyObject_CallNoArgs(r->release);
    Py_XDECREF(res);
    return res ? rc : -1;
}

/* Session._took: this thread serves the request it read, no longer reads. */
int pykld_took(roles *r) {
    long readers, progress;
    if (lock(r) < 0) return -1;
    int rc = counter(r->session, s_readers, &readers) < 0 || counter(r->session, s_progress, &progress) < 0 ||
             set_counter(r->session, s_readers, readers - 1) < 0 ||
             set_counter(r->session, s_progress, progress + 1) < 0 ? -1 : 0;
    return unlock(r, rc);
}

/* Session._take_reader_role: 1 to read again, 0 to leave; its fast cases here. */
int pykld_take_role(roles *r) {
    long readers, promotions;
    if (lock(r) < 0) return -1;
    int rc = 2; /* 2: ask the Python method (park, leave, or an error) */
    PyObject *flag = PyObject_GetAttr(r->session, s_stopping);
    int stopping = flag ? PyObject_IsTrue(flag) : -1;
    Py_XDECREF(flag);
    if (stopping == 0 && counter(r->session, s_readers, &readers) == 0 &&
        counter(r->session, s_promotions, &promotions) == 0) {
        if (readers == 0)
            rc = set_counter(r->session, s_readers, 1) < 0 ? -1 : 1;
        else if (promotions > 0) /* promoted while serving: the role is ours already */
            rc = set_counter(r->session, s_promotions, promotions - 1) < 0 ? -1 : 1;
    }
    if (PyErr_Occurred()) rc = -1;
    if (unlock(r, rc) < 0) return -1;
    if (rc != 2) return rc;
    PyObject *res = PyObject_CallNoArgs(r->take_role);
    if (res == NULL) return -1;
    rc = PyObject_IsTrue(res);
    Py_DECREF(res);
    return rc;
}

int pykld_roles_init(roles *r, PyObject *session) {
    r->session = session;
    r->acquire = r->release = r->take_role = NULL;
    PyObject *lock_obj = PyObject_GetAttrString(session, "_lock");
    if (lock_obj != NULL) {
        r->acquire = PyObject_GetAttrString(lock_obj, "acquire");
        r->release = PyObject_GetAttrString(lock_obj, "release");
        Py_DECREF(lock_obj);
    }
    r->take_role = PyObject_GetAttrString(session, "_take_reader_role");
    return r->acquire && r->release && r->take_role ? 0 : -1;
}

void pykld_roles_clear(roles *r) {
    Py_CLEAR(r->acquire);
    Py_CLEAR(r->release);
    Py_CLEAR(r->take_role);
}

int pykld_set_stopping(PyObject *session) {
    return PyObject_SetAttrString(session, "_stopping", Py_True);
}

/* work(session, dispatcher, fd, bufsize): serve until the connection ends
 * (returns None) or this worker is not needed (returns None). */
static PyObject *loop_work(PyObject *module, PyObject *args) {
    PyObject *session, *dobj;
    int fd;
    Py_ssize_t bufsize;
    if (!PyArg_ParseTuple(args, "OOin:work", &session, &dobj, &fd, &bufsize)) return NULL;
    pykld_dispatcher *d = pykld_dispatcher_from(dobj);
    if (d == NULL) return NULL;
    if (bufsize < (Py_ssize_t)sizeof(struct fuse_in_header)) {
        PyErr_SetString(PyExc_ValueError, "bufsize smaller than a request header");
        return NULL;
    }
    roles r;
    char *buf = pykld_roles_init(&r, session) == 0 ? buffer_get((size_t)bufsize) : NULL;
    PyObject *result = NULL;
    if (buf == NULL) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto out;
    }
    for (;;) {
        ssize_t n;
        int code = 0;
        Py_BEGIN_ALLOW_THREADS
        n = read(fd, buf, (size_t)bufsize);
        if (n < 0) code = errno;
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (gone(code)) break;
            continue; /* ENOENT: the request was interrupted before we read it; EINTR */
        }
        if (n == 0) break;
        if (pykld_took(&r) < 0) goto out;
        if (pykld_serve_message(d, buf, (size_t)n, fd) < 0) goto out;
        int again = pykld_take_role(&r);
        if (again < 0) goto out;
        if (!again) {
            result = Py_None;
            goto out;
        }
    }
    if (pykld_set_stopping(session) == 0) result = Py_None; /* the connection is over */
out:
    if (buf) buffer_put(buf, (size_t)bufsize);
    pykld_roles_clear(&r);
    Py_XINCREF(result);
    return result;
}

static PyMethodDef loop_methods[] = {
    {"work", loop_work, METH_VARARGS,
     "work(session, dispatcher, fd, bufsize): one worker of a Session, reading, serving and replying "
     "until the connection ends or the worker is not needed"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef loop_module = {
    PyModuleDef_HEAD_INIT, "pykld._loop",
    "The compiled request loop of pykld's FUSE/CUSE channels (src/pykld/_ext/).", -1, loop_methods,
};

PyMODINIT_FUNC PyInit__loop(void) {
    if (PyType_Ready(&pykld_DispatcherType) < 0 || pykld_dispatch_init_module() < 0) return NULL;
    s_readers = PyUnicode_InternFromString("_readers");
    s_progress = PyUnicode_InternFromString("_progress");
    s_promotions = PyUnicode_InternFromString("_promotions");
    s_stopping = PyUnicode_InternFromString("_stopping");
    if (!s_readers || !s_progress || !s_promotions || !s_stopping) return NULL;
    PyObject *m = PyModule_Create(&loop_module);
    if (m == NULL) return NULL;
    if (pykld_uring_add(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&pykld_DispatcherType);
    if (PyModule_AddObject(m, "Dispatcher", (PyObject *)&pykld_DispatcherType) < 0) {
        Py_DECREF(&pykld_DispatcherType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
