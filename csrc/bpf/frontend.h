/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Frontends: the service a destination reaches (the exact key, then the
 * wildcard NodePort/HostPort one), and the post_bind check that keeps a
 * NodePort free on the node's addresses.
 */
#pragma once

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

/* --- post_bind: nothing squats a NodePort (the programs: socklb.bpf.c) --- */

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
