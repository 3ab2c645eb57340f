/*
 * FUSE over io_uring: the ring mechanics, for pykld's transports/uring.py.
 *
 * One io_uring per queue, one queue per possible CPU (the kernel picks the
 * queue of the caller's CPU, and the ring is ready only when every queue has
 * an entry registered).  Each entry is a header area (struct
 * fuse_uring_req_header) and a payload buffer as large as the connection's
 * biggest request; the entry's command sits in the kernel until a request
 * for it arrives, completes with the request in the buffers, and goes back
 * with the reply in the same buffers (COMMIT_AND_FETCH), which also fetches
 * the next request.
 *
 * Raw system calls (io_uring_setup, mmap, io_uring_enter), no liburing: the
 * extension builds with gcc and the Python headers alone.  Debian 12's kernel
 * headers (6.1) know io_uring with SQE128 and URING_CMD but not FUSE's ring
 * protocol (Linux 6.14), so that part is defined here, from the kernel's uapi.
 *
 * The arena, one anonymous mapping for every entry of every queue, is this
 * object's buffer: a Python memoryview of it keeps it mapped.  serve() hands a WRITE's data to the driver as dispatch.c's view of
 * the raw payload, as the classic loop does of its buffer: valid while the
 * Ring lives (RingServer keeps it), and a driver must not keep it past its
 * request anyway.  Entry layout, one page of headers then the payload:
 *
 *   [ fuse_uring_req_header ... | fuse_in_header + op args ][ payload ... ]
 *                                ^ start: the request rebuilt contiguous,
 *                                  ending where the kernel put the payload
 *
 * so Python's decoders see one classic FUSE message and WRITE data is never
 * copied.
 *
 * serve() is the C loop each ring thread runs: wait
 * for a completion with the GIL released, take the GIL, pykld_dispatch()
 * (dispatch.h: Python only for the driver's operation and for what it hands
 * to the session's answer()), the out header into the entry's header area and
 * the payload straight into its payload buffer (pykld_reply_copy), release
 * the reply, commit-and-fetch with the GIL released, then the Session's
 * reader role (loop.c's helpers).
 * Threads: one thread at a time waits on a queue (the Session's reader role);
 * the submitter of an entry's command is the thread whose task runs the
 * kernel's work for it, so callers keep their threads alive while the ring is.
 */
#include "loop.h" /* Python.h, the dispatch contract, the Session's roles */

#include <errno.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

/* ---- FUSE's ring protocol (include/uapi/linux/fuse.h, 7.42) ---------------- */

#define FUSE_IO_URING_CMD_REGISTER 1
#define FUSE_IO_URING_CMD_COMMIT_AND_FETCH 2
#define FUSE_URING_IN_OUT_HEADER_SZ 128
#define FUSE_URING_OP_IN_OUT_SZ 128
#define FUSE_IN_HEADER_SZ 40
#define FUSE_OUT_HEADER_SZ 16

struct fuse_uring_ent_in_out {
    uint64_t flags;
    uint64_t commit_id;
    uint32_t payload_sz;
    uint32_t padding;
    uint64_t reserved;
};

struct fuse_uring_req_header {
    char in_out[FUSE_URING_IN_OUT_HEADER_SZ];
    char op_in[FUSE_URING_OP_IN_OUT_SZ];
    struct fuse_uring_ent_in_out ring_ent_in_out;
};

struct fuse_uring_cmd_req {
    uint64_t flags;
    uint64_t commit_id;
    uint16_t qid;
    uint8_t padding[6];
};

#define ENTRY_HEAD 4096 /* the header page before each payload */
#define WAKE_DATA UINT64_MAX /* user_data of the NOP that wakes a waiter */
#define SQE_SIZE 128 /* IORING_SETUP_SQE128 */

/* ---- one queue: its io_uring and its entries ------------------------------- */

