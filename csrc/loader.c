// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * socklb native core: opens the BPF object embedded at build time, sizes and
 * loads it, attaches it to cgroups through bpf_links, and does batched map
 * I/O and Maglev table construction for the Python control plane.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/bpf.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/inet_diag.h>
#include <netinet/in.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "loader.h"
#include "socklb_maps.h"
#include "socklb_bpf_obj.h" /* generated: socklb_bpf_obj[] and socklb_bpf_noretval_obj[]
			      * (with their _len), and socklb_iter_obj[] and
			      * socklb_iter_count_obj[] when SOCKLB_HAVE_ITER */

/* Program names, in the object's order: read from the embedded object itself
 * (once, see prog_names_init), never written out by hand. */
static char prog_names[SOCKLB_NPROGS][64];
/* The scope groups' programs (SOCKLB_GROUP_EXCLUDE, SOCKLB_GROUP_HOSTONLY). */
static char gate_names[SOCKLB_NGROUPS][SOCKLB_NGATE][64];
static const char *const group_prefix[SOCKLB_NGROUPS] = { "socklb_", "exclude_", "hostonly_" };
static const int group_size[SOCKLB_NGROUPS] = { SOCKLB_NPROGS, SOCKLB_NGATE, SOCKLB_NGATE };
/* Likewise the names of its maps (internal ones such as .rodata left out). */
#define MAX_MAPS 32
static char map_names[MAX_MAPS][64];
static int n_maps;
static pthread_once_t prog_names_once = PTHREAD_ONCE_INIT;
static int prog_names_err;

struct socklb {
	struct bpf_object *obj;
	struct bpf_program *progs[SOCKLB_NPROGS];
	int tcp_by_cookie;
	struct bpf_program *gates[SOCKLB_NGROUPS][SOCKLB_NGATE];
	/* Socket iterators: optional, see socklb_iter_status(). */
	struct bpf_object *iter_obj;
	struct bpf_link *iter_udp, *iter_tcp, *iter_count_udp, *iter_count_tcp;
	struct bpf_link *iter_list_udp, *iter_list_tcp; /* counting-only object */
	int iter_err;
	int destroy_err; /* 0 when iter_udp and iter_tcp (bpf_sock_destroy) loaded */
	pthread_mutex_t iter_lock;
};

struct socklb_links {
	int group;	/* SOCKLB_GROUP_* */
	struct bpf_link *links[SOCKLB_NPROGS];
};

static const char *group_name(int group, int i)
{
	return group == SOCKLB_GROUP_MAIN ? prog_names[i] : gate_names[group][i];
}

static struct bpf_program *group_prog(struct socklb *lb, int group, int i)
{
	return group == SOCKLB_GROUP_MAIN ? lb->progs[i] : lb->gates[group][i];
}

/* libbpf's messages go to the buffer of the call in progress on this thread
 * (cffi releases the GIL, so calls from several threads may overlap), and
 * nowhere otherwise: a library must not write to the host's stderr. */
static __thread char *log_dst;
static __thread size_t log_cap, log_len;

static int print_cb(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	int n;

	if (!log_dst || level == LIBBPF_DEBUG || log_len + 1 >= log_cap)
		return 0;
	n = vsnprintf(log_dst + log_len, log_cap - log_len, fmt, ap);
	if (n > 0)
		log_len = (size_t)n >= log_cap - log_len ? log_cap - 1 : log_len + (size_t)n;
	return n;
}

static void capture(char *buf, size_t size)
{
	libbpf_set_print(print_cb);
	log_dst = buf;
	log_cap = size;
	log_len = 0;
	if (buf && size)
		buf[0] = '\0';
}

static void release(void)
{
	log_dst = NULL;
	log_cap = log_len = 0;
}

/* The maps a pinned balancer pins: all but the internal ones (.rodata,
 * configuration fixed at load) and socklb_mark2, which is one for the machine
 * (see share_mark_map). */
static bool pinned_map(const struct bpf_map *m)
{
	return !bpf_map__is_internal(m) && strcmp(bpf_map__name(m), "socklb_mark2") != 0;
}

static void prog_names_init(void)
{
	struct bpf_object *obj = bpf_object__open_mem(socklb_bpf_obj, socklb_bpf_obj_len, NULL);
	struct bpf_program *prog;
	struct bpf_map *map;
	int n[SOCKLB_NGROUPS] = { 0 };
	int g;

	if (!obj) {
		prog_names_err = -errno;
		return;
	}
	bpf_object__for_each_program(prog, obj) {
		const char *name = bpf_program__name(prog);

		for (g = 0; g < SOCKLB_NGROUPS; g++)
			if (strncmp(name, group_prefix[g], strlen(group_prefix[g])) == 0)
				break;
		if (g == SOCKLB_NGROUPS) {
			prog_names_err = -EPROTO;
			continue;
		}
		if (n[g] < group_size[g])
			snprintf(g ? gate_names[g][n[g]] : prog_names[n[g]], 64, "%s", name);
		n[g]++;
	}
	bpf_object__for_each_map(map, obj) {
		if (pinned_map(map) && n_maps < MAX_MAPS)
			snprintf(map_names[n_maps++], sizeof(map_names[0]), "%s", bpf_map__name(map));
	}
	bpf_object__close(obj);
	/* SOCKLB_NPROGS is the size of the link and stats arrays. */
	for (g = 0; g < SOCKLB_NGROUPS; g++)
		if (n[g] != group_size[g])
			prog_names_err = -EPROTO;
}

static int load_prog_names(void)
{
	pthread_once(&prog_names_once, prog_names_init);
	return prog_names_err;
}

/* The internal map (.rodata, .bss, ...) whose name ends with suffix: libbpf
 * prefixes it with part of the object name, so match the section only. */
static struct bpf_map *internal_map(struct bpf_object *obj, const char *suffix)
{
	size_t ls = strlen(suffix);
	struct bpf_map *m;

	bpf_object__for_each_map(m, obj) {
		const char *name = bpf_map__name(m);
		size_t ln = strlen(name);

		if (bpf_map__is_internal(m) && ln >= ls && strcmp(name + ln - ls, suffix) == 0)
			return m;
	}
	return NULL;
}

static int size_map(struct bpf_object *obj, const char *name, uint32_t entries)
{
	struct bpf_map *map = bpf_object__find_map_by_name(obj, name);

	if (!map)
		return -ENOENT;
	return bpf_map__set_max_entries(map, entries ? entries : 1);
}

