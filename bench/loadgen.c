/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * bench/loadgen: closed-loop load generator of the socklb benchmark.
 *
 *   loadgen --proto tcp|udp --target ADDR:PORT [--target ...] [--duration S]
 *           [--warmup S] [--concurrency N] [--req-size B] [--resp-size B]
 *           [--timeout-ms MS] [--max-requests N] [--seed N]
 *
 * tcp: like netperf TCP_CRR - per request a new socket: connect(), send the
 *      request, read the response and the server's FIN, close().
 * udp: like netperf UDP_RR - one unconnected socket per thread; sendto() the
 *      request, recvfrom() the reply (matched by sequence number).
 *
 * With several --target, a TCP request picks one at random per connection
 * and a UDP thread picks one at random for its socket ("direct" mode: the
 * client balances by itself; with --slices, UDP thread i takes target i).  Latency is the time of the whole request
 * (socket() to close() for tcp), kept in a log-linear histogram with 256
 * sub-buckets per power of two (< 0.4% error).  Only requests that start after
 * the warm-up and end before the deadline count; errors count throughout.
 * Output: one JSON object on stdout.  The run is bounded by --duration (at
 * most 3600 s) and --max-requests.
 *
 * --slices START_NS:SLICE_NS:ARMS:ARM:SEED [--blocks B] time-shares the client
 * with ARMS - 1 other loadgen processes given the same START_NS, SLICE_NS,
 * ARMS and SEED: an A/B (or A/B/C...) with fine interleaving, so that the
 * host's noise, which comes in phases of milliseconds to seconds, hits every
 * arm alike.  Time from START_NS (CLOCK_MONOTONIC) is cut into slices of
 * SLICE_NS and the slices into cycles of ARMS slices; each cycle gives one
 * slice to each arm, in an order drawn from SEED and the cycle's number (so
 * that nothing periodic on the machine lines up with one arm).  This process
 * (arm ARM, 0-based) runs requests only in its slices and sleeps in the
 * others.  Warm-up and duration count from START_NS.  A request counts in its
 * slice when it starts and ends inside it; one that outruns its slice adds
 * the part of it inside the slice to the slice's "work".  The output adds the
 * requests and work of each cycle and, with B blocks (runs of consecutive
 * cycles), each block's requests and percentiles.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "proto.h"

#define SUB_BITS 8
#define SUB (1u << SUB_BITS)
#define NBUCKETS (40 * SUB)
#define MAX_TARGETS 64
#define MAX_THREADS 64
#define NERR 160 /* errno values below this; above: "other" */
#define E_TIMEOUT (NERR + 0)
#define E_SHORT (NERR + 1)
#define E_BADSEQ (NERR + 2)
#define E_OTHER (NERR + 3)
#define NKINDS (NERR + 4)
#define MAX_SLICES 1000000
#define MAX_BLOCKS 64
#define MAX_ARMS 8

struct target {
	struct sockaddr_storage addr;
	socklen_t len;
	int family;
	char text[80];
};

struct thread {
	pthread_t th;
	int idx;
	uint64_t rng;
	uint64_t requests;	/* counted: in the measurement window */
	uint64_t done;		/* all completed requests */
	uint64_t errors[NKINDS];
	uint64_t hist[NBUCKETS];
	uint64_t sum_ns, max_ns;
	uint32_t *slice_counts;	/* --slices: requests counted per cycle */
	double *slice_work;	/* --slices: the same, with a part of each request that outran its slice */
	uint64_t *block_hist;	/* --slices: NBUCKETS per block */
};

