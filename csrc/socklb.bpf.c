// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * socklb datapath: cgroup sock_addr programs that balance services at the
 * socket layer.
 *
 *   connect4/6      TCP and connected UDP: VIP:port -> backend, once per connect()
 *   sendmsg4/6      unconnected UDP: each datagram to a VIP goes to the socket's backend
 *   recvmsg4/6      unconnected UDP: replies from that backend show the VIP as source
 *   getpeername4/6  a translated socket reports the VIP it dialled (an MPTCP
 *                   socket: through the record of its first subflow)
 *
 * Every program returns 1 (allow) for destinations that are not services; the
 * common case costs one hash lookup (a UDP connect() also drops the socket's
 * socklb state, which costs only when the socket has some).
 *
 * A socket is translated once per system call, by the first socklb program
 * that runs on it (programs of a child cgroup run before its parent's, and on
 * one cgroup in the order they were attached): the later ones see the
 * socklb_mark it left and let the socket be.  Replies and getpeername() then
 * show what the application dialled.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "socklb_maps.h"

/* The datapath by concern, in this order (each header uses the ones before
 * it); the hooks below stay thin. */
#include "bpf/maps.h"
#include "bpf/common.h"
#include "bpf/frontend.h"
#include "bpf/select.h"
#include "bpf/sockstate.h"
#include "bpf/trace.h"

/* clang-format leaves the hook macros as they are written: it would read
 * their declarations made by token pasting as expressions. */
/* clang-format off */
/* The IPv4 and IPv6 programs of a hook differ only in how they read the
 * destination: one definition for both. */
