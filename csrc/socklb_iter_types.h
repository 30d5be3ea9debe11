/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The kernel types the socket iterators use, and only their fields that the
 * iterators read: a minimal CO-RE type set instead of a vmlinux.h generated
 * from the build machine's BTF.  preserve_access_index makes every field
 * access a CO-RE relocation, which libbpf resolves against the running
 * kernel's BTF at load time (members of anonymous unions included), so the
 * object builds anywhere - a container, a kernel without BTF - and the
 * layouts here need not match any kernel's.
 */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct seq_file;

struct in6_addr___socklb {
	__u32 a[4];
};

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	int skc_bound_dev_if;
	struct in6_addr___socklb skc_v6_daddr;
	struct in6_addr___socklb skc_v6_rcv_saddr;
};

struct sock {
	struct sock_common __sk_common;
};

struct udp_sock;
struct tcp_sock;

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
};

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
	__u32 uid;
	int bucket;
};

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	__u32 uid;
};

#pragma clang attribute pop
