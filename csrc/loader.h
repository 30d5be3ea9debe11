/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * socklb native core: a thin loader over libbpf, called from Python through
 * cffi.  build_ffi.py feeds this file (minus preprocessor lines other than
 * integer #defines) to cffi's parser, so keep it to plain declarations.
 *
 * Every function that can fail returns 0 or a positive value on success and
 * a negative errno on failure; Python turns that into an exception in one
 * place (socklb._core.check).
 */

/* The balancer's programs (named socklb_*), attached together by socklb_attach. */
#define SOCKLB_NPROGS 11
/* The programs of a scope group, attached on their own (socklb_attach_group):
 * connect4, connect6, sendmsg4, sendmsg6. */
#define SOCKLB_NGATE 4
/* exclude_*: leave a cgroup's sockets alone; hostonly_*: translate only the
 * sockets of the node's network namespace. */
#define SOCKLB_GROUP_MAIN 0
#define SOCKLB_GROUP_EXCLUDE 1
#define SOCKLB_GROUP_HOSTONLY 2
#define SOCKLB_NGROUPS 3
#define SOCKLB_LOG_SIZE 262144

struct socklb_config {
	uint32_t max_services;
	uint32_t max_backends; /* service-backend pairs */
	uint32_t max_slots;    /* selectable list entries, live + being replaced */
	uint32_t max_affinity;
	uint32_t maglev_size; /* entries per maglev table (a prime) */
	uint32_t max_maglev;  /* maglev tables, live + being replaced */
	uint32_t udp_flows;   /* unconnected-UDP flows per socket, 1..SOCKLB_MAX_UDP_FLOWS */
	/* SOCKLB_MISSING_* bits to load for (the probe's, or forced by tests):
	 * SET_RETVAL picks the datapath built without bpf_set_retval,
	 * SOCK_DESTROY the counting-only socket iterators. */
	uint32_t missing;
};

/* Kernel statistics of one program (needs kernel.bpf_stats_enabled=1). */
struct socklb_prog_stats {
	uint64_t run_cnt;
	uint64_t run_time_ns;
	uint32_t id;
	char name[16];
};

struct socklb;
struct socklb_links;

/* Open the embedded BPF object, size its maps from cfg and load it.  On
 * failure, log (log_size bytes) holds the verifier's or libbpf's messages
 * and *failed_prog the index of the program that was rejected, or -1. */
int socklb_open(const struct socklb_config *cfg, struct socklb **out, char *log, size_t log_size, int *failed_prog);
/* The same with every map pinned under pin_dir/maps/<name>: maps already
 * pinned there are reused (libbpf checks that they are compatible), the
 * others are created and pinned.  pin_dir/maps must exist. */
int socklb_open_pinned(const struct socklb_config *cfg, const char *pin_dir, struct socklb **out, char *log,
		       size_t log_size, int *failed_prog);
/* Read entry 0 of a pinned array map into value (at most value_size bytes);
 * *actual is the map's value size. */
int socklb_read_pinned(const char *path, void *value, uint32_t value_size, uint32_t *actual);
void socklb_close(struct socklb *lb);

/* Map file descriptor by name ("services", "slots", ...), or -ENOENT. */
int socklb_map_fd(struct socklb *lb, const char *name);
/* Name of the i-th map a pinned balancer pins (internal maps such as .rodata
 * and the machine-wide socklb_mark left out), or NULL past the last; the
 * loader's list, which the compiler checks against the object's skeleton. */
const char *socklb_map_name(int i);
/* Name of program i (0 <= i < SOCKLB_NPROGS), e.g. "socklb_connect4". */
const char *socklb_prog_name(int i);
/* Name of program i of a group (SOCKLB_GROUP_*), or NULL past its last. */
const char *socklb_group_prog_name(int group, int i);
int socklb_prog_stats(struct socklb *lb, int i, struct socklb_prog_stats *out);

/* Attach every program to the cgroup (bpf_link each); detach with
 * socklb_links_close(). */
int socklb_attach(struct socklb *lb, int cgroup_fd, struct socklb_links **out);
/* The same for the programs of one group (SOCKLB_GROUP_*). */
int socklb_attach_group(struct socklb *lb, int group, int cgroup_fd, struct socklb_links **out);
/* Detach (the links' last reference goes) and free. */
void socklb_links_close(struct socklb_links *links);
/* Pin every link as dir/<program name>; dir must exist. */
int socklb_links_pin(struct socklb_links *links, const char *dir);
/* Remove the pins of links pinned with socklb_links_pin. */
void socklb_links_unpin(struct socklb_links *links);
/* Adopt the links pinned in dir: each is switched atomically to this
 * balancer's program (bpf_link update, no moment without a program); a link
 * missing from dir is attached anew to cgroup_fd and pinned. */
int socklb_links_adopt(struct socklb *lb, int cgroup_fd, const char *dir, struct socklb_links **out);
/* The same for the links of one group. */
int socklb_links_adopt_group(struct socklb *lb, int group, int cgroup_fd, const char *dir, struct socklb_links **out);
/* Id of the program a link runs now (for tests of upgrades). */
int socklb_links_prog_id(struct socklb_links *links, int i, uint32_t *id);

/* Map operations on n packed keys/values (key_size/value_size each).
 * update and delete stop at the first failure and report how many were
 * done in *done. */
int socklb_map_update(int fd, const void *keys, const void *values, uint32_t n, uint32_t key_size, uint32_t value_size,
		      uint64_t flags, uint32_t *done);
int socklb_map_delete(int fd, const void *keys, uint32_t n, uint32_t key_size, uint32_t *done);
int socklb_map_lookup(int fd, const void *key, void *value);
/* Walk the map: fills up to cap keys, returns how many. */
int socklb_map_keys(int fd, void *keys, uint32_t key_size, uint32_t cap);

/* Fill table[0..m) with entries of ids[] by Maglev consistent hashing.
 * ident is n records of ident_size bytes naming each backend (its hash seeds
 * the permutation); weights[i] == 0 leaves backend i out.  Returns 0, or
 * -EINVAL when m is not > 1 or no backend has weight. */
int socklb_maglev(const uint8_t *ident, uint32_t ident_size, const uint32_t *weights, const uint32_t *ids, uint32_t n,
		  uint32_t *table, uint32_t m);

/* Delete every affinity entry of the n services in svc_ids (sorted
 * ascending).  Returns how many entries were deleted. */
int socklb_affinity_purge(int fd, const uint32_t *svc_ids, uint32_t n);

/* Socket iterators (socklb_iter.bpf.c).  0 when they loaded (in full or
 * counting only); otherwise the negative errno of the failure: -EOPNOTSUPP
 * when the extension was built without them. */
int socklb_iter_status(struct socklb *lb);
/* 0 when the terminating iterators (bpf_sock_destroy) loaded, else the
 * negative errno why not (-EOPNOTSUPP: not asked for, cfg->missing). */
int socklb_iter_destroy_status(struct socklb *lb);

/* Terminate the sockets socklb connected to any of the n backend ids, in each
 * of the nns network namespaces (open /proc/PID/ns/net fds); TCP sockets only
 * when tcp != 0.  *destroyed counts the sockets terminated, *destroyed_tcp the
 * TCP ones among them. */
int socklb_terminate(struct socklb *lb, const uint32_t *backend_ids, uint32_t n, const int *netns_fds, uint32_t nns,
		     int tcp, uint64_t *destroyed, uint64_t *destroyed_tcp);

/* The same from user space, for kernels without bpf_sock_destroy (the
 * counting-only iterator object): in each namespace, a listing iterator
 * names the sockets whose translation record (sock_conn) has one of the
 * backend ids and whose destination is still that backend, and each is
 * terminated with sock_diag's SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY). */
int socklb_diag_terminate(struct socklb *lb, const uint32_t *backend_ids, uint32_t n, const int *netns_fds,
			  uint32_t nns, int tcp, uint64_t *destroyed, uint64_t *destroyed_tcp);

/* Per-socket entries (sock_conn plus sock_dgram) held right now by the
 * sockets of the nns network namespaces (open /proc/PID/ns/net fds). */
int64_t socklb_count_states(struct socklb *lb, const int *netns_fds, uint32_t nns);
/* The same for the per-socket maps of a pinned balancer (fds of its
 * sock_conn, sock_dgram and sock_tcp, read-only is enough), with a
 * short-lived copy of the iterators: for tools that read another process's
 * balancer. */
int64_t socklb_count_pinned_states(int conn_fd, int dgram_fd, int tcp_fd, const int *netns_fds, uint32_t nns);
/* Whether this balancer keeps TCP records by socket cookie (sock_tcp) rather
 * than in socket-local storage (see tcp_by_cookie in bpf/maps.h). */
int socklb_tcp_by_cookie(struct socklb *lb);
/* Slots of a sock_tcp map (an fd) held by a socket: how many TCP records it
 * holds. */
int64_t socklb_tcp_slots_used(int fd);

/* Free the sock_tcp slots whose socket is gone although no release program
 * ran for it (it closed after its cgroup was detached): a slot is freed when
 * it held the same cookie before and after two walks of the TCP sockets of
 * the nns network namespaces (open fds) that did not find that socket.
 * Returns the number of slots freed, or -errno (-EOPNOTSUPP without
 * iterators).  See reclaim.c. */
int64_t socklb_reclaim_tcp(struct socklb *lb, const int *netns_fds, uint32_t nns);

/* Kernel features this library needs that are missing: the bits
 * (SOCKLB_MISSING_*) of the rows of features.def the kernel lacks. */
uint32_t socklb_probe(void);
/* A row of the feature table (features.def), for Python's
 * socklb.features.FEATURES. */
struct socklb_feature {
	const char *name;
	const char *description;
	const char *kernel;   /* the first Linux release that has it */
	const char *fallback; /* what socklb does without it; "" when required */
	uint32_t bit;	      /* set by socklb_probe() when the kernel lacks it */
};
/* Row i of the table (in the file's order), or NULL past the last. */
const struct socklb_feature *socklb_feature(int i);

/* Read-only inspection of a pinned balancer (socklb.inspect): open the object
 * pinned at path with BPF_F_RDONLY (maps) or no flags (links, which have no
 * read-only mode); returns the fd (the caller closes it) or -errno. */
int socklb_obj_get(const char *path, int read_only);
/* A map's type, key and value sizes and max_entries. */
int socklb_map_info(int fd, uint32_t *type, uint32_t *key_size, uint32_t *value_size, uint32_t *max_entries);
/* A cgroup bpf_link's program id, cgroup id and attach type. */
int socklb_link_info(int fd, uint32_t *prog_id, uint64_t *cgroup_id, uint32_t *attach_type);

/* socklb trace: consume the trace_events ring buffer (an fd of the pinned
 * map).  socklb_trace_poll waits up to timeout_ms and copies at most cap
 * events (struct socklb_trace_event) into events; those past cap in one poll
 * are counted in *lost.  Returns how many were copied. */
struct socklb_trace;
int socklb_trace_open(int ringbuf_fd, struct socklb_trace **out);
int socklb_trace_poll(struct socklb_trace *t, void *events, uint32_t cap, int timeout_ms, uint64_t *lost);
void socklb_trace_close(struct socklb_trace *t);
