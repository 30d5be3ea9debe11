/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Per-socket state: the record of a translation (remember, keep_record),
 * the mark that makes a socket translated once per system call (mark,
 * fresh_mark, forget), an unconnected UDP socket's flows, and reading a
 * record back to show the VIP (reverse).
 */
#pragma once

/* --- records: what a translation remembers ----------------------------- */

static __always_inline void remember(struct socklb_sock_entry *e, const struct socklb_svc_key *key,
				     const struct choice *c, __u32 flags)
{
	e->vip[0] = key->addr[0];
	e->vip[1] = key->addr[1];
	e->vip[2] = key->addr[2];
	e->vip[3] = key->addr[3];
	e->vip_port = key->port;
	e->backend[0] = c->be.addr[0];
	e->backend[1] = c->be.addr[1];
	e->backend[2] = c->be.addr[2];
	e->backend[3] = c->be.addr[3];
	e->backend_port = c->be.port;
	e->backend_id = c->backend_id;
	e->svc_id = c->svc.svc_id;
	e->list_id = c->svc.list_id;
	e->flags = flags;
}

/* --- marks: one translation per system call ---------------------------- */

struct sock_snap {
	__u32 peer[4];
	__u32 src_port;
	__u32 state;
	__u16 peer_port;
};

/* The socket as the kernel holds it before this system call changes it:
 * programs of one call see the same; a later call on a socket that connected
 * in between sees another. */
static __always_inline void snap(const struct bpf_sock_addr *ctx, bool v6, struct sock_snap *s)
{
	struct bpf_sock *sk = ctx->sk;

	if (v6) {
		s->peer[0] = sk->dst_ip6[0];
		s->peer[1] = sk->dst_ip6[1];
		s->peer[2] = sk->dst_ip6[2];
		s->peer[3] = sk->dst_ip6[3];
	} else {
		s->peer[0] = 0;
		s->peer[1] = 0;
		s->peer[2] = 0;
		s->peer[3] = sk->dst_ip4;
	}
	s->peer_port = (__u16)sk->dst_port;
	s->src_port = sk->src_port;
	s->state = sk->state;
}

/* The mark of a translation made earlier in this system call, by any socklb
 * program, to the destination the socket now has; NULL if there is none. */
static __always_inline struct socklb_mark *fresh_mark(struct bpf_sock_addr *ctx, const struct socklb_svc_key *key,
						      __u16 hook, bool v6)
{
	__u32 zero = 0;
	struct socklb_mark *m = bpf_map_lookup_elem(&socklb_mark2, &zero);
	struct sock_snap s;

	/* Cheap tests first: outside a chain of attachments the destination
	 * is never the address the last translation wrote. */
	if (!m || m->hook != hook || m->port != key->port || !same_addr(m->addr, key->addr))
		return NULL;
	if (bpf_jiffies64() - m->when_jiffies > SOCKLB_MARK_WINDOW_JIFFIES)
		return NULL;
	if (m->cookie != bpf_get_socket_cookie(ctx))
		return NULL;
	snap(ctx, v6, &s);
	if (m->state != s.state || m->src_port != s.src_port || m->peer_port != s.peer_port ||
	    !same_addr(m->peer, s.peer))
		return NULL;
	return m;
}

static __always_inline void mark(struct bpf_sock_addr *ctx, const struct socklb_svc_key *key,
				 const struct socklb_backend_val *be, __u16 hook, bool v6, __u64 cookie)
{
	__u32 zero = 0;
	struct socklb_mark *m = bpf_map_lookup_elem(&socklb_mark2, &zero);
	struct sock_snap s;

	if (!m)
		return;
	snap(ctx, v6, &s);
	m->cookie = cookie;
	m->when_jiffies = bpf_jiffies64();
	__builtin_memcpy(m->vip, key->addr, sizeof(m->vip));
	__builtin_memcpy(m->addr, be->addr, sizeof(m->addr));
	__builtin_memcpy(m->peer, s.peer, sizeof(m->peer));
	m->vip_port = key->port;
	m->port = be->port;
	m->peer_port = s.peer_port;
	m->hook = hook;
	m->src_port = s.src_port;
	m->state = s.state;
}

