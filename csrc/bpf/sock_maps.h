/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The per-socket maps, declared once for both BPF objects: the datapath
 * (socklb.bpf.c) creates them and the socket iterators (socklb_iter.bpf.c)
 * reuse their fds, which libbpf accepts only if the definitions match.
 * Include after <bpf/bpf_helpers.h> and socklb_maps.h.
 */
#pragma once

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct socklb_sock_entry);
} sock_conn SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct socklb_sock_dgram);
} sock_dgram SEC(".maps");

/* sock_tcp: the translations of TCP sockets socklb connected, in a
 * direct-mapped table indexed by socket cookie (see struct socklb_sock_slot). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SOCKLB_SOCK_TCP_SLOTS);
	__type(key, __u32);
	__type(value, struct socklb_sock_slot);
} sock_tcp SEC(".maps");

/* The slot of a socket cookie: cookies are handed out in increasing order
 * (in per-CPU batches), so sockets made one after the other take slots one
 * after the other and stay out of each other's way. */
static __always_inline struct socklb_sock_slot *tcp_slot(__u64 cookie)
{
	__u32 i = (__u32)(cookie & (SOCKLB_SOCK_TCP_SLOTS - 1));

	return bpf_map_lookup_elem(&sock_tcp, &i);
}
