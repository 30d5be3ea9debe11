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

/* Set by the loader before load. */
const volatile __u32 maglev_size = 1;
/* TCP records go to sock_tcp, keyed by socket cookie and deleted by
 * socklb_sock_release (the kernel has cgroup/sock_release with the cookie
 * helper and bpf_skc_to_mptcp_sock); 0: to socket-local storage. */
const volatile __u32 tcp_by_cookie = 0;
/* The object built for kernels before 5.18 (-DSOCKLB_NO_SET_RETVAL) leaves
 * the cookie table out altogether: its compare-and-swap (BPF_ATOMIC
 * cmpxchg) is Linux 5.12 and bpf_skc_to_mptcp_sock() 5.19, and a 5.10
 * verifier rejects both even behind a constant-false branch ("BPF_STX uses
 * reserved fields").  TCP records then live in socket-local storage. */
#ifdef SOCKLB_NO_SET_RETVAL
#define TCP_BY_COOKIE 0
#else
#define TCP_BY_COOKIE tcp_by_cookie
#endif
/* Entries of each socket's sock_dgram value (the loader sizes the map to it). */
const volatile __u32 udp_flows = SOCKLB_DEFAULT_UDP_FLOWS;

/* udp_flows as the loops and indexes use it: read-only data, so the
 * verifier knows the value and checks every entry access against the map's
 * value size. */
static __always_inline __u32 flows(void)
{
	__u32 n = udp_flows;

	return n < SOCKLB_MAX_UDP_FLOWS ? n : SOCKLB_MAX_UDP_FLOWS;
}

/* A hash map whose entries are allocated as used and whose size the loader
 * sets from the limits (spec.py); max_entries here is a placeholder. */
#define SIZED_HASH(name, key_type, value_type)          \
	struct {                                        \
		__uint(type, BPF_MAP_TYPE_HASH);        \
		__uint(map_flags, BPF_F_NO_PREALLOC);   \
		__uint(max_entries, 1);                 \
		__type(key, key_type);                  \
		__type(value, value_type);              \
	} name SEC(".maps")

/* (VIP, port, protocol) -> how to pick a backend */
SIZED_HASH(services, struct socklb_svc_key, struct socklb_svc_val);
/* (list, index) -> a backend of one version of a service */
SIZED_HASH(slots, struct socklb_slot_key, struct socklb_slot_val);
/* backend id -> address */
SIZED_HASH(backends, __u32, struct socklb_backend_val);

/* list_id -> __u32[maglev_size] backend ids; the loader sets value_size. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1); /* sized by the loader (spec.py) */
	__uint(key_size, 4);
	__uint(value_size, 4);
} maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1); /* sized by the loader (spec.py) */
	__type(key, struct socklb_affinity_key);
	__type(value, struct socklb_affinity_val);
} affinity SEC(".maps");

/* sock_conn, sock_dgram (socket-local storage) and sock_tcp (by cookie):
 * per-socket translations. */
#include "socklb_sock_conn.bpf.h"

/* Control-plane state kept with pinned maps; the programs never read them. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct socklb_meta);
} meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCKLB_MAX_ATTACHMENTS);
	__type(key, __u64);
	__type(value, struct socklb_attach_info);
} attachments SEC(".maps");

/* Shared by every socklb balancer on the machine: the loader reuses the
 * existing map (see socklb_maps.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct socklb_mark);
} socklb_mark2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SOCKLB_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* selections: backend id -> times the datapath chose it (per CPU).  Entries
 * are made by the datapath the first time a backend is chosen and deleted by
 * the control plane with the backend; sized like backends by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1); /* sized by the loader (spec.py) */
	__type(key, __u32);
	__type(value, __u64);
} selections SEC(".maps");

/* Tracing: see struct socklb_trace_ctl. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct socklb_trace_ctl);
} trace_ctl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SOCKLB_TRACE_RING_BYTES);
} trace_events SEC(".maps");

/* Wildcard frontends (NodePort, HostPort on every address): see
 * SOCKLB_SVC_O_NODE_PORT. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCKLB_MAX_NODE_ADDRS);
	__uint(key_size, 16);
	__type(value, __u32);
} node_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SOCKLB_WILD_PORT_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} wild_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct socklb_node_cfg);
} node_cfg SEC(".maps");

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

#define SYS_REJECT 0
#define SYS_PROCEED 1

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);

	if (c)
		*c += 1;
}

/* A translation by hook: one counter update, the v6 programs' in their own
 * slot (v6 is a constant in each program); stats.read_counters adds the v6
 * slot to the hook's total. */
