/* What the bench clients (client.c, cuse_client.c) share: their clocks and their way of failing.
 *
 * A header of static inline functions, no library: each client stays one gcc command built at
 * bench time (membuf_bench.py, cuse_bench.py).  `#include "bench_util.h"` is found beside the
 * including file, so the gcc commands need no -I for it.
 *
 * Define BENCH_CLIENT (the program's name, a string literal) before including it: it prefixes every
 * error message, as the benchmark scripts show a client's stderr when it fails.
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#ifndef BENCH_CLIENT
#error "define BENCH_CLIENT, the name error messages start with, before including bench_util.h"
#endif

#define MIB (1 << 20)

static inline double clock_seconds(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Wall-clock seconds, monotonic: what the operations per second are counted against. */
static inline double now(void)
{
	return clock_seconds(CLOCK_MONOTONIC);
}

/* The client's own CPU seconds (all its threads): reported so that a client that ate the CPU the
 * daemon needed shows up in the results. */
static inline double cpu_now(void)
{
	return clock_seconds(CLOCK_PROCESS_CPUTIME_ID);
}

/* A failed call ends the run (exit 1): a figure from a run that failed must never be counted. */
static inline void die(const char *what)
{
	fprintf(stderr, BENCH_CLIENT ": %s: %s\n", what, strerror(errno));
	exit(1);
}

/* A read or write must move exactly `want` bytes; a short one is as fatal as a failed one. */
static inline void check(ssize_t got, size_t want, const char *what)
{
	if (got != (ssize_t)want) {
		if (got < 0)
			die(what);
		fprintf(stderr, BENCH_CLIENT ": %s: %zd of %zu bytes\n", what, got, want);
		exit(1);
	}
}

#endif
