/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * What every hook uses: verdicts, counters, the errno of a refusal, the
 * socket's protocol, service keys from the context, and writing the
 * destination.
 */
#pragma once

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

#define TCP_ESTABLISHED 1 /* also the state of a connected UDP socket */