struct queue {
    int ring_fd;
    unsigned sq_entries, cq_entries;
    void *sq_map, *cq_map, *sqes;
    size_t sq_map_len, cq_map_len, sqes_len;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_cqe *cqes;
    pthread_mutex_t sq_lock; /* filling an SQE and submitting it, as one step */
    pthread_mutex_t cq_lock; /* one waiter at a time */
    uint64_t *commit_ids; /* per entry: the request it holds */
    struct iovec *iov; /* per entry: header, payload (the kernel reads them at REGISTER) */
    unsigned long long served;
    unsigned held; /* entries Python serves now (changed with the GIL held) */
    int registered;
};

typedef struct {
    PyObject_HEAD
    int fuse_fd;
    unsigned nr_queues, depth;
    size_t payload_size, stride;
    char *arena;
    size_t arena_len;
    struct queue *queues;
    int closed;
    Py_ssize_t exports;
} RingObject;

static int sys_io_uring_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_io_uring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags)
{
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}

static char *entry_base(RingObject *r, unsigned qid, unsigned ent)
{
    return r->arena + ((size_t)qid * r->depth + ent) * r->stride;
}

static struct fuse_uring_req_header *entry_header(RingObject *r, unsigned qid, unsigned ent)
{
    return (struct fuse_uring_req_header *)entry_base(r, qid, ent);
}

static char *entry_payload(RingObject *r, unsigned qid, unsigned ent)
{
    return entry_base(r, qid, ent) + ENTRY_HEAD;
}

static void queue_unmap(struct queue *q)
{
    if (q->sqes && q->sqes != MAP_FAILED)
        munmap(q->sqes, q->sqes_len);
    if (q->cq_map && q->cq_map != MAP_FAILED && q->cq_map != q->sq_map)
        munmap(q->cq_map, q->cq_map_len);
    if (q->sq_map && q->sq_map != MAP_FAILED)
        munmap(q->sq_map, q->sq_map_len);
    q->sqes = q->cq_map = q->sq_map = NULL;
    if (q->ring_fd >= 0)
        close(q->ring_fd);
    q->ring_fd = -1;
}

/* io_uring_setup and the three mappings; errno on failure. */
static int queue_setup(struct queue *q, unsigned depth, int fuse_fd)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SQE128;
    q->ring_fd = sys_io_uring_setup(depth * 2, &p); /* one command per entry, plus wake-ups */
    if (q->ring_fd < 0)
        return errno;
    q->sq_entries = p.sq_entries;
    q->cq_entries = p.cq_entries;
    q->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    q->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (q->cq_map_len > q->sq_map_len)
            q->sq_map_len = q->cq_map_len;
    }
    q->sq_map = mmap(NULL, q->sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, q->ring_fd,
                     IORING_OFF_SQ_RING);
    if (q->sq_map == MAP_FAILED)
        return errno;
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        q->cq_map = q->sq_map;
    } else {
        q->cq_map = mmap(NULL, q->cq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, q->ring_fd,
                         IORING_OFF_CQ_RING);
        if (q->cq_map == MAP_FAILED)
            return errno;
    }
    q->sqes_len = (size_t)p.sq_entries * SQE_SIZE;
    q->sqes = mmap(NULL, q->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, q->ring_fd,
                   IORING_OFF_SQES);
    if (q->sqes == MAP_FAILED)
        return errno;
    char *sq = q->sq_map, *cq = q->cq_map;
    q->sq_head = (unsigned *)(sq + p.sq_off.head);
    q->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    q->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    q->sq_array = (unsigned *)(sq + p.sq_off.array);
    q->cq_head = (unsigned *)(cq + p.cq_off.head);
    q->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    q->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    q->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    /* Not a registered (fixed) file: the ring would then hold /dev/fuse open until its
     * context is freed, asynchronously, after the daemon died; callers would see the
     * connection aborted (ECONNABORTED) where a dead classic daemon gives ENOTCONN. */
    (void)fuse_fd;
    return 0;
}

