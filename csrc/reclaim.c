// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * socklb native core, reclaiming sock_tcp slots.  A TCP socket's record is
 * freed by the release program of its cgroup; a socket that closes after its
 * cgroup was detached runs none, and its slot stays held by a cookie no
 * socket has.  Nothing on the connect path can tell a dead cookie from a live
 * one, so the control plane sweeps instead (Balancer.reconcile(), and attach()
 * after a detach):
 *
 *   1. snapshot: the cookie of every held slot;
 *   2. two walks of the TCP sockets of every network namespace given (the
 *      live iterator, socklb_iter.bpf.c) strike the cookies of the sockets
 *      that still hold their slot;
 *   3. a slot that still holds a cookie no walk found is zeroed.
 *
 * Why it is safe: a slot is only ever taken from 0 (compare-and-swap in the
 * connect hook) and given back by its owner's release program, so a slot
 * that holds a dead socket's cookie changes only here; a socket that took
 * its slot before the snapshot is hashed (visible to the walks) from the end
 * of its connect() until it closes.  The two walks cover a socket still inside
 * connect() during the first one.  A socket that is open but unhashed (its
 * connect() failed) has no destination to remember: freeing its slot loses
 * nothing, and its release program, finding another cookie there, leaves the
 * slot alone.  Sockets of a network namespace not given are not seen: the
 * caller gives every namespace of the machine it can find.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <linux/bpf.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "internal.h"
#include "socklb_maps.h"

#define SLOTS SOCKLB_SOCK_TCP_SLOTS

/* 1. The cookie held by each slot (0: free).  Returns how many are held or -errno. */
static int64_t snapshot(int fd, uint64_t *cookies)
{
	enum { CHUNK = 4096 };
	struct socklb_sock_slot *vals = calloc(CHUNK, sizeof(*vals));
	uint32_t keys[CHUNK], in = 0, out = 0, i;
	int64_t held = 0;
	bool first = true;

	if (!vals)
		return -ENOMEM;
	for (;;) {
		__u32 count = CHUNK;
		int err = bpf_map_lookup_batch(fd, first ? NULL : &in, &out, keys, vals, &count, NULL);

		if (err && errno != ENOENT) {
			held = -errno;
			break;
		}
		for (i = 0; i < count; i++) {
			if (keys[i] < SLOTS && vals[i].cookie) {
				cookies[keys[i]] = vals[i].cookie;
				held++;
			}
		}
		if (err) /* ENOENT: that was the last batch */
			break;
		in = out;
		first = false;
	}
	free(vals);
	return held;
}

struct live_job {
	struct bpf_link *link;
	const int *netns_fds;
	uint32_t nns;
	uint64_t *cookies; /* struck (set to 0) for every live cookie found */
	int err;
};

/* Strike the cookies the live iterator writes in the current namespace. */
static int strike(struct live_job *job)
{
	uint64_t buf[512];
	int fd = bpf_iter_create(bpf_link__fd(job->link));
	ssize_t n;

	if (fd < 0)
		return -errno;
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		for (size_t i = 0; i < (size_t)n / sizeof(buf[0]); i++) {
			uint64_t *c = &job->cookies[buf[i] & (SLOTS - 1)];

			if (*c == buf[i])
				*c = 0;
		}
	}
	n = n < 0 ? -errno : 0;
	close(fd);
	return (int)n;
}

/* 2. On a thread of its own: setns() changes only the calling thread. */
static void *walk(void *arg)
{
	struct live_job *job = arg;

	for (uint32_t i = 0; i < job->nns && !job->err; i++) {
		if (setns(job->netns_fds[i], CLONE_NEWNET)) {
			/* The namespace went away with its last process: nothing to see there. */
			if (errno != EINVAL && errno != EBADF)
				job->err = -errno;
			continue;
		}
		job->err = strike(job);
	}
	return NULL;
}

static int walk_all(struct live_job *job)
{
	pthread_t th;
	int err = -pthread_create(&th, NULL, walk, job);

	if (err)
		return err;
	pthread_join(th, NULL);
	return job->err;
}

/* 3. Free the slots that still hold the dead cookie: nothing else writes
 * them while it does.  First the record (the dead cookie still holds the
 * slot), then the cookie: a claim can only start once the cookie reads 0,
 * and the second write puts zeros where zeros already are.  What user space
 * cannot do is a compare-and-swap: a connect() that claims this very slot
 * between the two halves of the second write may see part of its new record
 * zeroed (it then behaves as a socket without a record: getpeername() shows
 * the backend).  The window is one map write; the connect path pays nothing. */
static int64_t free_dead(int fd, const uint64_t *dead)
{
	struct socklb_sock_slot cur, val;
	int64_t freed = 0;

	for (uint32_t k = 0; k < SLOTS; k++) {
		if (!dead[k])
			continue;
		if (bpf_map_lookup_elem(fd, &k, &cur))
			return -errno;
		if (cur.cookie != dead[k])
			continue;
		memset(&val, 0, sizeof(val));
		val.cookie = dead[k];
		if (bpf_map_update_elem(fd, &k, &val, BPF_EXIST))
			return -errno;
		val.cookie = 0;
		if (bpf_map_update_elem(fd, &k, &val, BPF_EXIST))
			return -errno;
		freed++;
	}
	return freed;
}

int64_t socklb_reclaim_tcp(struct socklb *lb, const int *netns_fds, uint32_t nns)
{
	struct socklb_iters *it = &lb->iter;
	int fd = socklb_map_fd(lb, "sock_tcp");
	struct live_job job = { .netns_fds = netns_fds, .nns = nns };
	int64_t n;

	if (fd < 0)
		return fd;
	if (it->err || !it->live_tcp)
		return it->err ? it->err : -EOPNOTSUPP;
	job.link = it->live_tcp;
	job.cookies = calloc(SLOTS, sizeof(uint64_t));
	if (!job.cookies)
		return -ENOMEM;
	n = snapshot(fd, job.cookies);
	if (n > 0) {
		pthread_mutex_lock(&it->lock);
		n = walk_all(&job);
		if (!n)
			n = walk_all(&job);
		pthread_mutex_unlock(&it->lock);
		if (!n)
			n = free_dead(fd, job.cookies);
	}
	free(job.cookies);
	return n;
}