static struct target targets[MAX_TARGETS];
static int ntargets, concurrency = 1, is_udp, timeout_ms = 2000;
static double duration = 5, warmup = 0.5;
static uint32_t req_size = 100, resp_size = 100;
static uint64_t max_requests, seed = 1;
static uint64_t t_start, t_warm, t_end;
static atomic_ulong total_done;
/* --slices */
static int slicing, nblocks = 1;
static uint64_t slice_ns, ncycles;
static uint64_t slice_seed;
static unsigned narms, arm;
static unsigned char reqbuf[BENCH_MAX_MSG];

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t next_rand(uint64_t *s)
{
	/* xorshift64* */
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

static unsigned bucket_of(uint64_t ns)
{
	unsigned msb, shift, b;

	if (ns < SUB)
		return (unsigned)ns;
	msb = 63 - (unsigned)__builtin_clzll(ns);
	shift = msb - SUB_BITS;
	b = ((shift + 1) << SUB_BITS) + (unsigned)((ns >> shift) & (SUB - 1));
	return b < NBUCKETS ? b : NBUCKETS - 1;
}

/* Midpoint of a bucket, in ns. */
static double bucket_value(unsigned b)
{
	unsigned shift;
	double lo;

	if (b < SUB)
		return b;
	shift = (b >> SUB_BITS) - 1;
	lo = (double)((uint64_t)(SUB + (b & (SUB - 1))) << shift);
	return lo + (double)(1ull << shift) / 2.0;
}

/* The block of cycle c (--blocks): runs of consecutive cycles. */
static unsigned block_of(uint64_t c)
{
	uint64_t b = c * (uint64_t)nblocks / (ncycles ? ncycles : 1);

	return b < (uint64_t)nblocks ? (unsigned)b : (unsigned)nblocks - 1;
}

/* A completed request; with --slices, k is the cycle of the slice it
 * started in and k_end the end of that slice.  It counts (in the latency
 * histograms too) if it ended by then; one that ran past the end (into
 * another arm's slice) is credited with the part of it inside the slice, in
 * the slice's work: a slow arm (a request of 1 ms in 2 ms slices) would
 * otherwise lose half its requests. */
static void record(struct thread *t, uint64_t t0, uint64_t t1, int64_t k, uint64_t k_end)
{
	uint64_t d = t1 - t0;

	t->done++;
	atomic_fetch_add_explicit(&total_done, 1, memory_order_relaxed);
	if (t0 < t_warm || t1 > t_end)
		return;
	if (k >= 0) {
		if ((uint64_t)k >= ncycles)
			return;
		if (t1 > k_end) {
			if (t0 < k_end && d)
				t->slice_work[k] += (double)(k_end - t0) / (double)d;
			return;
		}
		t->slice_work[k] += 1.0;
		t->slice_counts[k]++;
		t->block_hist[(size_t)block_of((uint64_t)k) * NBUCKETS + bucket_of(d)]++;
	}
	t->requests++;
	t->hist[bucket_of(d)]++;
	t->sum_ns += d;
	if (d > t->max_ns)
		t->max_ns = d;
}

static void fail(struct thread *t, int kind)
{
	if (kind < 0 || kind >= NKINDS)
		kind = E_OTHER;
	t->errors[kind]++;
}

static int errno_kind(int e)
{
	if (e == EAGAIN || e == ETIMEDOUT)
		return E_TIMEOUT;
	return e > 0 && e < NERR ? e : E_OTHER;
}

static int stop_now(void)
{
	if (max_requests && atomic_load_explicit(&total_done, memory_order_relaxed) >= max_requests)
		return 1;
	return now_ns() >= t_end;
}

static void sleep_until(uint64_t t)
{
	struct timespec ts = { .tv_sec = (time_t)(t / 1000000000ull), .tv_nsec = (long)(t % 1000000000ull) };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* --slices: the position of this arm's slice in cycle c (a permutation of
 * the arms drawn from the seed and c, the same in every process). */
static unsigned arm_position(uint64_t c)
{
	unsigned perm[MAX_ARMS];
	uint64_t x = (slice_seed ^ (c * 0x9E3779B97F4A7C15ull)) | 1;

	for (unsigned i = 0; i < narms; i++)
		perm[i] = i;
	for (unsigned i = narms - 1; i > 0; i--) {
		unsigned j = (unsigned)(next_rand(&x) % (i + 1));
		unsigned tmp = perm[i];

		perm[i] = perm[j];
		perm[j] = tmp;
	}
	for (unsigned i = 0; i < narms; i++)
		if (perm[i] == arm)
			return i;
	return 0;
}

/* --slices: wait for a slice of this process's arm; returns its cycle and
 * sets *end to when the slice ends, or -1 once the run is over.  Without --slices:
 * 0, and no end. */
static int64_t my_slice(uint64_t *end)
{
	if (!slicing) {
		*end = UINT64_MAX;
		return stop_now() ? -1 : 0;
	}
	for (;;) {
		uint64_t now = now_ns(), k, next, mine;

		if (stop_now())
			return -1;
		if (now < t_start) {
			sleep_until(t_start);
			continue;
		}
		k = (now - t_start) / slice_ns;
		mine = k / narms * narms + arm_position(k / narms);
		if (k == mine) {
			*end = t_start + (k + 1) * slice_ns;
			return (int64_t)(k / narms);
		}
		next = k < mine ? mine : (k / narms + 1) * narms + arm_position(k / narms + 1);
		sleep_until(t_start + next * slice_ns < t_end ? t_start + next * slice_ns : t_end);
	}
}

static void set_timeouts(int fd)
{
	struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static void make_request(unsigned char *buf, uint64_t seq)
{
	struct bench_hdr h = { .req_len = htonl(req_size), .resp_len = htonl(resp_size), .seq = seq };

	memcpy(buf, &h, sizeof(h));
}

/* One TCP request: returns 0 or an error kind. */
static int tcp_once(struct thread *t, const struct target *tg, unsigned char *req, unsigned char *buf)
{
	uint32_t got = 0;
	size_t off = 0;
	int fd, kind = 0;

	fd = socket(tg->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return errno_kind(errno);
	set_timeouts(fd);
	if (connect(fd, (const struct sockaddr *)&tg->addr, tg->len)) {
		kind = errno_kind(errno);
		goto out;
	}
	make_request(req, t->done);
	while (off < req_size) {
		ssize_t n = send(fd, req + off, req_size - off, MSG_NOSIGNAL);

		if (n < 0) {
			kind = errno_kind(errno);
			goto out;
		}
		off += (size_t)n;
	}
	/* The response, then the server's FIN. */
	for (;;) {
		ssize_t n = recv(fd, buf, BENCH_MAX_MSG, 0);

		if (n < 0) {
			kind = errno_kind(errno);
			goto out;
		}
		if (n == 0)
			break;
		got += (uint32_t)n;
	}
	if (got != resp_size)
		kind = E_SHORT;
out:
	close(fd);
	return kind;
}

static void *tcp_thread(void *arg)
{
	struct thread *t = arg;
	unsigned char *req = malloc(BENCH_MAX_MSG), *buf = malloc(BENCH_MAX_MSG);

	if (!req || !buf)
		abort();
	memcpy(req, reqbuf, req_size);
	for (;;) {
		uint64_t k_end;
		int64_t k = my_slice(&k_end);

		if (k < 0)
			break;
		const struct target *tg = &targets[ntargets == 1 ? 0 : next_rand(&t->rng) % (uint64_t)ntargets];
		uint64_t t0 = now_ns();
		int kind = tcp_once(t, tg, req, buf);
		uint64_t t1 = now_ns();

		if (kind) {
			fail(t, kind);
			if (kind != E_SHORT)
				usleep(1000); /* no hot loop on a refused service */
		} else {
			record(t, t0, t1, slicing ? k : -1, k_end);
		}
	}
	free(req);
	free(buf);
	return NULL;
}

static void *udp_thread(void *arg)
{
	struct thread *t = arg;
	/* With --slices, thread i dials target i (mod their number): the same
	 * layout in every arm, where a random pick would make the arms differ
	 * in which servers their threads share for the whole run. */
	const struct target *tg =
		&targets[slicing ? (uint64_t)t->idx % (uint64_t)ntargets
				 : ntargets == 1 ? 0 : next_rand(&t->rng) % (uint64_t)ntargets];
	unsigned char *req = malloc(BENCH_MAX_MSG), *buf = malloc(BENCH_MAX_MSG);
	uint64_t seq = (uint64_t)t->idx << 48;
	int fd;

	if (!req || !buf)
		abort();
	memcpy(req, reqbuf, req_size);
	fd = socket(tg->family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		fail(t, errno_kind(errno));
		return NULL;
	}
	set_timeouts(fd);
	for (;;) {
		uint64_t k_end;
		int64_t k = my_slice(&k_end);

		if (k < 0)
			break;
		uint64_t t0 = now_ns(), t1;
		int kind = 0;

		seq++;
		make_request(req, seq);
		if (sendto(fd, req, req_size, 0, (const struct sockaddr *)&tg->addr, tg->len) < 0) {
			fail(t, errno_kind(errno));
			usleep(1000);
			continue;
		}
		for (;;) {
			struct sockaddr_storage from;
			socklen_t flen = sizeof(from);
			ssize_t n = recvfrom(fd, buf, BENCH_MAX_MSG, 0, (struct sockaddr *)&from, &flen);
			struct bench_hdr h;

			if (n < 0) {
				kind = errno == EINTR ? 0 : errno_kind(errno);
				if (kind)
					break;
				continue;
			}
			if ((size_t)n < BENCH_HDR_SIZE || (uint32_t)n != resp_size) {
				kind = E_SHORT;
				break;
			}
			memcpy(&h, buf, sizeof(h));
			if (h.seq == seq)
				break;
			fail(t, E_BADSEQ); /* a late reply to an earlier request */
		}
		t1 = now_ns();
		if (kind)
			fail(t, kind);
		else
			record(t, t0, t1, slicing ? k : -1, k_end);
	}
	close(fd);
	free(req);
	free(buf);
	return NULL;
}

static int parse_target(const char *s, struct target *tg)
{
	char host[64];
	const char *colon;
	size_t hl;
	long port;
	char *end;

	if (*s == '[') {
		const char *rb = strchr(s, ']');

		if (!rb || rb[1] != ':')
			return -1;
		hl = (size_t)(rb - s - 1);
		if (hl >= sizeof(host))
			return -1;
		memcpy(host, s + 1, hl);
		colon = rb + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return -1;
		hl = (size_t)(colon - s);
		if (hl >= sizeof(host))
			return -1;
		memcpy(host, s, hl);
	}
	host[hl] = '\0';
	port = strtol(colon + 1, &end, 10);
	if (*end || port < 1 || port > 65535)
		return -1;
	memset(tg, 0, sizeof(*tg));
	snprintf(tg->text, sizeof(tg->text), "%s", s);
	struct sockaddr_in *a4 = (struct sockaddr_in *)&tg->addr;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&tg->addr;
	if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons((uint16_t)port);
		tg->len = sizeof(*a4);
		tg->family = AF_INET;
		return 0;
	}
	if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons((uint16_t)port);
		tg->len = sizeof(*a6);
		tg->family = AF_INET6;
		return 0;
	}
	return -1;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: loadgen --proto tcp|udp --target ADDR:PORT [--target ...] [--duration S] [--warmup S]\n"
		"               [--concurrency N] [--req-size B] [--resp-size B] [--timeout-ms MS]\n"
		"               [--max-requests N] [--seed N] [--slices START_NS:SLICE_NS:ARMS:ARM:SEED [--blocks B]]\n");
	exit(2);
}