/* With sq_lock held: fill the next SQE; NULL if the ring is full (a bug: one command per entry). */
static struct io_uring_sqe *queue_next_sqe(struct queue *q)
{
    unsigned tail = *q->sq_tail;
    unsigned head = __atomic_load_n(q->sq_head, __ATOMIC_ACQUIRE);
    if (tail - head >= q->sq_entries)
        return NULL;
    unsigned index = tail & *q->sq_mask;
    struct io_uring_sqe *sqe = (struct io_uring_sqe *)((char *)q->sqes + (size_t)index * SQE_SIZE);
    memset(sqe, 0, SQE_SIZE);
    q->sq_array[index] = index;
    return sqe;
}

static void queue_advance_sq(struct queue *q)
{
    __atomic_store_n(q->sq_tail, *q->sq_tail + 1, __ATOMIC_RELEASE);
}

static void prep_fuse_cmd(struct io_uring_sqe *sqe, int fuse_fd, unsigned cmd, unsigned qid, unsigned ent,
                          uint64_t commit_id, struct iovec *iov)
{
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fuse_fd;
    sqe->cmd_op = cmd;
    sqe->addr = (uint64_t)(uintptr_t)iov;
    sqe->len = 2;
    sqe->user_data = ent;
    struct fuse_uring_cmd_req *req = (struct fuse_uring_cmd_req *)sqe->cmd;
    req->qid = (uint16_t)qid;
    req->commit_id = commit_id;
}

/* ---- the Python type --------------------------------------------------------- */

static void ring_release(RingObject *r)
{
    if (r->queues) {
        for (unsigned i = 0; i < r->nr_queues; i++)
            queue_unmap(&r->queues[i]);
    }
}

static void Ring_dealloc(RingObject *r)
{
    ring_release(r);
    if (r->queues) {
        for (unsigned i = 0; i < r->nr_queues; i++) {
            PyMem_Free(r->queues[i].commit_ids);
            PyMem_Free(r->queues[i].iov);
            pthread_mutex_destroy(&r->queues[i].sq_lock);
            pthread_mutex_destroy(&r->queues[i].cq_lock);
        }
        PyMem_Free(r->queues);
    }
    if (r->arena && r->arena != MAP_FAILED)
        munmap(r->arena, r->arena_len);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static int Ring_init(RingObject *r, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "queues", "depth", "payload_size", NULL};
    int fd;
    unsigned nr_queues, depth;
    Py_ssize_t payload;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iIIn", kwlist, &fd, &nr_queues, &depth, &payload))
        return -1;
    if (r->queues) {
        PyErr_SetString(PyExc_RuntimeError, "Ring is set up already");
        return -1;
    }
    if (nr_queues == 0 || nr_queues > 65535 || depth == 0 || depth > 1024 || payload < 8192) {
        PyErr_SetString(PyExc_ValueError, "queues 1..65535, depth 1..1024, payload_size >= 8192");
        return -1;
    }
    r->fuse_fd = fd;
    r->nr_queues = nr_queues;
    r->depth = depth;
    r->payload_size = ((size_t)payload + 4095) & ~(size_t)4095;
    r->stride = ENTRY_HEAD + r->payload_size;
    r->arena_len = r->stride * nr_queues * depth;
    r->arena = mmap(NULL, r->arena_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r->arena == MAP_FAILED) {
        r->arena = NULL;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    r->queues = PyMem_Calloc(nr_queues, sizeof(struct queue));
    if (!r->queues) {
        PyErr_NoMemory();
        return -1;
    }
    for (unsigned i = 0; i < nr_queues; i++) {
        struct queue *q = &r->queues[i];
        q->ring_fd = -1;
        pthread_mutex_init(&q->sq_lock, NULL);
        pthread_mutex_init(&q->cq_lock, NULL);
        q->commit_ids = PyMem_Calloc(depth, sizeof(uint64_t));
        q->iov = PyMem_Calloc((size_t)depth * 2, sizeof(struct iovec));
        if (!q->commit_ids || !q->iov) {
            PyErr_NoMemory();
            return -1;
        }
        for (unsigned e = 0; e < depth; e++) {
            q->iov[2 * e].iov_base = entry_header(r, i, e);
            q->iov[2 * e].iov_len = sizeof(struct fuse_uring_req_header);
            q->iov[2 * e + 1].iov_base = entry_payload(r, i, e);
            q->iov[2 * e + 1].iov_len = r->payload_size;
        }
        int err = queue_setup(q, depth, fd);
        if (err) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    return 0;
}

static int Ring_getbuffer(RingObject *r, Py_buffer *view, int flags)
{
    if (!r->arena) {
        PyErr_SetString(PyExc_BufferError, "Ring has no arena");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)r, r->arena, (Py_ssize_t)r->arena_len, 0, flags) < 0)
        return -1;
    r->exports++;
    return 0;
}