/* Set the const volatile __u32 called name in the object's .rodata, found
 * by name in the section's BTF (so other variables may come and go). */
static int set_rodata_u32(struct bpf_object *obj, struct bpf_map *rodata, const char *name, uint32_t value)
{
	struct btf *btf = bpf_object__btf(obj);
	const struct btf_type *sec;
	const struct btf_var_secinfo *vs;
	size_t size = 0;
	char *data = bpf_map__initial_value(rodata, &size);
	int id, i;

	if (!btf || !data)
		return -ENOENT;
	id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
	if (id < 0)
		return -ENOENT;
	sec = btf__type_by_id(btf, id);
	vs = btf_var_secinfos(sec);
	for (i = 0; i < btf_vlen(sec); i++, vs++) {
		const struct btf_type *var = btf__type_by_id(btf, vs->type);

		if (strcmp(btf__name_by_offset(btf, var->name_off), name) != 0)
			continue;
		if (vs->size != sizeof(value) || vs->offset + sizeof(value) > size)
			return -EPROTO;
		memcpy(data + vs->offset, &value, sizeof(value));
		return 0;
	}
	return -ENOENT;
}

/* Make sock_dgram's value hold n entries: its last member, the entry array,
 * shrinks in the object's BTF (the kernel checks that the value type's size
 * is the map's value size) and the map's value size with it.  Done between
 * open and load; libbpf loads the BTF as modified here. */
static int size_sock_dgram(struct bpf_object *obj, uint32_t n)
{
	struct btf *btf = bpf_object__btf(obj);
	struct bpf_map *map = bpf_object__find_map_by_name(obj, "sock_dgram");
	struct btf_type *st, *arr;
	const struct btf_member *last;
	struct btf_array *a;
	uint32_t size;
	int id;

	if (!btf || !map || n < 1 || n > SOCKLB_MAX_UDP_FLOWS)
		return btf && map ? -EINVAL : -ENOENT;
	id = btf__find_by_name_kind(btf, "socklb_sock_dgram", BTF_KIND_STRUCT);
	if (id < 0)
		return -ENOENT;
	st = (struct btf_type *)btf__type_by_id(btf, id);
	last = btf_members(st) + btf_vlen(st) - 1;
	arr = (struct btf_type *)btf__type_by_id(btf, last->type);
	if (!arr || !btf_is_array(arr))
		return -EPROTO;
	a = btf_array(arr);
	if (a->nelems != SOCKLB_MAX_UDP_FLOWS || btf__resolve_size(btf, a->type) != sizeof(struct socklb_sock_entry) ||
	    btf_member_bit_offset(st, btf_vlen(st) - 1) != 8 * offsetof(struct socklb_sock_dgram, dgram))
		return -EPROTO;
	size = offsetof(struct socklb_sock_dgram, dgram) + n * sizeof(struct socklb_sock_entry);
	a->nelems = n;
	st->size = size;
	return bpf_map__set_value_size(map, size);
}

static void close_iter(struct socklb *lb)
{
	bpf_link__destroy(lb->iter_udp);
	bpf_link__destroy(lb->iter_tcp);
	bpf_link__destroy(lb->iter_count_udp);
	bpf_link__destroy(lb->iter_count_tcp);
	bpf_link__destroy(lb->iter_list_udp);
	bpf_link__destroy(lb->iter_list_tcp);
	bpf_object__close(lb->iter_obj);
	lb->iter_udp = lb->iter_tcp = lb->iter_count_udp = lb->iter_count_tcp = NULL;
	lb->iter_list_udp = lb->iter_list_tcp = NULL;
	lb->iter_obj = NULL;
}

/* Load an iterator object, sharing the datapath's per-socket maps: in full,
 * or counting only (no bpf_sock_destroy, which Linux 6.5 brought).  Failure
 * is not fatal: terminating and counting are then unavailable. */
static int open_iter_fds(struct socklb *lb, int conn_fd, int dgram_fd, int tcp_fd, bool count_only)
{
#if SOCKLB_HAVE_ITER
	LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = "socklb_iter");
	struct bpf_map *shared;
	int err;

	if (count_only)
		lb->iter_obj = bpf_object__open_mem(socklb_iter_count_obj, socklb_iter_count_obj_len, &opts);
	else
		lb->iter_obj = bpf_object__open_mem(socklb_iter_obj, socklb_iter_obj_len, &opts);
	if (!lb->iter_obj)
		return -errno;
	shared = bpf_object__find_map_by_name(lb->iter_obj, "sock_conn");
	if (!shared) {
		err = -ENOENT;
		goto fail;
	}
	err = bpf_map__reuse_fd(shared, conn_fd);
	shared = bpf_object__find_map_by_name(lb->iter_obj, "sock_dgram");
	if (!err && !shared)
		err = -ENOENT;
	if (!err)
		err = bpf_map__reuse_fd(shared, dgram_fd);
	shared = bpf_object__find_map_by_name(lb->iter_obj, "sock_tcp");
	if (!err && !shared)
		err = -ENOENT;
	if (!err)
		err = bpf_map__reuse_fd(shared, tcp_fd);
	if (!err)
		err = bpf_object__load(lb->iter_obj);
	if (err)
		goto fail;
	if (!count_only) {
		lb->iter_udp = bpf_program__attach_iter(
			bpf_object__find_program_by_name(lb->iter_obj, "socklb_destroy_udp"), NULL);
		lb->iter_tcp = bpf_program__attach_iter(
			bpf_object__find_program_by_name(lb->iter_obj, "socklb_destroy_tcp"), NULL);
	} else {
		lb->iter_list_udp = bpf_program__attach_iter(
			bpf_object__find_program_by_name(lb->iter_obj, "socklb_list_udp"), NULL);
		lb->iter_list_tcp = bpf_program__attach_iter(
			bpf_object__find_program_by_name(lb->iter_obj, "socklb_list_tcp"), NULL);
	}
	lb->iter_count_udp = bpf_program__attach_iter(bpf_object__find_program_by_name(lb->iter_obj, "socklb_count_udp"), NULL);
	lb->iter_count_tcp = bpf_program__attach_iter(bpf_object__find_program_by_name(lb->iter_obj, "socklb_count_tcp"), NULL);
	if ((!count_only && (!lb->iter_udp || !lb->iter_tcp)) || (count_only && (!lb->iter_list_udp || !lb->iter_list_tcp)) ||
	    !lb->iter_count_udp || !lb->iter_count_tcp) {
		err = -errno ? -errno : -EINVAL;
		goto fail;
	}
	return 0;