static double parse_num(const char *s, double lo, double hi, const char *what)
{
	char *end;
	double v = strtod(s, &end);

	if (*s == '\0' || *end != '\0' || !(v >= lo && v <= hi)) {
		fprintf(stderr, "loadgen: %s must be a number in %g..%g\n", what, lo, hi);
		exit(2);
	}
	return v;
}

/* START_NS:SLICE_NS:ARMS:ARM:SEED */
static int parse_slices(const char *s)
{
	unsigned long long start, len, seed_;
	unsigned n, a;
	char end;

	if (sscanf(s, "%llu:%llu:%u:%u:%llu%c", &start, &len, &n, &a, &seed_, &end) != 5 || n < 2 ||
	    n > MAX_ARMS || a >= n || len < 100000ull || len > 60000000000ull) {
		fprintf(stderr,
			"loadgen: --slices START_NS:SLICE_NS:ARMS:ARM:SEED with SLICE_NS in 1e5..6e10, ARMS in 2..%d "
			"and ARM in 0..ARMS-1: %s\n",
			MAX_ARMS, s);
		return -1;
	}
	slicing = 1;
	t_start = start;
	slice_ns = len;
	narms = n;
	arm = a;
	slice_seed = seed_;
	return 0;
}

static double pct(const uint64_t *hist, uint64_t n, double q)
{
	uint64_t want = (uint64_t)(q * (double)n), acc = 0;

	if (want >= n)
		want = n - 1;
	for (unsigned b = 0; b < NBUCKETS; b++) {
		acc += hist[b];
		if (acc > want)
			return bucket_value(b) / 1000.0;
	}
	return 0;
}

