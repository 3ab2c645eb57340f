/* loop.h: what dispatch.c and loop.c share inside pykld._loop (not the ring's
 * contract: that is dispatch.h). */
#ifndef PYKLD_LOOP_H
#define PYKLD_LOOP_H

#include "dispatch.h"

enum { E_READ, E_WRITE, E_OPEN, E_RELEASE, E_INTERRUPT, E_FORGET, E_BATCH_FORGET, E_FLUSH, ENTRY_COUNT };

struct pykld_dispatcher {
    PyObject_HEAD
    PyObject *session;
    PyObject *entry[ENTRY_COUNT]; /* the FileOps entry points, NULL where none */
    char has[ENTRY_COUNT];        /* the opcode is served in C */
    int flush_errno;              /* FLUSH's answer */
};

extern PyTypeObject pykld_DispatcherType;
int pykld_dispatch_init_module(void);

/* session.answer(view, nbytes), and its result as a reply (header included). */
PyObject *pykld_answer(pykld_dispatcher *d, PyObject *view, size_t nbytes);
int pykld_reply_from_python(pykld_dispatcher *d, pykld_reply *r, PyObject *value, uint32_t opcode);
void pykld_log(pykld_dispatcher *d, PyObject *text);

/* The classic channel: serve buf[:nbytes] and writev its reply to fd; GIL held.
 * -1 with an exception set when a BaseException must go on up. */
int pykld_serve_message(pykld_dispatcher *d, char *buf, size_t nbytes, int fd);

/* A Session's leader/follower bookkeeping, done in C on its own attributes
 * under its own lock (loop.c): the classic loop's and the ring's (uring.c). */
typedef struct {
    PyObject *session, *acquire, *release, *take_role;
} roles;
int pykld_roles_init(roles *r, PyObject *session); /* -1 with an exception set */
void pykld_roles_clear(roles *r);
int pykld_took(roles *r);      /* Session._took */
int pykld_take_role(roles *r); /* Session._take_reader_role: 1 serve again, 0 leave, -1 error */
int pykld_set_stopping(PyObject *session);

/* FUSE over io_uring (uring.c): adds the Ring type to the module. */
int pykld_uring_add(PyObject *module);

#endif
