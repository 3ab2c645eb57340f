/* The benchmark's client: one operation in a tight loop on one file, timed.
 *
 *   client PATH OP SECONDS         OP: pread4k pwrite4k pread1m pwrite1m openclose
 *   client PATH OP SECONDS START   the same, timed from START (CLOCK_MONOTONIC seconds) on
 *   client PATH fill               write 1 MiB of a pattern at offset 0, read it back, compare
 *
 * Compiled at bench time (gcc -O2) so that the client costs next to nothing:
 * every contender gets the same client, and on a 2-core machine a cheap client
 * leaves the CPU to the daemon being measured.  The file is opened with O_DIRECT
 * (every operation reaches the daemon); if the filesystem refuses it, plain.
 * Prints one line of JSON: {"op":..., "ops":N, "seconds":S, "warmup_ops":W, "cpu_seconds":C,
 * "o_direct":0|1, "late":L} (C: the client's own CPU time in the timed loop).
 *
 * START is for several clients at once (the concurrency series): the benchmark starts N of them
 * with the same START a little ahead, each warms up until then, and all time the same window,
 * START to START + SECONDS, however long each took to be exec'd.  A client that was not warm by
 * START (20 operations) starts timing late and says by how much (L seconds; 0 without START).
 * Any short or failed operation is an error (exit 1), never a silent count.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BENCH_CLIENT "client"
#include "bench_util.h" /* now, cpu_now, die, check, MIB */

#define KIB 4096

static int o_direct = 1;

static int open_file(const char *path)
{
	int fd = o_direct ? open(path, O_RDWR | O_DIRECT) : -1;
	if (fd < 0 && o_direct && errno == EINVAL) {
		o_direct = 0;  /* the filesystem refuses O_DIRECT: reported in the output */
		fd = open(path, O_RDWR);
	} else if (fd < 0) {
		fd = open(path, O_RDWR);
	}
	if (fd < 0) {
		fprintf(stderr, "client: open %s: %s\n", path, strerror(errno));
		exit(1);
	}
	return fd;
}

/* One operation; the fd is reopened by openclose only. */
static void one(int op, const char *path, int fd, char *buf)
{
	switch (op) {
	case 0: check(pread(fd, buf, KIB, 0), KIB, "pread 4k"); break;
	case 1: check(pwrite(fd, buf, KIB, 0), KIB, "pwrite 4k"); break;
	case 2: check(pread(fd, buf, MIB, 0), MIB, "pread 1m"); break;
	case 3: check(pwrite(fd, buf, MIB, 0), MIB, "pwrite 1m"); break;
	case 4: {
		int f = o_direct ? open(path, O_RDWR | O_DIRECT) : open(path, O_RDWR);
		if (f < 0 || close(f) != 0)
			die("open+close");
		break;
	}
	}
}

static int fill(const char *path, char *buf)
{
	char *back;
	int fd = open_file(path);
	if (posix_memalign((void **)&back, KIB, MIB) != 0)
		return 1;
	for (size_t i = 0; i < MIB; i++)
		buf[i] = (char)(i * 7 + (i >> 12));
	check(pwrite(fd, buf, MIB, 0), MIB, "fill pwrite");
	memset(back, 0, MIB);
	check(pread(fd, back, MIB, 0), MIB, "fill pread");
	if (memcmp(buf, back, MIB) != 0) {
		fprintf(stderr, "client: %s: read back differs from what was written\n", path);
		return 1;
	}
	close(fd);
	printf("{\"op\":\"fill\",\"ok\":1,\"o_direct\":%d}\n", o_direct);
	return 0;
}

int main(int argc, char **argv)
{
	static const char *ops[] = {"pread4k", "pwrite4k", "pread1m", "pwrite1m", "openclose"};
	char *buf;
	int op = -1;

	if (argc < 3) {
		fprintf(stderr, "usage: client PATH OP SECONDS | client PATH fill\n");
		return 2;
	}
	if (posix_memalign((void **)&buf, KIB, MIB) != 0)
		return 1;
	memset(buf, 'x', MIB);
	if (strcmp(argv[2], "fill") == 0)
		return fill(argv[1], buf);
	for (int i = 0; i < 5; i++)
		if (strcmp(argv[2], ops[i]) == 0)
			op = i;
	if (op < 0 || argc < 4) {
		fprintf(stderr, "client: unknown op %s\n", argv[2]);
		return 2;
	}
	double seconds = atof(argv[3]);
	int fd = open_file(argv[1]);

	/* Warm up: a few operations untimed (caches, lazily started daemon threads); with START, until
	 * then, so that every client of a concurrent run is busy before any is timed. */
	long warm = 0;
	double t0 = now();
	double start_at = argc > 4 ? atof(argv[4]) : 0;
	for (; warm < 20 || now() - t0 < 0.02 || now() < start_at; warm++)
		one(op, argv[1], fd, buf);

	long n = 0;
	double cpu0 = cpu_now(), start = now(), t;
	double late = start_at > 0 ? start - start_at : 0;
	double end = start_at > 0 ? start_at + seconds : start + seconds;
	do {
		for (int i = 0; i < 8; i++)  /* check the clock every 8 operations */
			one(op, argv[1], fd, buf);
		n += 8;
		t = now();
	} while (t < end);
	double cpu = cpu_now() - cpu0;
	close(fd);
	printf("{\"op\":\"%s\",\"ops\":%ld,\"seconds\":%.6f,\"warmup_ops\":%ld,\"cpu_seconds\":%.6f,"
	       "\"o_direct\":%d,\"late\":%.6f}\n", ops[op], n, t - start, warm, cpu, o_direct, late);
	return 0;
}