static __always_inline void count_hook(__u32 which, bool v6)
{
	count(v6 ? which + SOCKLB_CNT_V6 : which);
}

/* One more choice of backend id: a lookup on the hot path; the first choice
 * of a backend inserts its entry (another CPU may insert it first: then the
 * entry is there to count in). */
static __always_inline void count_selection(__u32 id)
{
	__u64 *n = bpf_map_lookup_elem(&selections, &id);
	__u64 one = 1;

	if (n) {
		*n += 1;
		return;
	}
	if (bpf_map_update_elem(&selections, &id, &one, BPF_NOEXIST) == 0)
		return;
	n = bpf_map_lookup_elem(&selections, &id);
	if (n)
		*n += 1;
}

/* The errno a rejected call returns.  bpf_set_retval() is Linux 5.18: the
 * loader picks the object built with -DSOCKLB_NO_SET_RETVAL on older
 * kernels, where a rejected connect()/sendmsg() fails with the kernel's
 * EPERM instead (features.py, README "Kernels").  Every use of the helper
 * goes through this macro. */
#ifdef SOCKLB_NO_SET_RETVAL
#define SET_RETVAL(err) ((void)0)
#else
#define SET_RETVAL(err) bpf_set_retval(err)
#endif

/* Refuse with ECONNREFUSED, what kube-proxy's REJECT gives for a service
 * without endpoints; a bare "return 0" would surface as EPERM (which is
 * what a kernel without bpf_set_retval gives). */
static __always_inline int refuse(void)
{
	count(SOCKLB_CNT_NO_BACKEND);
	SET_RETVAL(-ECONNREFUSED);
	return SYS_REJECT;
}

static __always_inline __u8 sock_proto(const struct bpf_sock_addr *ctx)
{
	if (ctx->type == 1 /* SOCK_STREAM */ && ctx->protocol == IPPROTO_TCP)
		return SOCKLB_PROTO_TCP;
	if (ctx->type == 2 /* SOCK_DGRAM */ && ctx->protocol == IPPROTO_UDP)
		return SOCKLB_PROTO_UDP;
	return 0;
}

/* Fill key->addr from the context; returns 0 if the address cannot be a
 * service (an IPv6 socket's v4-mapped destination maps to the IPv4 key). */
static __always_inline void key_from_v4(struct socklb_svc_key *key, __u32 ip4)
{
	key->addr[0] = 0;
	key->addr[1] = 0;
	key->addr[2] = bpf_htonl(0xffff);
	key->addr[3] = ip4;
}

static __always_inline void key_from_v6(struct socklb_svc_key *key, const struct bpf_sock_addr *ctx)
{
	key->addr[0] = ctx->user_ip6[0];
	key->addr[1] = ctx->user_ip6[1];
	key->addr[2] = ctx->user_ip6[2];
	key->addr[3] = ctx->user_ip6[3];
}

/* --- frontends: the exact key, then the wildcard one ------------------- */

static __always_inline bool is_v4_mapped(const __u32 *addr)
{
	return addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0xffff);
}

static __always_inline bool is_loopback(const __u32 *addr)
{
	if (is_v4_mapped(addr))
		return (bpf_ntohl(addr[3]) >> 24) == 127;
	return addr[0] == 0 && addr[1] == 0 && addr[2] == 0 && addr[3] == bpf_htonl(1);
}

/* Whether some wildcard frontend has this port (network order): an inlined
 * array lookup, so that a destination that is no service stays cheap. */
static __always_inline bool wild_port(__u16 port)
{
	__u32 p = bpf_ntohs(port);
	__u32 word = p >> 6;
	__u64 *bits = bpf_map_lookup_elem(&wild_ports, &word);

	return bits && (*bits >> (p & 63)) & 1;
}

/* The node's network namespace, as the balancer was told (0: unknown). */
static __always_inline __u64 node_netns(void)
{
	__u32 zero = 0;
	struct socklb_node_cfg *cfg = bpf_map_lookup_elem(&node_cfg, &zero);

	return cfg ? cfg->netns_cookie : 0;
}

/* The wildcard key of key's family and port. */
static __always_inline void wildcard_key(struct socklb_svc_key *wk, const struct socklb_svc_key *key)
{
	wk->addr[0] = 0;
	wk->addr[1] = 0;
	wk->addr[2] = is_v4_mapped(key->addr) ? bpf_htonl(0xffff) : 0;
	wk->addr[3] = 0;
	wk->port = key->port;
	wk->proto = key->proto;
	wk->pad = 0;
}

