// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * socklb socket iterators: a second BPF object, built from the minimal CO-RE
 * type set of socklb_iter_types.h (no vmlinux.h: it builds without kernel
 * BTF), that shares the sock_conn, sock_dgram and sock_tcp maps of the datapath object.
 * Built twice: in full, and with -DSOCKLB_ITER_COUNT_ONLY (the counting
 * programs alone) for kernels without bpf_sock_destroy, where the control
 * plane terminates sockets through sock_diag instead (terminate.c).
 *
 *   iter/udp, iter/tcp      terminate sockets that socklb connected to a
 *                           backend that has gone away (bpf_sock_destroy,
 *                           Linux 6.5), so the application sees an error and
 *                           reconnects to a live backend
 *   iter/udp, iter/tcp      (count) live per-socket entries (leak checks)
 *   iter/tcp                (live) cookies of the sockets holding a sock_tcp
 *                           slot: the others are reclaimed (reclaim.c)
 *
 * A socket iterator walks the network namespace of the process that creates
 * the iterator; the loader enters each client pod's namespace to run it.
 */
#include <stdbool.h>
#include "socklb_iter_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "socklb_maps.h"

/* Reused from the datapath object (bpf_map__reuse_fd). */
#include "bpf/sock_maps.h"

/* The full socket behind a TCP iterator's entry, or NULL: request and
 * time-wait sockets carry no storage. */
static __always_inline struct sock *full_tcp_sock(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;

	return skc ? (struct sock *)bpf_skc_to_tcp_sock(skc) : NULL;
}

/* Backend ids whose connected sockets are to be terminated. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCKLB_DOOMED_ENTRIES);
	__type(key, __u32);
	__type(value, __u8);
} doomed SEC(".maps");

/* The record of a socket socklb connected: sock_tcp by cookie for TCP (see
 * bpf/sock_maps.h), else socket-local storage. */
static __always_inline struct socklb_sock_entry *record(struct sock *sk, bool tcp)
{
	struct socklb_sock_entry *conn = NULL;

	if (tcp) {
		__u64 cookie = bpf_get_socket_cookie(sk);
		struct socklb_sock_slot *slot = tcp_slot(cookie);

		if (slot && slot->cookie == cookie)
			conn = &slot->e;
	}
	return conn ? conn : bpf_sk_storage_get(&sock_conn, sk, 0, 0);
}

#ifdef SOCKLB_ITER_COUNT_ONLY
/* Without bpf_sock_destroy: list the doomed sockets that still talk to their
 * backend, for the loader to terminate with sock_diag's SOCK_DESTROY. */
static __always_inline void list_doomed(struct bpf_iter_meta *meta, struct sock *sk, struct sock_common *skc,
					__u8 protocol)
{
	struct socklb_sock_entry *conn = record(sk, protocol == 6 /* IPPROTO_TCP */);
	struct socklb_doomed_sock out = { .protocol = protocol };
	__u32 id;

	if (!conn || !conn->vip_port)
		return;
	id = conn->backend_id;
	if (!bpf_map_lookup_elem(&doomed, &id))
		return;
	out.family = (__u8)skc->skc_family;
	out.dport = skc->skc_dport;
	out.sport = bpf_htons(skc->skc_num);
	out.ifindex = (__u32)skc->skc_bound_dev_if;
	if (out.family == 2 /* AF_INET */) {
		out.src[0] = skc->skc_rcv_saddr;
		out.dst[0] = skc->skc_daddr;
		if (conn->backend[0] || conn->backend[1] || conn->backend[2] != bpf_htonl(0xffff) ||
		    conn->backend[3] != out.dst[0])
			return;
	} else {
		bpf_probe_read_kernel(out.src, sizeof(out.src),
				      __builtin_preserve_access_index(&skc->skc_v6_rcv_saddr));
		bpf_probe_read_kernel(out.dst, sizeof(out.dst), __builtin_preserve_access_index(&skc->skc_v6_daddr));
		if (conn->backend[0] != out.dst[0] || conn->backend[1] != out.dst[1] ||
		    conn->backend[2] != out.dst[2] || conn->backend[3] != out.dst[3])
			return;
	}
	if (out.dport != conn->backend_port)
		return;
	bpf_seq_write(meta->seq, &out, sizeof(out));
}

SEC("iter/udp")
int socklb_list_udp(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;

	if (sk)
		list_doomed(ctx->meta, sk, &sk->__sk_common, 17 /* IPPROTO_UDP */);
	return 0;
}

SEC("iter/tcp")
int socklb_list_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock *sk = full_tcp_sock(ctx);

	if (sk)
		list_doomed(ctx->meta, sk, &sk->__sk_common, 6 /* IPPROTO_TCP */);
	return 0;
}
#else
extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* Number of sockets destroyed, read back by the loader. */
__u64 destroyed = 0;

static __always_inline bool is_doomed(struct sock *sk, bool tcp)
{
	struct socklb_sock_entry *conn = record(sk, tcp);
	__u32 id;

	if (!conn || !conn->vip_port)
		return false;
	id = conn->backend_id;
	return bpf_map_lookup_elem(&doomed, &id) != NULL;
}

SEC("iter/udp")
int socklb_destroy_udp(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;

	if (sk && is_doomed(sk, false) && bpf_sock_destroy((struct sock_common *)sk) == 0)
		__sync_fetch_and_add(&destroyed, 1);
	return 0;
}

SEC("iter/tcp")
int socklb_destroy_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct sock *sk = full_tcp_sock(ctx);

	/* bpf_sock_destroy() takes the iterator's own (trusted) pointer. */
	if (skc && sk && is_doomed(sk, true) && bpf_sock_destroy(skc) == 0)
		__sync_fetch_and_add(&destroyed, 1);
	return 0;
}

#endif /* !SOCKLB_ITER_COUNT_ONLY */

/* Counting: one byte of output per per-socket entry, the reader counts
 * bytes.  Socket iterators rather than iter/bpf_sk_storage_map, which some
 * kernels refuse to load. */
static __always_inline void count_entries(struct bpf_iter_meta *meta, struct sock *sk, bool tcp)
{
	char one = 1;

	if (tcp) {
		__u64 cookie = bpf_get_socket_cookie(sk);
		struct socklb_sock_slot *slot = tcp_slot(cookie);

		if (slot && slot->cookie == cookie)
			bpf_seq_write(meta->seq, &one, 1);
	}
	if (bpf_sk_storage_get(&sock_conn, sk, 0, 0))
		bpf_seq_write(meta->seq, &one, 1);
	if (bpf_sk_storage_get(&sock_dgram, sk, 0, 0))
		bpf_seq_write(meta->seq, &one, 1);
}

SEC("iter/udp")
int socklb_count_udp(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;

	if (sk)
		count_entries(ctx->meta, sk, false);
	return 0;
}

SEC("iter/tcp")
int socklb_count_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock *sk = full_tcp_sock(ctx);

	if (sk)
		count_entries(ctx->meta, sk, true);
	return 0;
}

/* Live records: the cookie of every TCP socket of this namespace that holds
 * its sock_tcp slot, for the reclaim of slots whose socket closed while no
 * release program ran for it (reclaim.c). */
SEC("iter/tcp")
int socklb_live_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock *sk = full_tcp_sock(ctx);
	struct socklb_sock_slot *slot;
	__u64 cookie;

	if (!sk)
		return 0;
	cookie = bpf_get_socket_cookie(sk);
	slot = tcp_slot(cookie);
	if (slot && slot->cookie == cookie)
		bpf_seq_write(ctx->meta->seq, &cookie, sizeof(cookie));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
