/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Choosing a backend: affinity first, then the service's algorithm (a
 * uniform pick, an alias-table pick or a Maglev table entry) over its
 * current list, with one retry when an update replaced the list under us.
 */
#pragma once

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
