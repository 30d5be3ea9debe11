// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * socklb socket iterators: a second BPF object, built against the kernel's
 * BTF (vmlinux.h, generated at build time), that shares the sock_conn and
 * sock_dgram maps of
 * the datapath object.
 *
 *   iter/udp, iter/tcp      terminate sockets that socklb connected to a
 *                           backend that has gone away (bpf_sock_destroy,
 *                           Linux 6.5), so the application sees an error and
 *                           reconnects to a live backend
 *   iter/udp, iter/tcp      (count) live per-socket entries (leak checks)
 *
 * A socket iterator walks the network namespace of the process that creates
 * the iterator; the loader enters each client pod's namespace to run it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "socklb_maps.h"

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* Reused from the datapath object (bpf_map__reuse_fd). */
#include "socklb_sock_conn.bpf.h"

/* Backend ids whose connected sockets are to be terminated. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCKLB_DOOMED_ENTRIES);
	__type(key, __u32);
	__type(value, __u8);
} doomed SEC(".maps");

/* Number of sockets destroyed, read back by the loader. */
__u64 destroyed = 0;

/* The record of a socket socklb connected: sock_tcp by cookie for TCP (see
 * socklb_sock_conn.bpf.h), else socket-local storage. */
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

/* The full socket behind a TCP iterator's entry, or NULL: request and
 * time-wait sockets carry no storage. */
static __always_inline struct sock *full_tcp_sock(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;

	return skc ? (struct sock *)bpf_skc_to_tcp_sock(skc) : NULL;
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

char LICENSE[] SEC("license") = "Dual BSD/GPL";
