/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What the files of the native core share, and only they: the handle behind
 * struct socklb, the socket iterators it holds, and libbpf's message capture.
 * Not part of the API (loader.h is), not seen by cffi.
 *
 *   loader.c     open/size/load/pin of the datapath skeleton, links, names
 *   mapio.c      bulk map I/O, affinity purge, read-only inspection
 *   terminate.c  socket iterators, namespace threads, sock_diag
 *   maglev.c     Maglev tables
 *   probe.c      kernel feature probes (features.def)
 *   trace.c      the trace ring buffer's reader
 *   rows.c       rows of many new services, parallel bulk updates
 */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loader.h"
#include "socklb_build.h" /* generated: SOCKLB_HAVE_ITER */

/* SOCKLB_MISSING_<ID>: the feature bits of features.def. */
enum {
#define SOCKLB_FEATURE(id, name, bit, ...) SOCKLB_MISSING_##id = 1u << (bit),
#include "features.def"
#undef SOCKLB_FEATURE
};

struct bpf_link;
struct bpf_program;
struct socklb_bpf;	  /* the datapath's skeleton (socklb_bpf.skel.h) */
struct socklb_iter;	  /* the socket iterators' in full (socklb_iter.skel.h) */
struct socklb_iter_count; /* and counting only (socklb_iter_count.skel.h) */

/* The socket iterators of a balancer: one of the two objects, loaded over
 * the datapath's per-socket maps.  Optional, see socklb_iter_status(). */
struct socklb_iters {
	struct socklb_iter *full;	 /* with bpf_sock_destroy, or */
	struct socklb_iter_count *count; /* counting only (it lists for sock_diag) */
	/* Links of the loaded object (owned by its skeleton). */
	struct bpf_link *destroy_udp, *destroy_tcp; /* full */
	struct bpf_link *list_udp, *list_tcp;	    /* counting only */
	struct bpf_link *count_udp, *count_tcp;	    /* both */
	struct bpf_link *live_tcp;		    /* both: cookies holding a sock_tcp slot */
	int doomed_fd;				    /* backend ids to terminate */
	int destroyed_fd;			    /* full: its .bss, the count of sockets destroyed */
	int err;				    /* 0 when one of the objects loaded */
	int destroy_err;			    /* 0 when the full object loaded */
	pthread_mutex_t lock;			    /* one termination or count at a time */
};

struct socklb {
	struct socklb_bpf *skel;
	/* The programs of each group (SOCKLB_GROUP_*), in the order of
	 * socklb_prog_name() and socklb_group_prog_name(). */
	struct bpf_program *progs[SOCKLB_NGROUPS][SOCKLB_NPROGS];
	int tcp_by_cookie;
	struct socklb_iters iter;
};

/* libbpf's messages go to buf (size bytes) until socklb__log_release(), for
 * the calling thread only; with buf NULL, nowhere (log.c). */
void socklb__log_capture(char *buf, size_t size);
void socklb__log_release(void);

/* Load the socket iterators over the datapath's per-socket maps (fds): in
 * full, or counting only.  Returns 0 or -errno; it->err and it->destroy_err
 * are the caller's (terminate.c). */
int socklb__iter_open(struct socklb_iters *it, int conn_fd, int dgram_fd, int tcp_fd, bool count_only);
/* Close what socklb__iter_open loaded (idempotent). */
void socklb__iter_close(struct socklb_iters *it);

/* Whether sock_diag's SOCK_DESTROY works (CONFIG_INET_DIAG_DESTROY): a probe
 * of probe.c that lives with the sock_diag code (terminate.c). */
int socklb__probe_diag_destroy(void);