static const char *kind_name(int k, char *buf, size_t len)
{
	switch (k) {
	case E_TIMEOUT:
		return "timeout";
	case E_SHORT:
		return "short_reply";
	case E_BADSEQ:
		return "stale_reply";
	case E_OTHER:
		return "other";
	}
	const char *name = strerrorname_np(k);
	if (name)
		return name;
	snprintf(buf, len, "errno%d", k);
	return buf;
}

static struct thread threads[MAX_THREADS];

/* --slices output: requests per slice (all threads), and per block. */
static void print_slices(void)
{
	uint64_t *bh = calloc(NBUCKETS, sizeof(uint64_t));

	if (!bh)
		abort();
	printf(" \"slices\": {\"start_ns\": %llu, \"slice_ns\": %llu, \"arms\": %u, \"arm\": %u, \"seed\": %llu, "
	       "\"warmup_cycles\": %llu, \"full_cycles\": %llu, \"counts\": [",
	       (unsigned long long)t_start, (unsigned long long)slice_ns, narms, arm, (unsigned long long)slice_seed,
	       (unsigned long long)((t_warm - t_start + slice_ns * narms - 1) / (slice_ns * narms)),
	       (unsigned long long)((t_end - t_start) / (slice_ns * narms)));
	for (uint64_t k = 0; k < ncycles; k++) {
		uint64_t n = 0;

		for (int i = 0; i < concurrency; i++)
			n += threads[i].slice_counts[k];
		printf("%s%llu", k ? ", " : "", (unsigned long long)n);
	}
	printf("], \"work\": [");
	for (uint64_t k = 0; k < ncycles; k++) {
		double w = 0;

		for (int i = 0; i < concurrency; i++)
			w += threads[i].slice_work[k];
		printf("%s%.3f", k ? ", " : "", w);
	}
	printf("], \"blocks\": [");
	for (int b = 0; b < nblocks; b++) {
		uint64_t n = 0;

		memset(bh, 0, NBUCKETS * sizeof(uint64_t));
		for (int i = 0; i < concurrency; i++)
			for (unsigned j = 0; j < NBUCKETS; j++)
				bh[j] += threads[i].block_hist[(size_t)b * NBUCKETS + j];
		for (unsigned j = 0; j < NBUCKETS; j++)
			n += bh[j];
		printf("%s{\"requests\": %llu, \"p50\": %.3f, \"p99\": %.3f}", b ? ", " : "", (unsigned long long)n,
		       n ? pct(bh, n, 0.50) : 0.0, n ? pct(bh, n, 0.99) : 0.0);
	}
	printf("]},\n");
	free(bh);
}

