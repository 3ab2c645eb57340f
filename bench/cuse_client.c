/* The CUSE benchmark's client: one operation in a tight loop on one character device, timed.
 *
 *   cuse_client DEV OP SECONDS REGION   OP: read4k write4k read1m write1m openclose
 *                                           getsize fiocread4k fiocwrite4k
 *   cuse_client DEV fill REGION          write REGION bytes of a pattern, read them back, compare,
 *                                        and check FIOC_GET_SIZE and FIOC_READ against them
 *
 * Built at bench time (gcc -O2 -I<dir holding libfuse's examples/ioctl.h>), run inside the VM
 * against both daemons (pykld's membuf and libfuse's cuse.c example).
 *
 * Why read(2)/write(2) and a reopen every REGION bytes: Linux CUSE ignores the file position
 * (its read_iter/write_iter start every call at offset 0 and its llseek does nothing), so
 * pread/pwrite offsets never reach a CUSE daemon.  The C example therefore reads and writes at
 * offset 0 every time; pykld keeps a position per open, as a FreeBSD character device's f_offset,
 * so its reads and writes move through the buffer.  Both daemons hold REGION bytes (filled
 * first); after REGION/size operations the client closes and reopens the device, which takes
 * pykld's position back to 0 (never a short read at the end, never a write that grows the buffer).
 * The reopen is the same for both daemons and is not timed.  Each operation is then one system
 * call that copies `size` bytes of the buffer for both daemons.
 *
 * Prints one line of JSON: {"op":..., "ops":N, "seconds":S, "warmup_ops":W, "cpu_seconds":C,
 * "reopens":R} (C: the client's CPU time in the timed loop).  Any short or failed operation, a
 * wrong size or wrong bytes is an error (exit 1), never a silent count.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define BENCH_CLIENT "cuse_client"
#include "bench_util.h" /* now, cpu_now, die, check, MIB */
#include "ioctl.h" /* libfuse's examples/ioctl.h: FIOC_* and struct fioc_rw_arg, as cuse.c uses them */

#define KIB4 4096

static int open_dev(const char *path)
{
	int fd = open(path, O_RDWR);
	if (fd < 0)
		die(path);
	return fd;
}

enum { READ4K, WRITE4K, READ1M, WRITE1M, OPENCLOSE, GETSIZE, FIOCREAD4K, FIOCWRITE4K, NOPS };
static const char *names[NOPS] = {"read4k", "write4k", "read1m", "write1m", "openclose",
				  "getsize", "fiocread4k", "fiocwrite4k"};
static const size_t sizes[NOPS] = {KIB4, KIB4, MIB, MIB, 0, 0, KIB4, KIB4};

struct state {
	const char *path;
	int fd;
	int op;
	size_t region;
	long per_open;  /* sequential operations before the reopen (0: never) */
	long done;      /* sequential operations on this open */
	long reopens;
	char *buf;
};

/* One operation. */
static void one(struct state *s)
{
	switch (s->op) {
	case READ4K:
	case READ1M:
		check(read(s->fd, s->buf, sizes[s->op]), sizes[s->op], names[s->op]);
		break;
	case WRITE4K:
	case WRITE1M:
		check(write(s->fd, s->buf, sizes[s->op]), sizes[s->op], names[s->op]);
		break;
	case OPENCLOSE: {
		int f = open(s->path, O_RDWR);
		if (f < 0 || close(f) != 0)
			die("open+close");
		break;
	}
	case GETSIZE: {
		size_t size = 0;
		if (ioctl(s->fd, FIOC_GET_SIZE, &size) != 0)
			die("FIOC_GET_SIZE");
		if (size != s->region) {
			fprintf(stderr, "cuse_client: FIOC_GET_SIZE says %zu, not %zu\n", size, s->region);
			exit(1);
		}
		break;
	}
	case FIOCREAD4K:
	case FIOCWRITE4K: {
		struct fioc_rw_arg arg = {.offset = 0, .buf = s->buf, .size = KIB4};
		int read_ = s->op == FIOCREAD4K;
		int got = ioctl(s->fd, read_ ? FIOC_READ : FIOC_WRITE, &arg);
		if (got < 0)
			die(read_ ? "FIOC_READ" : "FIOC_WRITE");
		if (got != KIB4 || arg.prev_size != s->region || arg.new_size != s->region) {
			fprintf(stderr, "cuse_client: %s: %d bytes, sizes %zu -> %zu (region %zu)\n",
				read_ ? "FIOC_READ" : "FIOC_WRITE", got, arg.prev_size, arg.new_size, s->region);
			exit(1);
		}
		break;
	}
	}
}

/* Close and reopen when the region is used up, so a per-open position starts again at 0. */
static int maybe_reopen(struct state *s)
{
	if (s->per_open == 0 || s->done < s->per_open)
		return 0;
	if (close(s->fd) != 0)
		die("close");
	s->fd = open_dev(s->path);
	s->done = 0;
	s->reopens++;
	return 1;
}