static __always_inline void set_mark(struct bpf_sock_addr *ctx, const struct socklb_svc_key *key,
				     const struct socklb_backend_val *be, __u16 hook, bool v6)
{
	mark(ctx, key, be, hook, v6, bpf_get_socket_cookie(ctx));
}

/* This balancer's own record of the translation the mark describes (it is
 * attached at two levels and translated at the lower one)? */
static __always_inline bool is_mine(const struct socklb_sock_entry *conn, const struct socklb_mark *m)
{
	return conn->vip_port == m->vip_port && conn->backend_port == m->port && same_addr(conn->vip, m->vip) &&
	       same_addr(conn->backend, m->addr);
}

/* A connect() this balancer does not translate: what the socket remembers
 * from an earlier connect() or sendto() no longer applies (a UDP socket
 * reconnects to another address).  Kept when this balancer made the mark in
 * this very call. */
static __always_inline void forget(struct bpf_sock_addr *ctx, const struct socklb_svc_key *key, bool v6, bool udp,
				   struct socklb_mark *m, bool have_mark)
{
	struct socklb_sock_entry *conn = bpf_sk_storage_get(&sock_conn, ctx->sk, 0, 0);

	if (conn) {
		if (!have_mark)
			m = fresh_mark(ctx, key, SOCKLB_HOOK_CONNECT, v6);
		if (m && is_mine(conn, m))
			return;
		bpf_sk_storage_delete(&sock_conn, ctx->sk);
	}
	if (udp)
		bpf_sk_storage_delete(&sock_dgram, ctx->sk);
}

/* --- connect: the socket's record --------------------------------------- */

/* Remember what was dialled, for getpeername(), termination and, on
 * connected UDP sockets, the source of replies read with recvfrom().  A TCP
 * socket's record goes to its slot of sock_tcp (see socklb_sock_slot) unless
 * another open socket holds the slot (counted) or the socket is an MPTCP
 * subflow; everything else to socket-local storage, freed with the socket.
 * False: no memory for it anywhere. */
static __always_inline bool keep_record(struct bpf_sock_addr *ctx, const struct socklb_svc_key *key,
					const struct choice *c, __u64 cookie)
{
	struct socklb_sock_entry *conn;

	if (TCP_BY_COOKIE && key->proto == SOCKLB_PROTO_TCP && !bpf_skc_to_mptcp_sock(ctx->sk)) {
		struct socklb_sock_slot *slot = tcp_slot(cookie);

		/* A socket that connects again (after a failed connect())
		 * holds its slot already. */
		if (slot && (slot->cookie == cookie || __sync_val_compare_and_swap(&slot->cookie, 0, cookie) == 0)) {
			remember(&slot->e, key, c, SOCKLB_ENTRY_CURRENT);
			return true;
		}
		count(SOCKLB_CNT_SOCK_TCP_FULL);
	}
	conn = bpf_sk_storage_get(&sock_conn, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!conn)
		return false;
	remember(conn, key, c, SOCKLB_ENTRY_CURRENT);
	if (key->proto == SOCKLB_PROTO_UDP) {
		/* Its datagrams look the record up from now on. */
		struct socklb_sock_dgram *st = bpf_sk_storage_get(&sock_dgram, ctx->sk, 0, 0);

		if (st)
			st->had_conn = 1;
	}
	return true;
}

/* --- sendmsg: an unconnected UDP socket's flows --------------------------- */

/* A datagram to a service goes to be: replies from be answer it, not an
 * earlier connect() of the socket to a service with the same backend; and a
 * socket disconnected since (connect(AF_UNSPEC)) has no connect record. */
static __always_inline void sent_to(struct bpf_sock_addr *ctx, struct socklb_sock_dgram *st,
				    const struct socklb_svc_key *key, const struct socklb_backend_val *be, bool v6)
{
	struct socklb_sock_entry *conn;

	/* Most sockets never connect()ed through a service: no lookup. */
	if (!st->no_conn || st->had_conn) {
		conn = bpf_sk_storage_get(&sock_conn, ctx->sk, 0, 0);
		if (conn && ctx->sk->state != TCP_ESTABLISHED) {
			bpf_sk_storage_delete(&sock_conn, ctx->sk);
			conn = NULL;
		}
		if (conn && conn->backend_port == be->port && same_addr(conn->backend, be->addr))
			conn->flags &= ~SOCKLB_ENTRY_CURRENT;
		if (conn)
			st->had_conn = 1;
		else if (!st->had_conn)
			st->no_conn = 1;
	}
	mark(ctx, key, be, SOCKLB_HOOK_SENDMSG, v6, st->cookie);
}