fail:
	close_iter(lb);
	return err < 0 ? err : -EINVAL;
#else
	(void)lb;
	(void)conn_fd;
	(void)dgram_fd;
	(void)tcp_fd;
	(void)count_only;
	return -EOPNOTSUPP;
#endif
}

/* The full iterators unless the kernel lacks bpf_sock_destroy (or a test
 * says so); where they do not load, the counting ones. */
static void open_iter(struct socklb *lb, uint32_t missing)
{
	int conn = socklb_map_fd(lb, "sock_conn"), dgram = socklb_map_fd(lb, "sock_dgram");
	int tcp = socklb_map_fd(lb, "sock_tcp");

	lb->destroy_err = -EOPNOTSUPP;
	/* Both objects read socket-local storage (5.11 in iterators). */
	if (missing & SOCKLB_MISSING_ITER_STORAGE) {
		lb->iter_err = -EOPNOTSUPP;
		return;
	}
	if (!(missing & SOCKLB_MISSING_SOCK_DESTROY)) {
		lb->iter_err = lb->destroy_err = open_iter_fds(lb, conn, dgram, tcp, false);
		if (!lb->iter_err)
			return;
	}
	lb->iter_err = open_iter_fds(lb, conn, dgram, tcp, true);
}

static int open_common(const struct socklb_config *cfg, const char *pin_dir, struct socklb **out, char *log,
		       size_t log_size, int *failed_prog);

int socklb_open(const struct socklb_config *cfg, struct socklb **out, char *log, size_t log_size,
		int *failed_prog)
{
	return open_common(cfg, NULL, out, log, log_size, failed_prog);
}

int socklb_open_pinned(const struct socklb_config *cfg, const char *pin_dir, struct socklb **out, char *log,
		       size_t log_size, int *failed_prog)
{
	return open_common(cfg, pin_dir, out, log, log_size, failed_prog);
}

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

/* The socklb_mark2 map is one for the machine: every balancer's programs must
 * see the marks of the others (see socklb_maps.h).  Find a live one by name
 * and layout; its lifetime is the kernel's reference count (programs and
 * links hold it), so nothing is pinned and nothing is left behind. */
static int find_mark_map(void)
{
	__u32 id = 0;

	/* Bounded: map ids are finite, and 1M maps is far beyond any host. */
	for (int n = 0; n < (1 << 20); n++) {
		struct bpf_map_info info = {};
		__u32 len = sizeof(info);
		int fd;

		if (bpf_map_get_next_id(id, &id))
			return -ENOENT;
		fd = bpf_map_get_fd_by_id(id);
		if (fd < 0)
			continue; /* gone meanwhile */
		if (!bpf_obj_get_info_by_fd(fd, &info, &len) && info.type == BPF_MAP_TYPE_PERCPU_ARRAY &&
		    info.key_size == sizeof(__u32) && info.value_size == sizeof(struct socklb_mark) &&
		    info.max_entries == 1 && strcmp(info.name, "socklb_mark2") == 0)
			return fd;
		close(fd);
	}
	return -ENOENT;
}

/* Two balancers loading at once must not both create the map: serialize the
 * find-or-create on an abstract unix socket name (per network namespace;
 * vanishes with its holder).  Best effort: without the lock a balancer may
 * end up with a map of its own, which only loses nesting detection. */
static int mark_lock(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	static const char name[] = "\0socklb-mark-lock";
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	memcpy(sa.sun_path, name, sizeof(name) - 1);
	for (int i = 0; i < 2000; i++) { /* at most ~2 s */
		if (bind(fd, (struct sockaddr *)&sa, offsetof(struct sockaddr_un, sun_path) + sizeof(name) - 1) == 0)
			return fd;
		if (errno != EADDRINUSE)
			break;
		usleep(1000);
	}
	close(fd);
	return -1;
}

static int share_mark_map(struct bpf_object *obj)
{
	struct bpf_map *m = bpf_object__find_map_by_name(obj, "socklb_mark2");
	int fd, err;

	if (!m)
		return -ENOENT;
	fd = find_mark_map();
	if (fd < 0)
		return 0; /* the first balancer: the map is created at load */
	err = bpf_map__reuse_fd(m, fd);
	close(fd); /* reuse_fd keeps its own duplicate */
	return err;
}