static void Ring_releasebuffer(RingObject *r, Py_buffer *view)
{
    (void)view;
    r->exports--;
}

static PyBufferProcs Ring_as_buffer = {
    (getbufferproc)Ring_getbuffer,
    (releasebufferproc)Ring_releasebuffer,
};

static int check_qid(RingObject *r, unsigned qid)
{
    if (!r->queues) {
        PyErr_SetString(PyExc_RuntimeError, "Ring is not set up");
        return -1;
    }
    if (qid >= r->nr_queues) {
        PyErr_Format(PyExc_ValueError, "no queue %u", qid);
        return -1;
    }
    return 0;
}

/* Submits what queue_next_sqe filled: with sq_lock held, without the GIL. */
static int queue_submit(struct queue *q, unsigned count)
{
    for (;;) {
        int rc = sys_io_uring_enter(q->ring_fd, count, 0, 0);
        if (rc >= 0 || errno != EINTR)
            return rc < 0 ? -errno : rc;
    }
}

PyDoc_STRVAR(register_doc,
             "register(qid) -> None\n\n"
             "Hand every entry of queue qid to the kernel (FUSE_IO_URING_CMD_REGISTER), from the\n"
             "thread that will serve the queue.  OSError with the kernel's errno when it refuses\n"
             "(EOPNOTSUPP: fuse.enable_uring is N; EINVAL: a kernel without FUSE over io_uring).");

static PyObject *Ring_register(RingObject *r, PyObject *arg)
{
    unsigned qid = (unsigned)PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred() || check_qid(r, qid) < 0)
        return NULL;
    struct queue *q = &r->queues[qid];
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&q->sq_lock);
    unsigned filled = 0;
    for (unsigned e = 0; e < r->depth; e++) {
        struct io_uring_sqe *sqe = queue_next_sqe(q);
        if (!sqe)
            break;
        prep_fuse_cmd(sqe, r->fuse_fd, FUSE_IO_URING_CMD_REGISTER, qid, e, 0, &q->iov[2 * e]);
        queue_advance_sq(q);
        filled++;
    }
    rc = queue_submit(q, filled);
    pthread_mutex_unlock(&q->sq_lock);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    /* A refused REGISTER completes at once; an accepted one waits for a request. */
    pthread_mutex_lock(&q->cq_lock);
    unsigned head = *q->cq_head, tail = __atomic_load_n(q->cq_tail, __ATOMIC_ACQUIRE);
    int refused = 0;
    while (head != tail) {
        struct io_uring_cqe *cqe = &q->cqes[head & *q->cq_mask];
        if (cqe->res < 0 && cqe->user_data != WAKE_DATA) {
            refused = -cqe->res;
            head++;
            continue;
        }
        break; /* a request already: the caller takes it */
    }
    __atomic_store_n(q->cq_head, head, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&q->cq_lock);
    if (refused) {
        errno = refused;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    q->registered = 1;
    Py_RETURN_NONE;
}

/* Waits, without the GIL, for the next completion on q: 1 with *ent set, 0 when the
 * connection is over (or woken), -errno when io_uring_enter fails. */