#define TRANSLATING_HOOKS(hook)                                        \
	SEC("cgroup/" #hook "4")                                      \
	int socklb_##hook##4(struct bpf_sock_addr *ctx)                 \
	{                                                              \
		struct socklb_svc_key key = {};                        \
		key_from_v4(&key, ctx->user_ip4);                      \
		return do_##hook(ctx, &key, false);                    \
	}                                                              \
	SEC("cgroup/" #hook "6")                                      \
	int socklb_##hook##6(struct bpf_sock_addr *ctx)                 \
	{                                                              \
		struct socklb_svc_key key = {};                        \
		key_from_v6(&key, ctx);                                \
		return do_##hook(ctx, &key, true);                     \
	}

/* recvmsg and getpeername: the peer address as the socket sees it, v4 ones
 * v4-mapped like the keys. */
#define REVERSING_HOOKS(hook, dgram, counter)                                                       \
	SEC("cgroup/" #hook "4")                                                                   \
	int socklb_##hook##4(struct bpf_sock_addr *ctx)                                              \
	{                                                                                           \
		__u32 addr[4] = { 0, 0, bpf_htonl(0xffff), ctx->user_ip4 };                         \
		return do_reverse(ctx, addr, false, dgram, counter);                                \
	}                                                                                           \
	SEC("cgroup/" #hook "6")                                                                   \
	int socklb_##hook##6(struct bpf_sock_addr *ctx)                                              \
	{                                                                                           \
		__u32 addr[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] }; \
		return do_reverse(ctx, addr, true, dgram, counter);                                 \
	}

/* clang-format on */

/* --- connect ------------------------------------------------------------ */

static __always_inline int do_connect(struct bpf_sock_addr *ctx, struct socklb_svc_key *key, bool v6)
{
	struct socklb_svc_val *svc;
	struct choice c;
	__u64 cookie;

	struct socklb_mark *m;

	key->proto = sock_proto(ctx);
	if (!key->proto)
		return SYS_PROCEED;
	key->port = (__u16)ctx->user_port;
	svc = lookup_service(ctx, key);
	if (!svc) {
		/* TCP connects once: nothing to forget, the hot path stays one
		 * lookup.  A UDP socket may have connected through a VIP before. */
		if (key->proto == SOCKLB_PROTO_UDP)
			forget(ctx, key, v6, true, NULL, false);
		return SYS_PROCEED;
	}
	m = fresh_mark(ctx, key, SOCKLB_HOOK_CONNECT, v6);
	if (m) {
		/* key is a backend another socklb program wrote in this call
		 * (a VIP -> VIP chain): translated once, left as it is. */
		forget(ctx, key, v6, key->proto == SOCKLB_PROTO_UDP, m, true);
		return SYS_PROCEED;
	}
	if (!choose(ctx, key, svc, &c)) {
		if (tracing())
			trace(ctx, key, NULL, TRACE_WHAT(SOCKLB_HOOK_CONNECT, SOCKLB_TRACE_NO_BACKEND, v6));
		return refuse();
	}

	/* The socket's cookie: one call for the record and the mark. */
	cookie = bpf_get_socket_cookie(ctx);
	if (!keep_record(ctx, key, &c, cookie))
		count(SOCKLB_CNT_NO_STATE);
	mark(ctx, key, &c.be, SOCKLB_HOOK_CONNECT, v6, cookie);

	write_dst(ctx, &c.be, v6);
	count_hook(SOCKLB_CNT_CONNECT, v6);
	if (tracing())
		trace(ctx, key, &c, TRACE_WHAT(SOCKLB_HOOK_CONNECT, SOCKLB_TRACE_TRANSLATED, v6));
	return SYS_PROCEED;
}

TRANSLATING_HOOKS(connect)

/* --- sendmsg: unconnected UDP ------------------------------------------- */
static __always_inline int do_sendmsg(struct bpf_sock_addr *ctx, struct socklb_svc_key *key, bool v6)
{
	struct socklb_sock_dgram *st;
	struct socklb_sock_entry *e;
	struct socklb_svc_val *svc;
	struct choice c;
	__u32 nflows = flows();
	int i;

	key->proto = sock_proto(ctx);
	if (key->proto != SOCKLB_PROTO_UDP)
		return SYS_PROCEED;
	key->port = (__u16)ctx->user_port;
	svc = lookup_service(ctx, key);
	if (!svc)
		return SYS_PROCEED;
	/* A VIP -> VIP chain: an earlier socklb program of this call
	 * translated the datagram already. */
	if (fresh_mark(ctx, key, SOCKLB_HOOK_SENDMSG, v6))
		return SYS_PROCEED;

	st = bpf_sk_storage_get(&sock_dgram, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		/* No memory for the socket's flows: refuse this datagram (the
		 * application may retry) rather than send it untracked. */
		if (tracing())
			trace(ctx, key, NULL, TRACE_WHAT(SOCKLB_HOOK_SENDMSG, SOCKLB_TRACE_REFUSED, v6));
		count(SOCKLB_CNT_NO_STATE);
		SET_RETVAL(-ENOBUFS);
		return SYS_REJECT;
	}
	/* A fresh value (all zero): the socket's cookie, once. */
	if (!st->cookie)
		st->cookie = bpf_get_socket_cookie(ctx);

	/* A socket keeps its backend for a service while that backend stays
	 * usable: no per-datagram hopping. */
	__u32 cur = current_flow(st, key, nflows);

	asm volatile("" : "+r"(cur));
	if (cur < nflows) {
		e = &st->dgram[cur];
		__u32 id = e->backend_id;
		struct socklb_backend_val *be = NULL;
		bool same_list = e->list_id == svc->list_id && e->svc_id == svc->svc_id;

		/* The service changed since: is the backend still usable? */
		if (!same_list)
			be = bpf_map_lookup_elem(&backends, &id);
		if (same_list ||
		    (be && usable(svc, be) && be->port == e->backend_port && same_addr(be->addr, e->backend))) {
			struct socklb_backend_val b = {};

			__builtin_memcpy(b.addr, e->backend, sizeof(b.addr));
			b.port = e->backend_port;
			if (!same_list)
				e->list_id = svc->list_id;
			used(st, e, cur);
			count(SOCKLB_CNT_STICKY_HIT);
			sent_to(ctx, st, key, &b, v6);
			write_dst(ctx, &b, v6);
			count_hook(SOCKLB_CNT_SENDMSG, v6);
			if (tracing()) {
				c.be = b;
				c.backend_id = id;
				c.retried = 0;
				trace(ctx, key, &c, TRACE_WHAT(SOCKLB_HOOK_SENDMSG, SOCKLB_TRACE_TRANSLATED, v6));
			}
			return SYS_PROCEED;
		}
		/* Its backend went away: keep the entry so that late replies
		 * are still translated, but choose again. */
		e->flags &= ~SOCKLB_ENTRY_CURRENT;
	}

	if (!choose(ctx, key, svc, &c)) {
		if (tracing())
			trace(ctx, key, NULL, TRACE_WHAT(SOCKLB_HOOK_SENDMSG, SOCKLB_TRACE_NO_BACKEND, v6));
		return refuse();
	}

	/* Reuse an entry for the same backend, else take the next one round
	 * robin: the oldest flow's, once every entry is taken (an eviction:
	 * that flow's late replies are no longer shown as from its VIP). */
	__u32 slot = nflows;
	for (i = 0; i < SOCKLB_MAX_UDP_FLOWS; i++) {
		if (i >= nflows)
			break;
		e = &st->dgram[i];
		if (e->vip_port == key->port && e->backend_port == c.be.port && same_addr(e->vip, key->addr) &&
		    same_addr(e->backend, c.be.addr)) {
			slot = i;
			break;
		}
	}
	if (slot >= nflows && nflows) {
		slot = st->next % nflows;
		st->next++;
		/* the verifier does not derive slot < nflows from the modulo */
		asm volatile("" : "+r"(slot));
		if (slot < nflows && st->dgram[slot].vip_port)
			count(SOCKLB_CNT_UDP_EVICTED);
	}
	if (slot < nflows) {
		remember(&st->dgram[slot], key, &c, SOCKLB_ENTRY_CURRENT);
		st->dgram[slot].last_used = ++st->clock;
		st->recent = slot;
	}
	sent_to(ctx, st, key, &c.be, v6);

	write_dst(ctx, &c.be, v6);
	count_hook(SOCKLB_CNT_SENDMSG, v6);
	if (tracing())
		trace(ctx, key, &c, TRACE_WHAT(SOCKLB_HOOK_SENDMSG, SOCKLB_TRACE_TRANSLATED, v6));
	return SYS_PROCEED;
}

TRANSLATING_HOOKS(sendmsg)

/* --- recvmsg and getpeername: show the VIP ------------------------------ */

static __always_inline int do_reverse(struct bpf_sock_addr *ctx, const __u32 *addr, bool v6, bool dgram, __u32 counter)
{
	struct socklb_sock_entry *conn, *e;
	struct socklb_sock_dgram *st;
	__u16 port = (__u16)ctx->user_port;
	int i;

	if (!dgram && TCP_BY_COOKIE && ctx->protocol == IPPROTO_TCP) {
		__u64 cookie = bpf_get_socket_cookie(ctx);
		struct socklb_sock_slot *slot = tcp_slot(cookie);

		if (slot && slot->cookie == cookie && from_backend(&slot->e, addr, port)) {
			reverse(ctx, &slot->e, v6);
			count_hook(counter, v6);
			return SYS_PROCEED;
		}
	}
	if (!dgram) {
		conn = bpf_sk_storage_get(&sock_conn, ctx->sk, 0, 0);
		if (conn && from_backend(conn, addr, port)) {
			reverse(ctx, conn, v6);
			count_hook(counter, v6);
		} else if (!conn && ctx->protocol == PROTO_MPTCP && reverse_mptcp(ctx, addr, port, v6)) {
			count_hook(counter, v6);
		}
		return SYS_PROCEED;
	}
	/* recvmsg: the connect record speaks for replies only while the socket
	 * is still connected and no later sendto() took its backend over.  A
	 * socket with flows knows whether it may have one (no_conn, had_conn). */
	st = bpf_sk_storage_get(&sock_dgram, ctx->sk, 0, 0);
	if (!st || !st->no_conn || st->had_conn) {
		conn = bpf_sk_storage_get(&sock_conn, ctx->sk, 0, 0);
		if (conn && ctx->sk->state != TCP_ESTABLISHED) {
			bpf_sk_storage_delete(&sock_conn, ctx->sk);
			conn = NULL;
		}
		if (st && conn)
			st->had_conn = 1;
		if (conn && (conn->flags & SOCKLB_ENTRY_CURRENT) && from_backend(conn, addr, port)) {
			reverse(ctx, conn, v6);
			count_hook(counter, v6);
			return SYS_PROCEED;
		}
	}
	if (!st)
		return SYS_PROCEED;
	__u32 nflows = flows();
	__u32 r = st->recent;

	/* The flow of the last datagram: the most recent by definition. */
	asm volatile("" : "+r"(r));
	if (r < nflows && from_backend(&st->dgram[r], addr, port)) {
		reverse(ctx, &st->dgram[r], v6);
		count_hook(counter, v6);
		return SYS_PROCEED;
	}
	/* Several services of one socket may share a backend address: the
	 * reply belongs to the one this socket sent to most recently.  The
	 * winner is copied rather than indexed afterwards: an index would be a
	 * value the verifier tracks per path, one more path per entry. */
	struct socklb_sock_entry best = {};
	bool found = false;

	for (i = 0; i < SOCKLB_MAX_UDP_FLOWS; i++) {
		if (i >= nflows)
			break;
		e = &st->dgram[i];
		if (from_backend(e, addr, port) && (!found || e->last_used - best.last_used < 0x80000000u)) {
			best = *e;
			found = true;
		}
	}
	if (found) {
		reverse(ctx, &best, v6);
		count_hook(counter, v6);
	}
	return SYS_PROCEED;
}

REVERSING_HOOKS(recvmsg, true, SOCKLB_CNT_RECVMSG)

REVERSING_HOOKS(getpeername, false, SOCKLB_CNT_GETPEERNAME)

/* --- sock_release: a TCP socket's record goes with it ---------------------- */

/* Runs when the application closes a socket of the cgroup (not for kernel
 * sockets, which is why MPTCP subflows keep their records in socket-local
 * storage).  Every TCP socket but listeners: one whose connect() failed has
 * lost its destination by now.  The record is cleared before the slot is
 * given back. */
SEC("cgroup/sock_release")
int socklb_sock_release(struct bpf_sock *sk)
{
	struct socklb_sock_slot *slot;
	__u64 cookie;

	if (!TCP_BY_COOKIE || sk->protocol != IPPROTO_TCP || sk->state == 10 /* TCP_LISTEN */)
		return SYS_PROCEED;
	cookie = bpf_get_socket_cookie(sk);
	slot = tcp_slot(cookie);
	if (slot && slot->cookie == cookie) {
		slot->e.vip_port = 0;
		slot->e.backend_id = 0;
		__sync_val_compare_and_swap(&slot->cookie, cookie, 0);
	}
	return SYS_PROCEED;
}

/* --- post_bind: nothing squats a NodePort (do_post_bind: bpf/frontend.h) -- */

SEC("cgroup/post_bind4")
int socklb_post_bind4(struct bpf_sock *sk)
{
	struct socklb_svc_key key = {};

	key_from_v4(&key, sk->src_ip4);
	return do_post_bind(sk, &key, false);
}

SEC("cgroup/post_bind6")
int socklb_post_bind6(struct bpf_sock *sk)
{
	struct socklb_svc_key key = {};

	key.addr[0] = sk->src_ip6[0];
	key.addr[1] = sk->src_ip6[1];
	key.addr[2] = sk->src_ip6[2];
	key.addr[3] = sk->src_ip6[3];
	return do_post_bind(sk, &key, true);
}

/* --- scopes: sockets socklb leaves alone -------------------------------- */

/* Programs attached on their own, not with the set above (the loader keeps
 * them apart by name prefix):
 *
 *   exclude_*   on a cgroup excluded from an attachment above it: every
 *               connect()/sendmsg() of its sockets is left untranslated;
 *   hostonly_*  on an attachment of scope "host-netns-only", attached before
 *               the balancer's programs there: the sockets of other network
 *               namespaces than the node's are left untranslated.
 *
 * With several programs on a hook (bpf_links are always multi-attach) a
 * program cannot stop the next one from running, so they leave a mark
 * instead, as if they had translated the destination to itself: the socklb
 * programs that run later in this system call (the child cgroup's first, then
 * its ancestors') find the mark (fresh_mark) and let the socket be. */
static __always_inline int leave_alone(struct bpf_sock_addr *ctx, struct socklb_svc_key *key, __u16 hook, bool v6)
{
	struct socklb_backend_val self = {};

	if (!sock_proto(ctx))
		return SYS_PROCEED;
	key->port = (__u16)ctx->user_port;
	__builtin_memcpy(self.addr, key->addr, sizeof(self.addr));
	self.port = key->port;
	set_mark(ctx, key, &self, hook, v6);
	return SYS_PROCEED;
}

static __always_inline int host_only(struct bpf_sock_addr *ctx, struct socklb_svc_key *key, __u16 hook, bool v6)
{
	__u64 node = node_netns();

	if (node && bpf_get_netns_cookie(ctx) == node)
		return SYS_PROCEED;
	return leave_alone(ctx, key, hook, v6);
}

/* clang-format off */
#define GATE_HOOKS(prefix, hook, HOOK, fn)                               \
	SEC("cgroup/" #hook "4")                                        \
	int prefix##_##hook##4(struct bpf_sock_addr *ctx)                 \
	{                                                                \
		struct socklb_svc_key key = {};                          \
		key_from_v4(&key, ctx->user_ip4);                        \
		return fn(ctx, &key, HOOK, false);                       \
	}                                                                \
	SEC("cgroup/" #hook "6")                                        \
	int prefix##_##hook##6(struct bpf_sock_addr *ctx)                 \
	{                                                                \
		struct socklb_svc_key key = {};                          \
		key_from_v6(&key, ctx);                                  \
		return fn(ctx, &key, HOOK, true);                        \
	}
/* clang-format on */

GATE_HOOKS(exclude, connect, SOCKLB_HOOK_CONNECT, leave_alone)
GATE_HOOKS(exclude, sendmsg, SOCKLB_HOOK_SENDMSG, leave_alone)
GATE_HOOKS(hostonly, connect, SOCKLB_HOOK_CONNECT, host_only)
GATE_HOOKS(hostonly, sendmsg, SOCKLB_HOOK_SENDMSG, host_only)

char LICENSE[] SEC("license") = "Dual BSD/GPL";
