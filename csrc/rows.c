// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * socklb rows: the map elements of many new services, packed in one pass
 * (see rows.h).  The structs are socklb_maps.h's, so the layout is the
 * header's by construction; a padding byte is always zero.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include <linux/types.h>

#include "loader.h"
#include "socklb_maps.h"
#include "rows.h"

uint32_t socklb_rows_uniform(uint32_t n, const uint32_t *counts, const uint8_t *states, const uint32_t *weights,
			     uint8_t *uniform, uint64_t *backends)
{
	uint64_t at = 0, total = 0;
	uint32_t i, j, k = 0;

	for (i = 0; i < n; i++) {
		uint32_t c = counts[i];
		int ok = uniform[i];

		for (j = 0; ok && j < c; j++) {
			uint32_t w = weights[at + j];

			ok = w != 0 && w == weights[at] && (!states || states[at + j] == SOCKLB_STATE_ACTIVE);
		}
		uniform[i] = (uint8_t)ok;
		if (ok) {
			k++;
			total += c;
		}
		at += c;
	}
	*backends = total;
	return k;
}

uint32_t socklb_rows_pack(const struct socklb_new_rows *r)
{
	uint64_t at = 0, out = 0;
	uint32_t i, j, k = 0;

	for (i = 0; i < r->n; i++) {
		uint32_t c = r->counts[i];
		struct socklb_svc_key *sk;
		struct socklb_svc_val *sv;
		uint32_t list_id;

		if (!r->uniform[i]) {
			at += c;
			continue;
		}
		list_id = r->list_ids ? r->list_ids[k] : r->list_id0 + k;
		sk = &r->svc_keys[k];
		memset(sk, 0, sizeof(*sk));
		memcpy(sk->addr, r->svc_addr + (size_t)i * 16, 16);
		sk->port = htons(r->svc_port[i]);
		sk->proto = r->svc_proto[i];

		sv = &r->svc_vals[k];
		memset(sv, 0, sizeof(*sv));
		sv->svc_id = r->svc_ids ? r->svc_ids[k] : r->svc_id0 + k;
		sv->list_id = list_id;
		sv->count = c;
		sv->total_weight = c ? c * r->be_weight[at] : 0;
		sv->members = c;
		sv->affinity_timeout = r->svc_affinity_timeout[i];
		sv->algo = SOCKLB_ALGO_RANDOM;
		sv->flags = r->svc_flags[i];
		sv->requested_algo = r->svc_requested_algo[i];
		sv->opts = r->svc_opts[i];

		for (j = 0; j < c; j++, at++, out++) {
			struct socklb_backend_val *bv = &r->backend_vals[out];
			struct socklb_slot_val *slot = &r->slot_vals[out];
			uint32_t bid = r->backend_ids ? r->backend_ids[out] : r->backend_id0 + (uint32_t)out;

			r->backend_keys[out] = bid;
			memset(bv, 0, sizeof(*bv));
			memcpy(bv->addr, r->be_addr + at * 16, 16);
			bv->port = htons(r->be_port[at]);
			bv->state = SOCKLB_STATE_ACTIVE;
			bv->svc_id = sv->svc_id;

			r->slot_keys[out].list_id = list_id;
			r->slot_keys[out].index = j;
			memset(slot, 0, sizeof(*slot));
			slot->backend_id = bid;
			slot->alias_id = bid;
			slot->keep = 0xffffffffu;
			slot->weight = r->be_weight[at];
			memcpy(slot->addr, bv->addr, 16);
			slot->port = bv->port;
			slot->user_state = SOCKLB_STATE_ACTIVE;
		}
		k++;
	}
	return k;
}

/* Map updates from several threads: the kernel's hash maps take a lock per
 * bucket, so inserts into one map or several scale with the CPUs, and the
 * time of a large first sync is mostly these inserts. */
struct update_pool {
	struct socklb_update_job *jobs;
	uint32_t n;
	uint32_t next; /* the next job to take (atomic) */
};

static void *update_worker(void *arg)
{
	struct update_pool *pool = arg;
	uint32_t i;

	while ((i = __atomic_fetch_add(&pool->next, 1, __ATOMIC_RELAXED)) < pool->n) {
		struct socklb_update_job *j = &pool->jobs[i];

		j->rc = socklb_map_update(j->fd, j->keys, j->values, j->n, j->key_size, j->value_size, j->flags,
					  &j->done);
	}
	return NULL;
}

#define SOCKLB_MAX_UPDATE_THREADS 16

int socklb_map_update_parallel(struct socklb_update_job *jobs, uint32_t n, uint32_t threads)
{
	struct update_pool pool = { .jobs = jobs, .n = n, .next = 0 };
	pthread_t tids[SOCKLB_MAX_UPDATE_THREADS];
	uint32_t started = 0, i;
	int err = 0;

	if (threads > SOCKLB_MAX_UPDATE_THREADS)
		threads = SOCKLB_MAX_UPDATE_THREADS;
	if (threads > n)
		threads = n;
	for (i = 1; i < threads; i++) {
		int rc = pthread_create(&tids[started], NULL, update_worker, &pool);

		if (rc) {
			err = -rc;
			break;
		}
		started++;
	}
	update_worker(&pool);
	for (i = 0; i < started; i++)
		pthread_join(tids[i], NULL);
	return err;
}