/* The socket's flow for the service of key (the entry its datagrams to the
 * VIP go through), or nflows: the entry of the last datagram first, the
 * others only when it is another service's.  At most one entry per VIP is
 * current. */
static __always_inline __u32 current_flow(struct socklb_sock_dgram *st, const struct socklb_svc_key *key, __u32 nflows)
{
	struct socklb_sock_entry *e;
	__u32 r = st->recent;
	int i;

	/* the verifier does not know st->recent, compare it explicitly */
	asm volatile("" : "+r"(r));
	if (r < nflows) {
		e = &st->dgram[r];
		if ((e->flags & SOCKLB_ENTRY_CURRENT) && e->vip_port == key->port && same_addr(e->vip, key->addr))
			return r;
	}
	for (i = 0; i < SOCKLB_MAX_UDP_FLOWS; i++) {
		if (i >= nflows)
			break;
		e = &st->dgram[i];
		if ((e->flags & SOCKLB_ENTRY_CURRENT) && e->vip_port == key->port && same_addr(e->vip, key->addr))
			return i;
	}
	return nflows;
}

/* A datagram went through entry i: it is the socket's most recent flow.
 * Nothing is written when it already is. */
static __always_inline void used(struct socklb_sock_dgram *st, struct socklb_sock_entry *e, __u32 i)
{
	if (st->recent == i && e->last_used == st->clock)
		return;
	e->last_used = ++st->clock;
	st->recent = i;
}

/* --- recvmsg and getpeername: a record read back ------------------------- */

static __always_inline void reverse(struct bpf_sock_addr *ctx, const struct socklb_sock_entry *e, bool v6)
{
	if (v6) {
		ctx->user_ip6[0] = e->vip[0];
		ctx->user_ip6[1] = e->vip[1];
		ctx->user_ip6[2] = e->vip[2];
		ctx->user_ip6[3] = e->vip[3];
	} else {
		ctx->user_ip4 = e->vip[3];
	}
	ctx->user_port = e->vip_port;
}

static __always_inline bool from_backend(const struct socklb_sock_entry *e, const __u32 *addr, __u16 port)
{
	return e->vip_port && e->backend_port == port && same_addr(e->backend, addr);
}

#define PROTO_MPTCP 262 /* IPPROTO_MPTCP */

/* An MPTCP socket is translated through its first subflow, the TCP socket
 * the kernel connects for it (the connect hooks run on the subflow), so the
 * record is the subflow's: find it by its 4-tuple, from the backend to us. */
static __always_inline bool reverse_mptcp(struct bpf_sock_addr *ctx, const __u32 *addr, __u16 port, bool v6)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk = ctx->sk, *sf;
	struct socklb_sock_entry *conn;
	bool done = false;

	/* A v4-mapped peer means the subflow is hashed as IPv4. */
	if (!v6 || (addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0xffff))) {
		t.ipv4.saddr = addr[3];
		t.ipv4.daddr = v6 ? sk->src_ip6[3] : sk->src_ip4;
		t.ipv4.sport = port;
		t.ipv4.dport = bpf_htons((__u16)sk->src_port);
		sf = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	} else {
		t.ipv6.saddr[0] = addr[0];
		t.ipv6.saddr[1] = addr[1];
		t.ipv6.saddr[2] = addr[2];
		t.ipv6.saddr[3] = addr[3];
		t.ipv6.daddr[0] = sk->src_ip6[0];
		t.ipv6.daddr[1] = sk->src_ip6[1];
		t.ipv6.daddr[2] = sk->src_ip6[2];
		t.ipv6.daddr[3] = sk->src_ip6[3];
		t.ipv6.sport = port;
		t.ipv6.dport = bpf_htons((__u16)sk->src_port);
		sf = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
	}
	if (!sf)
		return false;
	conn = bpf_sk_storage_get(&sock_conn, sf, 0, 0);
	if (conn && from_backend(conn, addr, port)) {
		reverse(ctx, conn, v6);
		done = true;
	}
	bpf_sk_release(sf);
	return done;
}
