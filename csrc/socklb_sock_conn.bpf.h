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