/* A destination that is not a service itself: the wildcard frontend of its
 * port when it is one of the node's addresses, or loopback dialled from the
 * node's own network namespace.  Only reached after the exact lookup missed. */
static __noinline struct socklb_svc_val *lookup_wildcard(struct bpf_sock_addr *ctx, const struct socklb_svc_key *key)
{
	struct socklb_svc_key wk;
	struct socklb_svc_val *svc;
	__u64 node;

	wildcard_key(&wk, key);
	svc = bpf_map_lookup_elem(&services, &wk);
	if (!svc)
		return NULL;
	if (bpf_map_lookup_elem(&node_addrs, key->addr))
		return svc;
	if (is_loopback(key->addr)) {
		node = node_netns();
		if (node && bpf_get_netns_cookie(ctx) == node)
			return svc;
	}
	return NULL;
}

/* The service a destination reaches: its exact key, else (NodePort,
 * HostPort) the wildcard frontend of its port. */
static __always_inline struct socklb_svc_val *lookup_service(struct bpf_sock_addr *ctx,
							     const struct socklb_svc_key *key)
{
	struct socklb_svc_val *svc = bpf_map_lookup_elem(&services, key);

	if (svc || !wild_port(key->port))
		return svc;
	return lookup_wildcard(ctx, key);
}

static __always_inline bool usable(const struct socklb_svc_val *svc, const struct socklb_backend_val *be)
{
	if (be->svc_id != svc->svc_id)
		return false;
	if (be->state == SOCKLB_STATE_ACTIVE)
		return true;
	return be->state == SOCKLB_STATE_TERMINATING && (svc->flags & SOCKLB_SVC_F_FALLBACK);
}

/* 64-bit finalizer (splitmix64) so that consecutive socket cookies spread
 * over the maglev table. */
static __always_inline __u32 mix64(__u64 x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return (__u32)x;
}

/* Scale a 32-bit random number to [0, n) without a division. */
static __always_inline __u32 scale(__u32 r, __u32 n)
{
	return (__u32)(((__u64)r * n) >> 32);
}

/* The address a pick of slot takes from the slot itself (see
 * socklb_slot_val); false if it has none (then the backends map has it). */
static __always_inline bool slot_addr(const struct socklb_slot_val *slot, struct socklb_backend_val *be)
{
	if (!slot->port)
		return false;
	be->addr[0] = slot->addr[0];
	be->addr[1] = slot->addr[1];
	be->addr[2] = slot->addr[2];
	be->addr[3] = slot->addr[3];
	be->port = slot->port;
	return true;
}

/* Pick a backend id from the service's current list, or 0 if the list is
 * empty or was replaced under us (the caller re-reads the service).  *known:
 * be holds its address and port (a random pick, or a weighted one that kept
 * the slot's own backend), else the caller looks the backend up. */
static __always_inline __u32 pick_from_list(const struct socklb_svc_val *svc, __u64 cookie,
					    struct socklb_backend_val *be, bool *known)
{
	struct socklb_slot_key sk = { .list_id = svc->list_id };
	struct socklb_slot_val *slot;
	__u32 n = svc->count;

	*known = false;
	if (n == 0)
		return 0;

	if (svc->algo == SOCKLB_ALGO_MAGLEV) {
		__u32 lid = svc->list_id;
		__u32 *table = bpf_map_lookup_elem(&maglev, &lid);
		__u32 m = maglev_size;
		__u32 i;

		if (!table || m == 0)
			return 0;
		i = mix64(cookie) % m;
		/* maglev_size is read-only data the verifier knows, but it
		 * does not derive i < m from the modulo: compare explicitly,
		 * and keep clang from folding the comparison away. */
		asm volatile("" : "+r"(i));
		if (i >= m)
			return 0;
		return table[i];
	}

	if (svc->algo == SOCKLB_ALGO_WEIGHTED) {
		/* The alias table: one draw picks the slot (high half of r * n)
		 * and, from the low half, the slot's backend or its alias; the
		 * low half is uniform over [0, 2^32) to within n / 2^32. */
		__u64 x = (__u64)bpf_get_prandom_u32() * n;

		sk.index = (__u32)(x >> 32);
		slot = bpf_map_lookup_elem(&slots, &sk);
		if (!slot)
			return 0;
		if ((__u32)x < slot->keep || slot->alias_id == slot->backend_id) {
			*known = slot_addr(slot, be);
			return slot->backend_id;
		}
		return slot->alias_id;
	}
	sk.index = scale(bpf_get_prandom_u32(), n);
	slot = bpf_map_lookup_elem(&slots, &sk);
	if (!slot)
		return 0;
	*known = slot_addr(slot, be);
	return slot->backend_id;
}