static int queue_wait(RingObject *r, struct queue *q, unsigned *ent)
{
    int64_t res = 0;
    uint64_t data = 0;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&q->cq_lock);
    for (;;) {
        unsigned head = *q->cq_head;
        if (head != __atomic_load_n(q->cq_tail, __ATOMIC_ACQUIRE)) {
            struct io_uring_cqe *cqe = &q->cqes[head & *q->cq_mask];
            res = cqe->res;
            data = cqe->user_data;
            __atomic_store_n(q->cq_head, head + 1, __ATOMIC_RELEASE);
            break;
        }
        if (r->closed) {
            data = WAKE_DATA;
            break;
        }
        if (sys_io_uring_enter(q->ring_fd, 0, 1, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR) {
            err = errno;
            break;
        }
    }
    pthread_mutex_unlock(&q->cq_lock);
    Py_END_ALLOW_THREADS
    if (err)
        return -err;
    if (data == WAKE_DATA || res < 0 || data >= r->depth)
        return 0; /* ENOTCONN / ECANCELED: the connection ended; or woken */
    *ent = (unsigned)data;
    return 1;
}

/* The request entry ent holds: its commit id noted, its length checked.  The op args
 * are what the header's length leaves beside the payload.  -1 when malformed. */
static int entry_take(RingObject *r, unsigned qid, unsigned ent, uint32_t *len, uint32_t *op_sz)
{
    struct queue *q = &r->queues[qid];
    struct fuse_uring_req_header *h = entry_header(r, qid, ent);
    memcpy(len, h->in_out, 4);
    uint32_t payload_sz = h->ring_ent_in_out.payload_sz;
    q->commit_ids[ent] = h->ring_ent_in_out.commit_id;
    q->served++;
    q->held++;
    if (*len < FUSE_IN_HEADER_SZ + payload_sz || *len - FUSE_IN_HEADER_SZ - payload_sz > FUSE_URING_OP_IN_OUT_SZ ||
        payload_sz > r->payload_size)
        return -1;
    *op_sz = *len - FUSE_IN_HEADER_SZ - payload_sz;
    return 0;
}

/* Rebuilds the request as one classic message ending where the payload begins. */
static char *entry_contiguous(RingObject *r, unsigned qid, unsigned ent, uint32_t op_sz)
{
    struct fuse_uring_req_header *h = entry_header(r, qid, ent);
    char *start = entry_payload(r, qid, ent) - op_sz - FUSE_IN_HEADER_SZ;
    memcpy(start, h->in_out, FUSE_IN_HEADER_SZ);
    memcpy(start + FUSE_IN_HEADER_SZ, h->op_in, op_sz);
    return start;
}

/* An error reply in place: the out header's error, no payload. */
static void fill_error(RingObject *r, unsigned qid, unsigned ent, int error)
{
    struct fuse_uring_req_header *h = entry_header(r, qid, ent);
    uint32_t len = FUSE_OUT_HEADER_SZ;
    int32_t neg = -error;
    uint64_t unique;
    memcpy(&unique, h->in_out + 8, 8); /* the in header's unique, still there */
    memcpy(h->in_out, &len, 4);
    memcpy(h->in_out + 4, &neg, 4);
    memcpy(h->in_out + 8, &unique, 8);
    h->ring_ent_in_out.payload_sz = 0;
}

/* Gives entry ent back with the reply in its buffers (COMMIT_AND_FETCH), the GIL
 * released around the submission: >= 0 done, -ENOTCONN closed, -EBUSY a full ring. */
static int queue_commit(RingObject *r, unsigned qid, unsigned ent)
{
    struct queue *q = &r->queues[qid];
    int rc = 0;
    if (q->held)
        q->held--;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&q->sq_lock);
    if (r->closed) {
        rc = -ENOTCONN;
    } else {
        struct io_uring_sqe *sqe = queue_next_sqe(q);
        if (!sqe) {
            rc = -EBUSY;
        } else {
            prep_fuse_cmd(sqe, r->fuse_fd, FUSE_IO_URING_CMD_COMMIT_AND_FETCH, qid, ent, q->commit_ids[ent], &q->iov[2 * ent]);
            queue_advance_sq(q);
            rc = queue_submit(q, 1);
        }
    }
    pthread_mutex_unlock(&q->sq_lock);
    Py_END_ALLOW_THREADS
    return rc;
}

