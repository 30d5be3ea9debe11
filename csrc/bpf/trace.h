/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Trace events (socklb trace): one ring-buffer record per translation while
 * a reader holds the lease.
 */
#pragma once

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