struct choice {
	struct socklb_svc_val svc;
	struct socklb_backend_val be;
	__u32 backend_id;
	__u8 retried;
};

/* Choose a backend for a socket: affinity first (if the service asks for it),
 * then the service's algorithm.  Returns false when there is no backend. */
static __always_inline bool choose(struct bpf_sock_addr *ctx, const struct socklb_svc_key *key,
				   struct socklb_svc_val *svc, struct choice *out)
{
	struct socklb_affinity_key ak = {};
	struct socklb_affinity_val *av = NULL;
	struct socklb_backend_val *be;
	__u64 now = 0, cookie = 0;
	bool known;
	__u32 id;

	out->retried = 0;
	/* Two rounds: a concurrent update may delete the list we read between
	 * our lookups; the service we read again then points to the new one. */
	for (int round = 0; round < 2; round++) {
		if (round)
			svc = lookup_service(ctx, key);
		if (!svc)
			return false;
		out->svc = *svc;

		if (out->svc.flags & SOCKLB_SVC_F_AFFINITY) {
			ak.netns_cookie = bpf_get_netns_cookie(ctx);
			ak.svc_id = out->svc.svc_id;
			now = bpf_ktime_get_ns();
			av = bpf_map_lookup_elem(&affinity, &ak);
			if (av && now - av->last_used_ns < (__u64)out->svc.affinity_timeout * 1000000000ULL) {
				id = av->backend_id;
				be = bpf_map_lookup_elem(&backends, &id);
				if (be && usable(&out->svc, be)) {
					av->last_used_ns = now;
					out->be = *be;
					out->backend_id = id;
					count(SOCKLB_CNT_AFFINITY_HIT);
					count_selection(id);
					return true;
				}
			}
		}

		if (out->svc.algo == SOCKLB_ALGO_MAGLEV && !cookie)
			cookie = bpf_get_socket_cookie(ctx);
		id = pick_from_list(&out->svc, cookie, &out->be, &known);
		be = NULL;
		if (id && !known) {
			be = bpf_map_lookup_elem(&backends, &id);
			if (be)
				out->be = *be;
		}
		if (id && (known || be)) {
			out->backend_id = id;
			if (out->svc.flags & SOCKLB_SVC_F_AFFINITY) {
				struct socklb_affinity_val nv = {
					.last_used_ns = now,
					.backend_id = id,
				};

				bpf_map_update_elem(&affinity, &ak, &nv, BPF_ANY);
			}
			count_selection(id);
			return true;
		}
		if (out->svc.count == 0)
			return false;
		count(SOCKLB_CNT_RETRY);
		out->retried = 1;
	}
	return false;
}

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