/* ---- the C loop: one ring thread serving its queue through pykld_dispatch() ---- */

/* Serves the request entry ent holds and leaves the reply in its buffers: the out
 * header in the header area, the payload copied straight into the payload buffer.
 * Every request gets an answer (EIO where pykld cannot give one). */
static void serve_entry(RingObject *r, pykld_dispatcher *d, unsigned qid, unsigned ent)
{
    struct fuse_uring_req_header *h = entry_header(r, qid, ent);
    char *payload = entry_payload(r, qid, ent);
    uint32_t len, op_sz;
    if (entry_take(r, qid, ent, &len, &op_sz) < 0) {
        PyObject *text = PyUnicode_FromFormat("fuse-ring%u: malformed ring request (len %u): EIO", qid, len);
        if (text)
            pykld_log(d, text);
        Py_XDECREF(text);
        PyErr_Clear();
        fill_error(r, qid, ent, EIO);
        return;
    }
    /* Contiguous, so answer()'s hand-off of an unusual request copies nothing. */
    char *start = entry_contiguous(r, qid, ent, op_sz);
    pykld_reply reply;
    int rc = pykld_dispatch(d, (const struct fuse_in_header *)start, start + FUSE_IN_HEADER_SZ, op_sz, payload,
                            len - FUSE_IN_HEADER_SZ - op_sz, &reply);
    size_t copied = 0;
    if (rc < 0)
        PyErr_WriteUnraisable((PyObject *)d); /* out of memory: the contract says log and drop; EIO here */
    if (rc == 0 && reply.send)
        copied = pykld_reply_copy(&reply, payload, r->payload_size);
    if (rc < 0 || !reply.send || copied == (size_t)-1) {
        fill_error(r, qid, ent, EIO); /* the in header's unique is still in place */
    } else {
        memcpy(h->in_out, &reply.out, FUSE_OUT_HEADER_SZ);
        h->ring_ent_in_out.payload_sz = (uint32_t)copied;
    }
    pykld_reply_release(&reply);
}

PyDoc_STRVAR(serve_doc,
             "serve(qid, dispatcher, session) -> None\n\n"
             "Serve queue qid in C until the connection ends or session's reader role says leave:\n"
             "wait for a request without the GIL, serve it through dispatcher (a _loop.Dispatcher),\n"
             "copy the reply into its entry, commit and fetch, then take the reader role again\n"
             "(session is a transport Session: its lock and counters, as the classic loop's work()).");

static PyObject *Ring_serve(RingObject *r, PyObject *args)
{
    unsigned qid;
    PyObject *dobj, *session;
    if (!PyArg_ParseTuple(args, "IOO:serve", &qid, &dobj, &session) || check_qid(r, qid) < 0)
        return NULL;
    pykld_dispatcher *d = pykld_dispatcher_from(dobj);
    if (d == NULL)
        return NULL;
    roles role;
    PyObject *result = NULL;
    if (pykld_roles_init(&role, session) < 0)
        goto out;
    Py_INCREF(dobj); /* the session may swap its dispatcher's entries, never free it under us */
    for (;;) {
        unsigned ent = 0;
        int got = queue_wait(r, &r->queues[qid], &ent);
        if (got < 0) {
            errno = -got;
            PyErr_SetFromErrno(PyExc_OSError);
            break;
        }
        if (got == 0)
            goto over;
        int took = pykld_took(&role);
        if (took == 0)
            serve_entry(r, d, qid, ent);
        else
            fill_error(r, qid, ent, EIO);
        int rc = queue_commit(r, qid, ent);
        if (took < 0)
            break;
        if (rc == -EBUSY) {
            PyErr_SetString(PyExc_RuntimeError, "ring full: more commands than entries");
            break;
        }
        if (rc < 0)
            goto over;
        int again = pykld_take_role(&role);
        if (again < 0)
            break;
        if (!again) {
            result = Py_None;
            break;
        }
    }
    goto done;
over: /* the connection is over */
    if (pykld_set_stopping(session) == 0)
        result = Py_None;
done:
    Py_DECREF(dobj);
out:
    pykld_roles_clear(&role);
    Py_XINCREF(result);
    return result;
}