static int open_common(const struct socklb_config *cfg, const char *pin_dir, struct socklb **out, char *log,
		       size_t log_size, int *failed_prog)
{
	/* The verifier log of a failed program is appended to libbpf's own
	 * messages by libbpf itself, so one buffer collects both. */
	LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = "socklb");
	struct bpf_map *rodata, *maglev;
	struct socklb *lb;
	int err, i, lock;

	*out = NULL;
	*failed_prog = -1;
	if (cfg->maglev_size < 2)
		return -EINVAL;
	if ((err = load_prog_names()))
		return err;
	lb = calloc(1, sizeof(*lb));
	if (!lb)
		return -ENOMEM;
	/* TCP records by cookie where the kernel has what it takes (probed,
	 * or forced off by a test); never in the object for kernels before
	 * 5.18 (see TCP_BY_COOKIE in socklb.bpf.c). */
	lb->tcp_by_cookie = !(cfg->missing & (SOCKLB_MISSING_SOCK_RELEASE | SOCKLB_MISSING_MPTCP_CAST |
					     SOCKLB_MISSING_SET_RETVAL));
	capture(log, log_size);

	/* The same programs and maps, built without bpf_set_retval (5.18). */
	if (cfg->missing & SOCKLB_MISSING_SET_RETVAL)
		lb->obj = bpf_object__open_mem(socklb_bpf_noretval_obj, socklb_bpf_noretval_obj_len, &opts);
	else
		lb->obj = bpf_object__open_mem(socklb_bpf_obj, socklb_bpf_obj_len, &opts);
	if (!lb->obj) {
		err = -errno;
		goto fail;
	}
	for (i = 0; i < SOCKLB_NPROGS; i++) {
		lb->progs[i] = bpf_object__find_program_by_name(lb->obj, prog_names[i]);
		if (!lb->progs[i]) {
			err = -ENOENT;
			goto fail;
		}
	}
	for (int g = 1; g < SOCKLB_NGROUPS; g++) {
		for (i = 0; i < SOCKLB_NGATE; i++) {
			lb->gates[g][i] = bpf_object__find_program_by_name(lb->obj, gate_names[g][i]);
			if (!lb->gates[g][i]) {
				err = -ENOENT;
				goto fail;
			}
		}
	}

	if ((err = size_map(lb->obj, "services", cfg->max_services)) ||
	    (err = size_map(lb->obj, "slots", cfg->max_slots)) ||
	    (err = size_map(lb->obj, "backends", cfg->max_backends)) ||
	    (err = size_map(lb->obj, "selections", cfg->max_backends)) ||
	    (err = size_map(lb->obj, "affinity", cfg->max_affinity)) ||
	    (err = size_map(lb->obj, "maglev", cfg->max_maglev)))
		goto fail;
	if (pin_dir) {
		char path[4096];
		struct bpf_map *m;

		bpf_object__for_each_map(m, lb->obj) {
			if (!pinned_map(m))
				continue;
			snprintf(path, sizeof(path), "%s/maps/%s", pin_dir, bpf_map__name(m));
			if ((err = bpf_map__set_pin_path(m, path)))
				goto fail;
		}
	}
	maglev = bpf_object__find_map_by_name(lb->obj, "maglev");
	if ((err = bpf_map__set_value_size(maglev, cfg->maglev_size * sizeof(uint32_t))))
		goto fail;

	/* const volatile configuration lives in .rodata. */
	rodata = internal_map(lb->obj, ".rodata");
	if (!rodata) {
		err = -ENOENT;
		goto fail;
	}
	if ((err = set_rodata_u32(lb->obj, rodata, "maglev_size", cfg->maglev_size)) ||
	    (err = set_rodata_u32(lb->obj, rodata, "tcp_by_cookie", (uint32_t)lb->tcp_by_cookie)) ||
	    (err = set_rodata_u32(lb->obj, rodata, "udp_flows", cfg->udp_flows)) ||
	    (err = size_sock_dgram(lb->obj, cfg->udp_flows)))
		goto fail;

	lock = mark_lock();
	err = share_mark_map(lb->obj);
	if (!err)
		err = bpf_object__load(lb->obj);
	if (lock >= 0)
		close(lock);
	if (err) {
		/* A program that failed to load has no fd; report the first. */
		for (i = 0; i < SOCKLB_NPROGS; i++) {
			if (bpf_program__fd(lb->progs[i]) < 0) {
				*failed_prog = i;
				break;
			}
		}
		goto fail;
	}
	open_iter(lb, cfg->missing);
	pthread_mutex_init(&lb->iter_lock, NULL);
	release();
	*out = lb;
	return 0;

fail:
	release();
	bpf_object__close(lb->obj);
	free(lb);
	return err < 0 ? err : -EINVAL;
}

void socklb_close(struct socklb *lb)
{
	if (!lb)
		return;
	close_iter(lb);
	pthread_mutex_destroy(&lb->iter_lock);
	bpf_object__close(lb->obj);
	free(lb);
}

int socklb_map_fd(struct socklb *lb, const char *name)
{
	struct bpf_map *map = bpf_object__find_map_by_name(lb->obj, name);

	return map ? bpf_map__fd(map) : -ENOENT;
}

const char *socklb_map_name(int i)
{
	if (load_prog_names() || i < 0 || i >= n_maps)
		return NULL;
	return map_names[i];
}

const char *socklb_prog_name(int i)
{
	if (load_prog_names() || i < 0 || i >= SOCKLB_NPROGS)
		return NULL;
	return prog_names[i];
}

static int fd_prog_stats(int prog_fd, struct socklb_prog_stats *out);

int socklb_prog_stats(struct socklb *lb, int i, struct socklb_prog_stats *out)
{
	if (i < 0 || i >= SOCKLB_NPROGS)
		return -EINVAL;
	return fd_prog_stats(bpf_program__fd(lb->progs[i]), out);
}

const char *socklb_group_prog_name(int group, int i)
{
	if (load_prog_names() || group < 0 || group >= SOCKLB_NGROUPS || i < 0 || i >= group_size[group])
		return NULL;
	return group_name(group, i);
}

int socklb_attach(struct socklb *lb, int cgroup_fd, struct socklb_links **out)
{
	return socklb_attach_group(lb, SOCKLB_GROUP_MAIN, cgroup_fd, out);
}

int socklb_attach_group(struct socklb *lb, int group, int cgroup_fd, struct socklb_links **out)
{
	struct socklb_links *ls;
	int i, err;

	*out = NULL;
	if (group < 0 || group >= SOCKLB_NGROUPS)
		return -EINVAL;
	ls = calloc(1, sizeof(*ls));
	if (!ls)
		return -ENOMEM;
	ls->group = group;
	capture(NULL, 0);
	for (i = 0; i < group_size[group]; i++) {
		ls->links[i] = bpf_program__attach_cgroup(group_prog(lb, group, i), cgroup_fd);
		if (!ls->links[i]) {
			err = -errno;
			socklb_links_close(ls);
			release();
			return err ? err : -EINVAL;
		}
	}
	release();
	*out = ls;
	return 0;
}

int socklb_links_pin(struct socklb_links *ls, const char *dir)
{
	char path[4096];
	int i, err;

	for (i = 0; i < group_size[ls->group]; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, group_name(ls->group, i));
		if ((err = bpf_link__pin(ls->links[i], path))) {
			while (--i >= 0)
				bpf_link__unpin(ls->links[i]);
			return err;
		}
	}
	return 0;
}

void socklb_links_unpin(struct socklb_links *ls)
{
	for (int i = 0; i < SOCKLB_NPROGS; i++)
		if (ls->links[i])
			bpf_link__unpin(ls->links[i]);
}

int socklb_links_adopt(struct socklb *lb, int cgroup_fd, const char *dir, struct socklb_links **out)
{
	return socklb_links_adopt_group(lb, SOCKLB_GROUP_MAIN, cgroup_fd, dir, out);
}

int socklb_links_adopt_group(struct socklb *lb, int group, int cgroup_fd, const char *dir,
			     struct socklb_links **out)
{
	struct socklb_links *ls;
	char path[4096];
	int i, err = 0;