static __always_inline bool same_addr(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline void write_v4(struct bpf_sock_addr *ctx, const struct socklb_backend_val *be)
{
	ctx->user_ip4 = be->addr[3];
	ctx->user_port = be->port;
}

static __always_inline void write_v6(struct bpf_sock_addr *ctx, const struct socklb_backend_val *be)
{
	ctx->user_ip6[0] = be->addr[0];
	ctx->user_ip6[1] = be->addr[1];
	ctx->user_ip6[2] = be->addr[2];
	ctx->user_ip6[3] = be->addr[3];
	ctx->user_port = be->port;
}

static __always_inline void write_dst(struct bpf_sock_addr *ctx, const struct socklb_backend_val *be, bool v6)
{
	if (v6)
		write_v6(ctx, be);
	else
		write_v4(ctx, be);
}

#define TCP_ESTABLISHED 1	/* also the state of a connected UDP socket */

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

/* --- tracing ------------------------------------------------------------ */

/* Whether a reader holds the trace lease.  Off costs one array lookup and a
 * compare with 0; an expired lease (its reader died) is cleared here. */
static __always_inline bool tracing(void)
{
	__u32 zero = 0;
	struct socklb_trace_ctl *t = bpf_map_lookup_elem(&trace_ctl, &zero);

	if (!t || !t->lease_until_ns)
		return false;
	if (bpf_ktime_get_ns() > t->lease_until_ns) {
		t->lease_until_ns = 0;
		return false;
	}
	return true;
}

#define TRACE_WHAT(hook, outcome, v6) ((hook) | (outcome) << 8 | (__u32)(v6) << 16)

/* A call, not inlined: the event code stays out of the hot path.  BPF calls
 * take at most five arguments, so hook, outcome and family travel in
 * "what" (TRACE_WHAT). */
static __noinline void trace(struct bpf_sock_addr *ctx, const struct socklb_svc_key *key, const struct choice *c,
			     __u32 what)
{
	struct socklb_trace_event *e = bpf_ringbuf_reserve(&trace_events, sizeof(*e), 0);

	if (!e) {
		__u32 zero = 0;
		struct socklb_trace_ctl *t = bpf_map_lookup_elem(&trace_ctl, &zero);

		if (t)
			__sync_fetch_and_add(&t->dropped, 1);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->netns_cookie = bpf_get_netns_cookie(ctx);
	e->cookie = bpf_get_socket_cookie(ctx);
	e->pid = bpf_get_current_pid_tgid() >> 32;
	__builtin_memcpy(e->vip, key->addr, sizeof(e->vip));
	e->vip_port = key->port;
	e->proto = key->proto;
	e->hook = what & 0xff;
	e->outcome = (what >> 8) & 0xff;
	e->v6 = (what >> 16) & 1;
	if (c) {
		e->backend_id = c->backend_id;
		__builtin_memcpy(e->backend, c->be.addr, sizeof(e->backend));
		e->backend_port = c->be.port;
		e->retried = c->retried;
	} else {
		e->backend_id = 0;
		__builtin_memset(e->backend, 0, sizeof(e->backend));
		e->backend_port = 0;
		e->retried = 0;
	}
	__builtin_memset(e->pad, 0, sizeof(e->pad));
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

/* --- connect ------------------------------------------------------------ */

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
static __always_inline __u32 current_flow(struct socklb_sock_dgram *st, const struct socklb_svc_key *key,
					  __u32 nflows)
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

#define PROTO_MPTCP 262	/* IPPROTO_MPTCP */

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

static __always_inline int do_reverse(struct bpf_sock_addr *ctx, const __u32 *addr, bool v6, bool dgram,
				      __u32 counter)
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

/* --- post_bind: nothing squats a NodePort ------------------------------- */

/* A bind() in the node's network namespace to a NodePort on an address that
 * the NodePort answers on (any of the node's, loopback, or the wildcard
 * address) fails with EADDRINUSE.  An IPv6 socket bound to [::] may also take
 * IPv4 connections (unless IPV6_V6ONLY, which a program cannot read), so it
 * is refused for an IPv4 NodePort as well. */
static __always_inline int do_post_bind(struct bpf_sock *sk, struct socklb_svc_key *key, bool v6)
{
	struct socklb_svc_key wk;
	struct socklb_svc_val *svc;
	__u64 node;
	bool any;

	if (sk->type == 1 /* SOCK_STREAM */ && sk->protocol == IPPROTO_TCP)
		key->proto = SOCKLB_PROTO_TCP;
	else if (sk->type == 2 /* SOCK_DGRAM */ && sk->protocol == IPPROTO_UDP)
		key->proto = SOCKLB_PROTO_UDP;
	else
		return SYS_PROCEED;
	key->port = bpf_htons((__u16)sk->src_port);
	if (!wild_port(key->port))
		return SYS_PROCEED;
	node = node_netns();
	if (!node || bpf_get_netns_cookie(sk) != node)
		return SYS_PROCEED;
	any = key->addr[0] == 0 && key->addr[1] == 0 && key->addr[3] == 0 &&
	      (key->addr[2] == 0 || key->addr[2] == bpf_htonl(0xffff));
	if (!any && !is_loopback(key->addr) && !bpf_map_lookup_elem(&node_addrs, key->addr))
		return SYS_PROCEED;
	wildcard_key(&wk, key);
	svc = bpf_map_lookup_elem(&services, &wk);
	if (!(svc && (svc->opts & SOCKLB_SVC_O_NODE_PORT)) && v6 && any) {
		wk.addr[2] = bpf_htonl(0xffff);
		svc = bpf_map_lookup_elem(&services, &wk);
	}
	if (!svc || !(svc->opts & SOCKLB_SVC_O_NODE_PORT))
		return SYS_PROCEED;
	/* EPERM where the kernel lacks bpf_set_retval (SET_RETVAL). */
	SET_RETVAL(-EADDRINUSE);
	return SYS_REJECT;
}

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

GATE_HOOKS(exclude, connect, SOCKLB_HOOK_CONNECT, leave_alone)
GATE_HOOKS(exclude, sendmsg, SOCKLB_HOOK_SENDMSG, leave_alone)
GATE_HOOKS(hostonly, connect, SOCKLB_HOOK_CONNECT, host_only)
GATE_HOOKS(hostonly, sendmsg, SOCKLB_HOOK_SENDMSG, host_only)

char LICENSE[] SEC("license") = "Dual BSD/GPL";