static unsigned char pattern(size_t i)
{
	return (unsigned char)(i * 7 + (i >> 12) + (i >> 20));
}

static int fill(const char *path, size_t region)
{
	char *buf, *back;
	struct fioc_rw_arg arg;
	size_t size = 0;
	int fd;

	if (posix_memalign((void **)&buf, KIB4, region) != 0 || posix_memalign((void **)&back, KIB4, region) != 0)
		return 1;
	for (size_t i = 0; i < region; i++)
		buf[i] = (char)pattern(i);
	/* One write(2) of the whole region: the kernel splits it into requests of at most
	 * max_write at offsets 0, 128 KiB, ... which both daemons store in order. */
	fd = open_dev(path);
	check(write(fd, buf, region), region, "fill write");
	close(fd);
	fd = open_dev(path);
	memset(back, 0, region);
	check(read(fd, back, region), region, "fill read");
	if (memcmp(buf, back, region) != 0) {
		fprintf(stderr, "cuse_client: %s: read back differs from what was written\n", path);
		return 1;
	}
	if (ioctl(fd, FIOC_GET_SIZE, &size) != 0)
		die("fill FIOC_GET_SIZE");
	if (size != region) {
		fprintf(stderr, "cuse_client: %s: FIOC_GET_SIZE %zu after writing %zu\n", path, size, region);
		return 1;
	}
	memset(back, 0, KIB4);
	arg = (struct fioc_rw_arg){.offset = 3 * KIB4 + 5, .buf = back, .size = KIB4};
	if (ioctl(fd, FIOC_READ, &arg) != KIB4 || memcmp(back, buf + 3 * KIB4 + 5, KIB4) != 0 ||
	    arg.prev_size != region || arg.new_size != region) {
		fprintf(stderr, "cuse_client: %s: FIOC_READ through pointers gave wrong bytes or sizes\n", path);
		return 1;
	}
	close(fd);
	printf("{\"op\":\"fill\",\"ok\":1,\"region\":%zu}\n", region);
	free(buf);
	free(back);
	return 0;
}

int main(int argc, char **argv)
{
	struct state s = {0};
	if (argc < 4) {
		fprintf(stderr, "usage: cuse_client DEV OP SECONDS REGION | cuse_client DEV fill REGION\n");
		return 2;
	}
	s.path = argv[1];
	if (strcmp(argv[2], "fill") == 0)
		return fill(s.path, strtoull(argv[3], NULL, 0));
	if (argc < 5) {
		fprintf(stderr, "cuse_client: %s needs SECONDS and REGION\n", argv[2]);
		return 2;
	}
	s.op = -1;
	for (int i = 0; i < NOPS; i++)
		if (strcmp(argv[2], names[i]) == 0)
			s.op = i;
	if (s.op < 0) {
		fprintf(stderr, "cuse_client: unknown op %s\n", argv[2]);
		return 2;
	}
	double seconds = atof(argv[3]);
	s.region = strtoull(argv[4], NULL, 0);
	if (s.op <= WRITE1M) {
		s.per_open = (long)(s.region / sizes[s.op]);
		if (s.per_open < 1) {
			fprintf(stderr, "cuse_client: region %zu smaller than one %s\n", s.region, names[s.op]);
			return 2;
		}
	}
	/* Page-aligned: a 1 MiB transfer then spans 256 pages, 8 requests of 32 pages (128 KiB),
	 * the most CUSE puts in one request; unaligned it would take 9. */
	if (posix_memalign((void **)&s.buf, KIB4, MIB) != 0)
		return 1;
	memset(s.buf, 'x', MIB);
	s.fd = open_dev(s.path);

	/* Warm up, untimed: at least 20 operations and 50 ms. */
	long warm = 0;
	double t0 = now();
	for (; warm < 20 || now() - t0 < 0.05; warm++) {
		maybe_reopen(&s);
		one(&s);
		s.done++;
	}

	long n = 0;
	double paused = 0, cpu_paused = 0;
	double cpu0 = cpu_now(), start = now(), t;
	do {
		if (s.per_open && s.done >= s.per_open) {
			double p0 = now(), c0 = cpu_now();
			maybe_reopen(&s);
			paused += now() - p0;
			cpu_paused += cpu_now() - c0;
		}
		one(&s);
		s.done++;
		n++;
		t = now();
	} while (t - start - paused < seconds);
	double cpu = cpu_now() - cpu0 - cpu_paused;
	close(s.fd);
	printf("{\"op\":\"%s\",\"ops\":%ld,\"seconds\":%.6f,\"warmup_ops\":%ld,\"cpu_seconds\":%.6f,"
	       "\"reopens\":%ld}\n", names[s.op], n, t - start - paused, warm, cpu, s.reopens);
	return 0;
}