	*out = NULL;
	if (group < 0 || group >= SOCKLB_NGROUPS)
		return -EINVAL;
	ls = calloc(1, sizeof(*ls));
	if (!ls)
		return -ENOMEM;
	ls->group = group;
	capture(NULL, 0);
	for (i = 0; i < group_size[group]; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, group_name(group, i));
		ls->links[i] = bpf_link__open(path);
		if (ls->links[i]) {
			/* Atomic: the hook runs the old program or the new one. */
			err = bpf_link__update_program(ls->links[i], group_prog(lb, group, i));
		} else if (errno == ENOENT) {
			/* Killed between attaching two programs: finish the job. */
			ls->links[i] = bpf_program__attach_cgroup(group_prog(lb, group, i), cgroup_fd);
			err = ls->links[i] ? bpf_link__pin(ls->links[i], path) : -errno;
		} else {
			err = -errno;
		}
		if (err)
			break;
	}
	release();
	if (err) {
		/* Nothing is unpinned: pinned links stay as they were found
		 * (closing our fd drops only our reference). */
		socklb_links_close(ls);
		return err;
	}
	*out = ls;
	return 0;
}

int socklb_links_prog_id(struct socklb_links *ls, int i, uint32_t *id)
{
	struct bpf_link_info info = {};
	__u32 len = sizeof(info);

	if (i < 0 || i >= group_size[ls->group] || !ls->links[i])
		return -EINVAL;
	if (bpf_obj_get_info_by_fd(bpf_link__fd(ls->links[i]), &info, &len))
		return -errno;
	*id = info.prog_id;
	return 0;
}

void socklb_links_close(struct socklb_links *ls)
{
	if (!ls)
		return;
	for (int i = 0; i < SOCKLB_NPROGS; i++)
		bpf_link__destroy(ls->links[i]); /* NULL-safe; detaches and closes */
	free(ls);
}

int socklb_map_update(int fd, const void *keys, const void *values, uint32_t n, uint32_t key_size,
		      uint32_t value_size, uint64_t flags, uint32_t *done)
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

/* --- Socket iterators -------------------------------------------------- */

int socklb_iter_status(struct socklb *lb)
{
	return lb->iter_err;
}

int socklb_iter_destroy_status(struct socklb *lb)
{
	return lb->destroy_err;
}

/* Read an iterator to its end; returns bytes read or -errno. */
static int64_t drain_iter(struct bpf_link *link)
{
	char buf[4096];
	int64_t total = 0;
	ssize_t n;
	int fd = bpf_iter_create(bpf_link__fd(link));

	if (fd < 0)
		return -errno;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		total += n;
	if (n < 0)
		total = -errno;
	close(fd);
	return total;
}

/* Iterators to read to their end in each of nns network namespaces. */
struct netns_job {
	struct bpf_link *udp, *tcp; /* tcp may be NULL */
	const int *netns_fds;
	uint32_t nns;
	int64_t bytes; /* read from every iterator */
	int err;
};

/* Runs on a thread of its own: setns() changes only the calling thread's
 * namespace, and the thread ends rather than going back. */
static void *netns_thread(void *arg)
{
	struct netns_job *job = arg;

	for (uint32_t i = 0; i < job->nns && !job->err; i++) {
		int64_t r;

		if (setns(job->netns_fds[i], CLONE_NEWNET)) {
			job->err = -errno;
			break;
		}
		r = job->udp ? drain_iter(job->udp) : 0;
		if (r >= 0)
			job->bytes += r;
		if (r >= 0 && job->tcp) {
			r = drain_iter(job->tcp);
			if (r >= 0)
				job->bytes += r;
		}
		if (r < 0)
			job->err = (int)r;
	}
	return NULL;
}

/* Run a job on a thread of its own: setns() changes only the calling
 * thread's namespace, and the thread ends rather than going back. */
static int run_in_netns(struct netns_job *job)
{
	pthread_t th;
	int err = -pthread_create(&th, NULL, netns_thread, job);

	if (err)
		return err;
	pthread_join(th, NULL);
	return job->err;
}

static int read_destroyed(struct socklb *lb, uint64_t *out)
{
	struct bpf_map *bss = internal_map(lb->iter_obj, ".bss");
	uint32_t zero = 0;

	if (!bss)
		return -ENOENT;
	/* destroyed is the only variable in .bss */
	return bpf_map_lookup_elem(bpf_map__fd(bss), &zero, out) ? -errno : 0;
}

int socklb_terminate(struct socklb *lb, const uint32_t *backend_ids, uint32_t n, const int *netns_fds, uint32_t nns,
		   int tcp, uint64_t *destroyed, uint64_t *destroyed_tcp)
{
	struct netns_job job = { .netns_fds = netns_fds, .nns = nns };
	uint64_t before = 0, mid = 0, after = 0;
	struct bpf_map *doomed;
	uint8_t one = 1;
	uint32_t i;
	int err, fd;

	*destroyed = *destroyed_tcp = 0;
	if (lb->destroy_err)
		return lb->destroy_err;
	if (n == 0 || nns == 0)
		return 0;
	doomed = bpf_object__find_map_by_name(lb->iter_obj, "doomed");
	fd = bpf_map__fd(doomed);
	pthread_mutex_lock(&lb->iter_lock);
	if ((err = read_destroyed(lb, &before)))
		goto out;
	for (i = 0; i < n; i++) {
		if (bpf_map_update_elem(fd, &backend_ids[i], &one, BPF_ANY)) {
			err = -errno;
			goto clear;
		}
	}
	/* UDP in every namespace, then TCP: the count between them is UDP's. */
	job.udp = lb->iter_udp;
	err = run_in_netns(&job);
	if (!err)
		err = read_destroyed(lb, &mid);
	if (!err && tcp) {
		job.udp = NULL;
		job.tcp = lb->iter_tcp;
		err = run_in_netns(&job);
	}
	if (!err)
		err = read_destroyed(lb, &after);
	if (!err) {
		*destroyed = after > before ? after - before : 0;
		*destroyed_tcp = after > mid ? after - mid : 0;
	}
clear:
	for (uint32_t j = 0; j < i; j++)
		bpf_map_delete_elem(fd, &backend_ids[j]);
out:
	pthread_mutex_unlock(&lb->iter_lock);
	return err;
}

int64_t socklb_count_states(struct socklb *lb, const int *netns_fds, uint32_t nns)
{
	/* The counting iterators write one byte per entry they find. */
	struct netns_job job = { .netns_fds = netns_fds, .nns = nns };
	int err;

	if (lb->iter_err)
		return lb->iter_err;
	job.udp = lb->iter_count_udp;
	job.tcp = lb->iter_count_tcp;
	pthread_mutex_lock(&lb->iter_lock);
	err = run_in_netns(&job);
	pthread_mutex_unlock(&lb->iter_lock);
	return err ? err : job.bytes;
}