PyDoc_STRVAR(wake_doc, "wake(qid) -> None\n\nMake a serve(qid) in progress return (a NOP through the ring).");

static PyObject *Ring_wake(RingObject *r, PyObject *arg)
{
    unsigned qid = (unsigned)PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred() || check_qid(r, qid) < 0)
        return NULL;
    struct queue *q = &r->queues[qid];
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&q->sq_lock);
    if (q->ring_fd >= 0) {
        struct io_uring_sqe *sqe = queue_next_sqe(q);
        if (sqe) {
            sqe->opcode = IORING_OP_NOP;
            sqe->user_data = WAKE_DATA;
            queue_advance_sq(q);
            queue_submit(q, 1);
        }
    }
    pthread_mutex_unlock(&q->sq_lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

PyDoc_STRVAR(close_doc,
             "close() -> None\n\n"
             "Refuse further commits and close the rings (their commands are cancelled).  Call\n"
             "once no thread waits; the arena stays mapped while memoryviews of it live.");

static PyObject *Ring_close(RingObject *r, PyObject *unused)
{
    (void)unused;
    if (!r->queues || r->closed)
        Py_RETURN_NONE;
    for (unsigned i = 0; i < r->nr_queues; i++)
        pthread_mutex_lock(&r->queues[i].sq_lock);
    r->closed = 1;
    ring_release(r);
    for (unsigned i = 0; i < r->nr_queues; i++)
        pthread_mutex_unlock(&r->queues[i].sq_lock);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(served_doc, "served(qid) -> int\n\nRequests queue qid has taken from the kernel.");

static PyObject *Ring_served(RingObject *r, PyObject *arg)
{
    unsigned qid = (unsigned)PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred() || check_qid(r, qid) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(r->queues[qid].served);
}

PyDoc_STRVAR(held_doc, "held(qid) -> int\n\nEntries of queue qid taken from the kernel and not committed yet.");

static PyObject *Ring_held(RingObject *r, PyObject *arg)
{
    unsigned qid = (unsigned)PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred() || check_qid(r, qid) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(r->queues[qid].held);
}

static PyMethodDef Ring_methods[] = {
    {"held", (PyCFunction)Ring_held, METH_O, held_doc},
    {"register", (PyCFunction)Ring_register, METH_O, register_doc},
    {"serve", (PyCFunction)Ring_serve, METH_VARARGS, serve_doc},
    {"wake", (PyCFunction)Ring_wake, METH_O, wake_doc},
    {"close", (PyCFunction)Ring_close, METH_NOARGS, close_doc},
    {"served", (PyCFunction)Ring_served, METH_O, served_doc},
    {NULL, NULL, 0, NULL},
};

static PyObject *Ring_get_queues(RingObject *r, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLong(r->nr_queues);
}

static PyObject *Ring_get_depth(RingObject *r, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLong(r->depth);
}

static PyGetSetDef Ring_getset[] = {
    {"queues", (getter)Ring_get_queues, NULL, "number of queues", NULL},
    {"depth", (getter)Ring_get_depth, NULL, "entries per queue", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pykld._loop.Ring",
    .tp_basicsize = sizeof(RingObject),
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_as_buffer = &Ring_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ring(fd, queues, depth, payload_size): FUSE over io_uring for the FUSE channel fd.",
    .tp_methods = Ring_methods,
    .tp_getset = Ring_getset,
    .tp_init = (initproc)Ring_init,
    .tp_new = PyType_GenericNew,
};

/* Called from PyInit__loop: FUSE over io_uring lives in pykld._loop, beside the
 * dispatch it serves through. */
int pykld_uring_add(PyObject *m)
{
    if (PyType_Ready(&RingType) < 0)
        return -1;
    Py_INCREF(&RingType);
    if (PyModule_AddObject(m, "Ring", (PyObject *)&RingType) < 0) {
        Py_DECREF(&RingType);
        return -1;
    }
    return 0;
}
