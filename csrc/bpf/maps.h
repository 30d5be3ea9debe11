/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The datapath's configuration (const volatile: .rodata, set by the loader
 * through the skeleton before load) and its maps, in the order the object
 * has always had them.  Keys and values are socklb_maps.h's.  Included by
 * socklb.bpf.c after the BPF headers and socklb_maps.h.
 */
#pragma once

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
#define SIZED_HASH(name, key_type, value_type)        \
	struct {                                      \
		__uint(type, BPF_MAP_TYPE_HASH);      \
		__uint(map_flags, BPF_F_NO_PREALLOC); \
		__uint(max_entries, 1);               \
		__type(key, key_type);                \
		__type(value, value_type);            \
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
#include "sock_maps.h"

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