/* --- Socket termination through sock_diag (kernels without bpf_sock_destroy) */

/* A sock_diag request. */
struct diag_req {
	struct nlmsghdr nlh;
	struct inet_diag_req_v2 r;
};

static int diag_send(int nl, struct diag_req *req, size_t len)
{
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK };

	req->nlh.nlmsg_len = (uint32_t)len;
	return sendto(nl, req, len, 0, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0;
}

/* The ack of one request: 0 or -errno. */
static int diag_ack(int nl)
{
	char buf[1024];
	ssize_t got = recv(nl, buf, sizeof(buf), 0);
	struct nlmsghdr *h = (struct nlmsghdr *)buf;

	if (got < 0)
		return -errno;
	if (!NLMSG_OK(h, (size_t)got) || h->nlmsg_type != NLMSG_ERROR)
		return -EPROTO;
	return ((struct nlmsgerr *)NLMSG_DATA(h))->error;
}

/* Terminate one listed socket by its exact addresses, ports and device:
 * 1 if destroyed, 0 if gone meanwhile, or -errno. */
static int diag_destroy_one(int nl, const struct socklb_doomed_sock *s)
{
	struct diag_req d = {
		.nlh = { .nlmsg_type = SOCK_DESTROY, .nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK },
		.r = { .sdiag_family = s->family, .sdiag_protocol = s->protocol, .idiag_states = ~0U,
		       .id = { .idiag_sport = s->sport, .idiag_dport = s->dport, .idiag_if = s->ifindex,
			       .idiag_cookie = { INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE } } },
	};
	int err;

	memcpy(d.r.id.idiag_src, s->src, sizeof(s->src));
	memcpy(d.r.id.idiag_dst, s->dst, sizeof(s->dst));
	if ((err = diag_send(nl, &d, sizeof(struct diag_req))))
		return err;
	err = diag_ack(nl);
	return err == 0 ? 1 : err == -ENOENT ? 0 : err;
}

/* Read a listing iterator to its end: the records, or NULL with *err. */
static struct socklb_doomed_sock *read_listed(struct bpf_link *link, size_t *n, int *err)
{
	size_t cap = 64 * sizeof(struct socklb_doomed_sock), len = 0;
	char *buf = malloc(cap);
	int fd = bpf_iter_create(bpf_link__fd(link));
	ssize_t got;

	*n = 0;
	*err = 0;
	if (fd < 0 || !buf) {
		*err = fd < 0 ? -errno : -ENOMEM;
		if (fd >= 0)
			close(fd);
		free(buf);
		return NULL;
	}
	while ((got = read(fd, buf + len, cap - len)) > 0) {
		len += (size_t)got;
		if (len == cap) {
			char *p = realloc(buf, 2 * cap);

			if (!p) {
				*err = -ENOMEM;
				break;
			}
			buf = p;
			cap *= 2;
		}
	}
	if (got < 0)
		*err = -errno;
	close(fd);
	if (*err) {
		free(buf);
		return NULL;
	}
	*n = len / sizeof(struct socklb_doomed_sock);
	return (struct socklb_doomed_sock *)buf;
}

struct diag_job {
	struct bpf_link *udp, *tcp; /* listing iterators; tcp NULL: UDP only */
	const int *netns_fds;
	uint32_t nns;
	uint64_t destroyed, destroyed_tcp;
	int err;
};

static void *diag_thread(void *arg)
{
	struct diag_job *job = arg;

	for (uint32_t i = 0; i < job->nns && !job->err; i++) {
		int nl;

		if (setns(job->netns_fds[i], CLONE_NEWNET)) {
			job->err = -errno;
			break;
		}
		/* Opened in the namespace: a netlink socket answers for its own. */
		nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
		if (nl < 0) {
			job->err = -errno;
			break;
		}
		for (int p = 0; p < 2 && !job->err; p++) {
			struct bpf_link *link = p == 0 ? job->udp : job->tcp;
			struct socklb_doomed_sock *socks;
			size_t n;

			if (!link)
				continue;
			socks = read_listed(link, &n, &job->err);
			for (size_t k = 0; k < n && !job->err; k++) {
				int r = diag_destroy_one(nl, &socks[k]);

				if (r < 0) {
					job->err = r;
				} else {
					job->destroyed += (uint64_t)r;
					if (socks[k].protocol == IPPROTO_TCP)
						job->destroyed_tcp += (uint64_t)r;
				}
			}
			free(socks);
		}
		close(nl);
	}
	return NULL;
}

int socklb_diag_terminate(struct socklb *lb, const uint32_t *backend_ids, uint32_t n, const int *netns_fds,
			  uint32_t nns, int tcp, uint64_t *destroyed, uint64_t *destroyed_tcp)
{
	struct diag_job job = { .netns_fds = netns_fds, .nns = nns };
	struct bpf_map *doomed;
	uint8_t one = 1;
	pthread_t th;
	uint32_t i;
	int err = 0, fd;

	*destroyed = *destroyed_tcp = 0;
	if (lb->iter_err)
		return lb->iter_err;
	if (!lb->iter_list_udp || !lb->iter_list_tcp)
		return -EOPNOTSUPP;
	if (n == 0 || nns == 0)
		return 0;
	job.udp = lb->iter_list_udp;
	job.tcp = tcp ? lb->iter_list_tcp : NULL;
	doomed = bpf_object__find_map_by_name(lb->iter_obj, "doomed");
	fd = bpf_map__fd(doomed);
	pthread_mutex_lock(&lb->iter_lock);
	for (i = 0; i < n; i++) {
		if (bpf_map_update_elem(fd, &backend_ids[i], &one, BPF_ANY)) {
			err = -errno;
			goto clear;
		}
	}
	/* setns() changes only the calling thread: a thread of its own. */
	err = -pthread_create(&th, NULL, diag_thread, &job);
	if (!err) {
		pthread_join(th, NULL);
		err = job.err;
	}
	*destroyed = job.destroyed;
	*destroyed_tcp = job.destroyed_tcp;
clear:
	for (uint32_t j = 0; j < i; j++)
		bpf_map_delete_elem(fd, &backend_ids[j]);
	pthread_mutex_unlock(&lb->iter_lock);
	return err;
}