int main(int argc, char **argv)
{
	static uint64_t hist[NBUCKETS];
	uint64_t errors[NKINDS] = { 0 };
	uint64_t requests = 0, done = 0, sum = 0, maxv = 0, nerr = 0;
	struct rusage ru0, ru1;
	const char *proto = NULL;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (i + 1 >= argc)
			usage();
		if (!strcmp(a, "--proto")) {
			proto = argv[++i];
		} else if (!strcmp(a, "--target")) {
			if (ntargets == MAX_TARGETS || parse_target(argv[++i], &targets[ntargets])) {
				fprintf(stderr, "loadgen: bad or too many --target %s\n", argv[i]);
				return 2;
			}
			ntargets++;
		} else if (!strcmp(a, "--duration")) {
			duration = parse_num(argv[++i], 0.01, 3600, "--duration");
		} else if (!strcmp(a, "--warmup")) {
			warmup = parse_num(argv[++i], 0, 60, "--warmup");
		} else if (!strcmp(a, "--concurrency")) {
			concurrency = (int)parse_num(argv[++i], 1, MAX_THREADS, "--concurrency");
		} else if (!strcmp(a, "--req-size")) {
			req_size = (uint32_t)parse_num(argv[++i], BENCH_HDR_SIZE, BENCH_MAX_MSG, "--req-size");
		} else if (!strcmp(a, "--resp-size")) {
			resp_size = (uint32_t)parse_num(argv[++i], BENCH_HDR_SIZE, BENCH_MAX_MSG, "--resp-size");
		} else if (!strcmp(a, "--timeout-ms")) {
			timeout_ms = (int)parse_num(argv[++i], 1, 60000, "--timeout-ms");
		} else if (!strcmp(a, "--max-requests")) {
			max_requests = (uint64_t)parse_num(argv[++i], 1, 1e12, "--max-requests");
		} else if (!strcmp(a, "--seed")) {
			seed = (uint64_t)parse_num(argv[++i], 0, 1e15, "--seed");
		} else if (!strcmp(a, "--slices")) {
			if (parse_slices(argv[++i]))
				return 2;
		} else if (!strcmp(a, "--blocks")) {
			nblocks = (int)parse_num(argv[++i], 1, MAX_BLOCKS, "--blocks");
		} else {
			usage();
		}
	}
	if (!proto || ntargets == 0)
		usage();
	if (!strcmp(proto, "udp"))
		is_udp = 1;
	else if (strcmp(proto, "tcp"))
		usage();
	memset(reqbuf, 'r', sizeof(reqbuf));

	getrusage(RUSAGE_SELF, &ru0);
	if (!slicing)
		t_start = now_ns();
	t_warm = t_start + (uint64_t)(warmup * 1e9);
	t_end = t_warm + (uint64_t)(duration * 1e9);
	if (slicing) {
		ncycles = (t_end - t_start + slice_ns * narms - 1) / (slice_ns * narms);
		if (ncycles > MAX_SLICES) {
			fprintf(stderr, "loadgen: more than %d cycles\n", MAX_SLICES);
			return 2;
		}
	}
	for (int i = 0; i < concurrency; i++) {
		threads[i].idx = i;
		if (slicing) {
			threads[i].slice_counts = calloc(ncycles, sizeof(uint32_t));
			threads[i].slice_work = calloc(ncycles, sizeof(double));
			threads[i].block_hist = calloc((size_t)nblocks * NBUCKETS, sizeof(uint64_t));
			if (!threads[i].slice_counts || !threads[i].slice_work || !threads[i].block_hist) {
				perror("calloc");
				return 1;
			}
		}
		threads[i].rng = (seed + 1) * 0x9E3779B97F4A7C15ull + (uint64_t)i * 0xBF58476D1CE4E5B9ull + 1;
		if (pthread_create(&threads[i].th, NULL, is_udp ? udp_thread : tcp_thread, &threads[i])) {
			perror("pthread_create");
			return 1;
		}
	}
	for (int i = 0; i < concurrency; i++)
		pthread_join(threads[i].th, NULL);
	uint64_t t_done = now_ns();
	getrusage(RUSAGE_SELF, &ru1);

	for (int i = 0; i < concurrency; i++) {
		struct thread *t = &threads[i];

		requests += t->requests;
		done += t->done;
		sum += t->sum_ns;
		if (t->max_ns > maxv)
			maxv = t->max_ns;
		for (int k = 0; k < NKINDS; k++) {
			errors[k] += t->errors[k];
			if (k != E_BADSEQ)
				nerr += t->errors[k];
		}
		for (unsigned b = 0; b < NBUCKETS; b++)
			hist[b] += t->hist[b];
	}
	/* The window is shorter when --max-requests stopped the run early. */
	double window = ((t_done < t_end ? t_done : t_end) - t_warm) / 1e9;
	if (slicing) {
		/* This arm's slices in the measurement window: one per cycle. */
		uint64_t active = 0, c0 = (t_warm - t_start) / (slice_ns * narms);
		uint64_t stop = t_done < t_end ? t_done : t_end;

		for (uint64_t c = c0; c < ncycles; c++) {
			uint64_t at = t_start + (c * narms + arm_position(c)) * slice_ns;

			active += at >= t_warm && at + slice_ns <= stop;
		}
		window = active * (slice_ns / 1e9);
	}
	if (window <= 0)
		window = 1e-9;
	double cpu_user = (ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6;
	double cpu_sys = (ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) + (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;

	printf("{\"proto\": \"%s\", \"targets\": [", is_udp ? "udp" : "tcp");
	for (int i = 0; i < ntargets; i++)
		printf("%s\"%s\"", i ? ", " : "", targets[i].text);
	printf("], \"concurrency\": %d, \"req_size\": %u, \"resp_size\": %u, \"warmup_s\": %g, \"window_s\": %.6f, "
	       "\"wall_s\": %.6f,\n",
	       concurrency, req_size, resp_size, warmup, window, (t_done - t_start) / 1e9);
	printf(" \"requests\": %lu, \"completed_total\": %lu, \"rps\": %.1f, \"errors\": %lu, \"errors_by_kind\": {",
	       (unsigned long)requests, (unsigned long)done, requests / window, (unsigned long)nerr);
	int first = 1;
	for (int k = 0; k < NKINDS; k++) {
		char nb[32];

		if (!errors[k])
			continue;
		printf("%s\"%s\": %lu", first ? "" : ", ", kind_name(k, nb, sizeof(nb)), (unsigned long)errors[k]);
		first = 0;
	}
	printf("},\n \"latency_us\": {\"mean\": %.3f, \"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"p999\": %.3f, "
	       "\"max\": %.3f},\n",
	       requests ? sum / 1000.0 / requests : 0.0, requests ? pct(hist, requests, 0.50) : 0.0,
	       requests ? pct(hist, requests, 0.90) : 0.0, requests ? pct(hist, requests, 0.99) : 0.0,
	       requests ? pct(hist, requests, 0.999) : 0.0, maxv / 1000.0);
	printf(" \"cpu_s\": {\"user\": %.4f, \"sys\": %.4f},\n", cpu_user, cpu_sys);
	if (slicing)
		print_slices();
	printf(" \"hist_sub_bits\": %d, \"hist\": [", SUB_BITS);
	first = 1;
	for (unsigned b = 0; b < NBUCKETS; b++) {
		if (!hist[b])
			continue;
		printf("%s[%u, %lu]", first ? "" : ", ", b, (unsigned long)hist[b]);
		first = 0;
	}
	printf("]}\n");
	return 0;
}
