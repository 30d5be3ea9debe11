// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * socklb native core, map I/O: bulk updates and deletions (one batch, then
 * element by element from where it stopped), walks, the affinity purge, the
 * sock_tcp census, and read-only inspection of pinned objects.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/bpf.h>
#include <bpf/bpf.h>

#include "loader.h"
#include "socklb_maps.h"

int socklb_read_pinned(const char *path, void *value, uint32_t value_size, uint32_t *actual)
{
	struct bpf_map_info info = {};
	__u32 len = sizeof(info);
	uint32_t zero = 0;
	void *buf;
	int fd, err = 0;

	fd = bpf_obj_get(path);
	if (fd < 0)
		return -errno;
	if (bpf_obj_get_info_by_fd(fd, &info, &len)) {
		err = -errno;
		goto out;
	}
	*actual = info.value_size;
	if (info.type != BPF_MAP_TYPE_ARRAY || info.max_entries < 1) {
		err = -EPROTO;
		goto out;
	}
	/* Read with the map's own value size: another version's layout may
	 * be larger than ours. */
	buf = calloc(1, info.value_size);
	if (!buf) {
		err = -ENOMEM;
		goto out;
	}
	if (bpf_map_lookup_elem(fd, &zero, buf))
		err = -errno;
	else
		memcpy(value, buf, info.value_size < value_size ? info.value_size : value_size);
	free(buf);
out:
	close(fd);
	return err;
}

int socklb_map_update(int fd, const void *keys, const void *values, uint32_t n, uint32_t key_size, uint32_t value_size,
		      uint64_t flags, uint32_t *done)
{
	const char *k = keys, *v = values;
	uint32_t i = 0;

	/* One BPF_MAP_UPDATE_BATCH saves a syscall per element; where it fails
	 * (an old kernel, a full map), the loop below carries on one element at
	 * a time from where it stopped, and reports the exact element. */
	if (n > 1) {
		LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = flags);
		__u32 count = n;

		if (bpf_map_update_batch(fd, keys, values, &count, &opts) == 0) {
			*done = n;
			return 0;
		}
		/* A failure before the first element (a bad fd, no batch
		 * support) leaves count as it was given: nothing was written. */
		i = count < n ? count : 0;
	}
	for (; i < n; i++) {
		if (bpf_map_update_elem(fd, k + (size_t)i * key_size, v + (size_t)i * value_size, flags)) {
			*done = i;
			return -errno;
		}
	}
	*done = n;
	return 0;
}

int socklb_map_delete(int fd, const void *keys, uint32_t n, uint32_t key_size, uint32_t *done)
{
	const char *k = keys;
	uint32_t i = 0;

	/* As for updates: one batch, then element by element from where it
	 * stopped (a key already gone stops the batch, and is fine). */
	if (n > 1) {
		LIBBPF_OPTS(bpf_map_batch_opts, opts);
		__u32 count = n;

		if (bpf_map_delete_batch(fd, keys, &count, &opts) == 0) {
			*done = n;
			return 0;
		}
		i = count < n ? count : 0;
	}
	for (; i < n; i++) {
		if (bpf_map_delete_elem(fd, k + (size_t)i * key_size) && errno != ENOENT) {
			*done = i;
			return -errno;
		}
	}
	*done = n;
	return 0;
}

int socklb_map_lookup(int fd, const void *key, void *value)
{
	return bpf_map_lookup_elem(fd, key, value) ? -errno : 0;
}

int socklb_map_keys(int fd, void *keys, uint32_t key_size, uint32_t cap)
{
	char *k = keys;
	uint32_t n = 0;

	if (cap == 0)
		return 0;
	if (bpf_map_get_next_key(fd, NULL, k))
		return errno == ENOENT ? 0 : -errno;
	for (n = 1; n < cap; n++) {
		if (bpf_map_get_next_key(fd, k + (size_t)(n - 1) * key_size, k + (size_t)n * key_size)) {
			if (errno == ENOENT)
				break;
			return -errno;
		}
	}
	return (int)n;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

int socklb_affinity_purge(int fd, const uint32_t *svc_ids, uint32_t n)
{
	struct socklb_affinity_key key, next;
	struct socklb_affinity_key *victims = NULL;
	size_t nv = 0, cap = 0;
	int err = 0, deleted = 0;
	void *prev = NULL;

	/* Collect first, delete after: deleting while walking a hash map with
	 * get_next_key can restart the walk from the beginning. */
	while (bpf_map_get_next_key(fd, prev, &next) == 0) {
		if (bsearch(&next.svc_id, svc_ids, n, sizeof(uint32_t), cmp_u32)) {
			if (nv == cap) {
				size_t ncap = cap ? 2 * cap : 64;
				void *p = realloc(victims, ncap * sizeof(*victims));

				if (!p) {
					err = -ENOMEM;
					goto out;
				}
				victims = p;
				cap = ncap;
			}
			victims[nv++] = next;
		}
		key = next;
		prev = &key;
	}
	if (errno != ENOENT) {
		err = -errno;
		goto out;
	}
	for (size_t i = 0; i < nv; i++)
		if (bpf_map_delete_elem(fd, &victims[i]) == 0)
			deleted++;
out:
	free(victims);
	return err ? err : deleted;
}

int64_t socklb_tcp_slots_used(int fd)
{
	enum { CHUNK = 4096 };
	static __thread struct socklb_sock_slot vals[CHUNK];
	uint32_t keys[CHUNK], in = 0, out = 0, i;
	int64_t used = 0;
	bool first = true;

	for (;;) {
		__u32 count = CHUNK;
		int err;

		err = bpf_map_lookup_batch(fd, first ? NULL : &in, &out, keys, vals, &count, NULL);
		if (err && errno != ENOENT)
			return -errno;
		for (i = 0; i < count; i++)
			used += vals[i].cookie != 0;
		if (err) /* ENOENT: that was the last batch */
			return used;
		in = out;
		first = false;
	}
}

/* --- read-only inspection (socklb.inspect) ------------------------------ */

int socklb_obj_get(const char *path, int read_only)
{
	union bpf_attr attr;
	int fd;

	/* bpf_obj_get_opts() is newer than Debian bookworm's libbpf 1.1. */
	memset(&attr, 0, sizeof(attr));
	attr.pathname = (__u64)(unsigned long)path;
	attr.file_flags = read_only ? BPF_F_RDONLY : 0;
	fd = syscall(__NR_bpf, BPF_OBJ_GET, &attr, sizeof(attr));
	return fd < 0 ? -errno : fd;
}

int socklb_map_info(int fd, uint32_t *type, uint32_t *key_size, uint32_t *value_size, uint32_t *max_entries)
{
	struct bpf_map_info info = {};
	__u32 len = sizeof(info);

	if (bpf_obj_get_info_by_fd(fd, &info, &len))
		return -errno;
	*type = info.type;
	*key_size = info.key_size;
	*value_size = info.value_size;
	*max_entries = info.max_entries;
	return 0;
}

int socklb_link_info(int fd, uint32_t *prog_id, uint64_t *cgroup_id, uint32_t *attach_type)
{
	struct bpf_link_info info = {};
	__u32 len = sizeof(info);

	if (bpf_obj_get_info_by_fd(fd, &info, &len))
		return -errno;
	if (info.type != BPF_LINK_TYPE_CGROUP)
		return -EPROTO;
	*prog_id = info.prog_id;
	*cgroup_id = info.cgroup.cgroup_id;
	*attach_type = info.cgroup.attach_type;
	return 0;
}