/* SOCK_DESTROY works (CONFIG_INET_DIAG_DESTROY): a TCP dump of this
 * namespace is answered, and destroying a socket that does not exist says
 * ENOENT rather than EOPNOTSUPP. */
static int probe_diag_destroy(void)
{
	struct diag_req req = {
		.nlh = { .nlmsg_type = SOCK_DIAG_BY_FAMILY, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP },
		.r = { .sdiag_family = AF_INET, .sdiag_protocol = IPPROTO_TCP, .idiag_states = 0 },
	};
	struct diag_req d = {
		.nlh = { .nlmsg_type = SOCK_DESTROY, .nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK },
		.r = { .sdiag_family = AF_INET, .sdiag_protocol = IPPROTO_TCP, .idiag_states = ~0U,
		       .id = { .idiag_cookie = { INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE } } },
	};
	char buf[4096];
	int ok = 0, nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	ssize_t got;

	if (nl < 0)
		return 0;
	/* No state asked for: the answer is NLMSG_DONE alone, if a handler
	 * for TCP exists. */
	if (diag_send(nl, &req, sizeof(struct diag_req)) == 0 && (got = recv(nl, buf, sizeof(buf), 0)) > 0 &&
	    NLMSG_OK((struct nlmsghdr *)buf, (size_t)got) && ((struct nlmsghdr *)buf)->nlmsg_type == NLMSG_DONE &&
	    diag_send(nl, &d, sizeof(struct diag_req)) == 0)
		ok = diag_ack(nl) == -ENOENT;
	close(nl);
	return ok;
}

/* --- Maglev -------------------------------------------------------------- */

static uint64_t fnv1a(const uint8_t *p, uint32_t n, uint64_t h)
{
	for (uint32_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	/* splitmix64 finalizer: FNV's low bits are weak for short keys. */
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebULL;
	h ^= h >> 31;
	return h;
}

int socklb_maglev(const uint8_t *ident, uint32_t ident_size, const uint32_t *weights, const uint32_t *ids,
		  uint32_t n, uint32_t *table, uint32_t m)
{
	uint64_t *offset = NULL, *skip = NULL, *next = NULL, *credit = NULL;
	uint32_t maxw = 0, filled = 0, i;
	int err = 0;

	if (m < 2 || n == 0)
		return -EINVAL;
	for (i = 0; i < n; i++)
		if (weights[i] > maxw)
			maxw = weights[i];
	if (maxw == 0)
		return -EINVAL;

	offset = calloc(n, sizeof(*offset));
	skip = calloc(n, sizeof(*skip));
	next = calloc(n, sizeof(*next));
	credit = calloc(n, sizeof(*credit));
	if (!offset || !skip || !next || !credit) {
		err = -ENOMEM;
		goto out;
	}
	for (i = 0; i < n; i++) {
		const uint8_t *id = ident + (size_t)i * ident_size;

		offset[i] = fnv1a(id, ident_size, 0xcbf29ce484222325ULL) % m;
		skip[i] = fnv1a(id, ident_size, 0x84222325cbf29ce4ULL) % (m - 1) + 1;
	}
	for (i = 0; i < m; i++)
		table[i] = UINT32_MAX;

	/* Each round every backend earns its weight in credit and takes one
	 * preferred free position per maxw of credit, so positions are shared
	 * in proportion to weight; the heaviest backend takes one per round, so
	 * the loop ends after at most m rounds. */
	while (filled < m) {
		for (i = 0; i < n && filled < m; i++) {
			credit[i] += weights[i];
			while (credit[i] >= maxw && filled < m) {
				uint64_t pos;

				credit[i] -= maxw;
				do {
					pos = (offset[i] + next[i] * skip[i]) % m;
					next[i]++;
				} while (table[pos] != UINT32_MAX);
				table[pos] = ids[i];
				filled++;
			}
		}
	}
out:
	free(offset);
	free(skip);
	free(next);
	free(credit);
	return err;
}

/* --- Feature probes ------------------------------------------------------ */

/* Load "r0 = 1; exit" as a sock_addr program for the given attach type. */
static int probe_attach_type(enum bpf_attach_type type)
{
	const struct bpf_insn insns[] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 1 },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = type);
	int fd = bpf_prog_load(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, NULL, "GPL", insns, 2, &opts);

	if (fd < 0)
		return 0;
	close(fd);
	return 1;
}

/* Load "r0 = 1; exit" as a cgroup sock program for the given attach type. */
static int probe_sock_attach_type(enum bpf_attach_type type)
{
	const struct bpf_insn insns[] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 1 },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = type);
	int fd = bpf_prog_load(BPF_PROG_TYPE_CGROUP_SOCK, NULL, "GPL", insns, 2, &opts);

	if (fd < 0)
		return 0;
	close(fd);
	return 1;
}

static int probe_helper(enum bpf_func_id id)
{
	return libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, id, NULL) == 1;
}

/* cgroup/sock_release programs that may read the socket cookie. */
static int probe_sock_release(void)
{
	const struct bpf_insn insns[] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 1 },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = BPF_CGROUP_INET_SOCK_RELEASE);
	int fd = bpf_prog_load(BPF_PROG_TYPE_CGROUP_SOCK, NULL, "GPL", insns, 2, &opts);

	if (fd < 0)
		return 0;
	close(fd);
	return libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SOCK, BPF_FUNC_get_socket_cookie, NULL) == 1;
}

/* A kfunc is present when the kernel's BTF has a function of that name. */
static int probe_kfunc(const char *name)
{
	struct btf *vmlinux = btf__load_vmlinux_btf();
	int found;

	if (!vmlinux)
		return 0;
	found = btf__find_by_name_kind(vmlinux, name, BTF_KIND_FUNC) > 0;
	btf__free(vmlinux);
	return found;
}

/* Socket iterators that read socket-local storage (bpf_sk_storage_get in
 * tracing programs, Linux 5.11): the counting-only object loads, with maps
 * of its own (the doomed and sock_tcp maps at one entry). */
static int probe_iter_storage(void)
{
#if SOCKLB_HAVE_ITER
	struct bpf_object *obj = bpf_object__open_mem(socklb_iter_count_obj, socklb_iter_count_obj_len, NULL);
	struct bpf_map *doomed, *tcp;
	int ok;

	if (!obj)
		return 0;
	doomed = bpf_object__find_map_by_name(obj, "doomed");
	tcp = bpf_object__find_map_by_name(obj, "sock_tcp");
	ok = doomed && tcp && !bpf_map__set_max_entries(doomed, 1) && !bpf_map__set_max_entries(tcp, 1) &&
	     !bpf_object__load(obj);
	bpf_object__close(obj);
	return ok;
#else
	return 0;
#endif
}

static uint32_t probed_missing;
static pthread_once_t probe_once = PTHREAD_ONCE_INIT;

static void probe_init(void)
{
	/* One row per feature bit; Python's feature table names them and
	 * gives the first kernel that has each. */
	static const struct {
		enum bpf_attach_type attach; /* probed as a sock_addr program, or */
		enum bpf_func_id helper;     /* as a helper of one, or */
		const char *kfunc;	     /* as a kernel function in the BTF, or */
		enum bpf_attach_type sock_attach; /* as a cgroup sock program, or */
		int (*probe)(void);	     /* by a function of its own */
		uint32_t bit;
	} probes[] = {
		{ .attach = BPF_CGROUP_INET4_CONNECT, .bit = SOCKLB_MISSING_CONNECT },
		{ .attach = BPF_CGROUP_UDP4_SENDMSG, .bit = SOCKLB_MISSING_SENDMSG },
		{ .attach = BPF_CGROUP_UDP4_RECVMSG, .bit = SOCKLB_MISSING_RECVMSG },
		{ .attach = BPF_CGROUP_INET4_GETPEERNAME, .bit = SOCKLB_MISSING_GETPEERNAME },
		{ .helper = BPF_FUNC_set_retval, .bit = SOCKLB_MISSING_SET_RETVAL },
		{ .helper = BPF_FUNC_sk_storage_get, .bit = SOCKLB_MISSING_SK_STORAGE },
		{ .helper = BPF_FUNC_get_netns_cookie, .bit = SOCKLB_MISSING_NETNS_COOKIE },
		{ .kfunc = "bpf_sock_destroy", .bit = SOCKLB_MISSING_SOCK_DESTROY },
		{ .sock_attach = BPF_CGROUP_INET4_POST_BIND, .bit = SOCKLB_MISSING_POST_BIND },
		{ .probe = probe_sock_release, .bit = SOCKLB_MISSING_SOCK_RELEASE },
		{ .helper = BPF_FUNC_skc_to_mptcp_sock, .bit = SOCKLB_MISSING_MPTCP_CAST },
		{ .probe = probe_diag_destroy, .bit = SOCKLB_MISSING_DIAG_DESTROY },
		{ .probe = probe_iter_storage, .bit = SOCKLB_MISSING_ITER_STORAGE },
		{ .helper = BPF_FUNC_jiffies64, .bit = SOCKLB_MISSING_JIFFIES64 },
	};
	uint32_t missing = 0;

	for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
		int ok = probes[i].probe ? probes[i].probe()
			 : probes[i].sock_attach ? probe_sock_attach_type(probes[i].sock_attach)
			 : probes[i].kfunc ? probe_kfunc(probes[i].kfunc)
			 : probes[i].helper ? probe_helper(probes[i].helper)
					    : probe_attach_type(probes[i].attach);

		if (!ok)
			missing |= probes[i].bit;
	}
	probed_missing = missing;
}

/* Probed once per process: a kernel does not gain features at run time. */
uint32_t socklb_probe(void)
{
	capture(NULL, 0);
	pthread_once(&probe_once, probe_init);
	release();
	return probed_missing;
}

int socklb_tcp_by_cookie(struct socklb *lb)
{
	return lb->tcp_by_cookie;
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

/* --- trace ring buffer (socklb trace) ----------------------------------- */

struct socklb_trace {
	struct ring_buffer *rb;
	char *events;
	uint32_t cap, n;
	uint64_t lost;
};

static int trace_sample(void *ctx, void *data, size_t len)
{
	struct socklb_trace *t = ctx;

	if (len < sizeof(struct socklb_trace_event) || t->n >= t->cap) {
		t->lost++;
		return 0;
	}
	memcpy(t->events + (size_t)t->n * sizeof(struct socklb_trace_event), data, sizeof(struct socklb_trace_event));
	t->n++;
	return 0;
}

int socklb_trace_open(int ringbuf_fd, struct socklb_trace **out)
{
	struct socklb_trace *t = calloc(1, sizeof(*t));

	if (!t)
		return -ENOMEM;
	t->rb = ring_buffer__new(ringbuf_fd, trace_sample, t, NULL);
	if (!t->rb) {
		int err = -errno;

		free(t);
		return err ? err : -EINVAL;
	}
	*out = t;
	return 0;
}

int socklb_trace_poll(struct socklb_trace *t, void *events, uint32_t cap, int timeout_ms, uint64_t *lost)
{
	int err;

	t->events = events;
	t->cap = cap;
	t->n = 0;
	t->lost = 0;
	err = ring_buffer__poll(t->rb, timeout_ms);
	*lost = t->lost;
	if (err < 0 && err != -EINTR)
		return err;
	return (int)t->n;
}

void socklb_trace_close(struct socklb_trace *t)
{
	if (!t)
		return;
	ring_buffer__free(t->rb);
	free(t);
}

int64_t socklb_count_pinned_states(int conn_fd, int dgram_fd, int tcp_fd, const int *netns_fds, uint32_t nns)
{
	/* Only the iterator object, over the given maps: nothing is attached
	 * to a cgroup and nothing is written. */
	struct socklb lb = {};
	int64_t n;

	capture(NULL, 0);
	lb.iter_err = open_iter_fds(&lb, conn_fd, dgram_fd, tcp_fd, true);
	release();
	if (lb.iter_err)
		return lb.iter_err;
	pthread_mutex_init(&lb.iter_lock, NULL);
	n = socklb_count_states(&lb, netns_fds, nns);
	pthread_mutex_destroy(&lb.iter_lock);
	close_iter(&lb);
	return n;
}

static int fd_prog_stats(int prog_fd, struct socklb_prog_stats *out)
{
	struct bpf_prog_info info = {};
	__u32 len = sizeof(info);

	if (bpf_obj_get_info_by_fd(prog_fd, &info, &len))
		return -errno;
	out->run_cnt = info.run_cnt;
	out->run_time_ns = info.run_time_ns;
	out->id = info.id;
	memcpy(out->name, info.name, sizeof(out->name));
	out->name[sizeof(out->name) - 1] = '\0';
	return 0;
}
