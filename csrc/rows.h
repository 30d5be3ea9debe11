/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * socklb rows: the map elements of many new services at once, packed in C
 * from columns the control plane gathers (planner.py, abi.uniform_rows).
 *
 * Read by cffi's parser like socklb_maps.h: declarations only.
 *
 * "Uniform" services are those whose every backend is active with one and
 * the same non-zero weight and whose algorithm is not Maglev (the caller
 * rules Maglev out): their list is their backends in order, each slot its
 * own backend with certainty (keep = 0xffffffff, alias = itself), the
 * datapath's plain random pick (SOCKLB_ALGO_RANDOM).  That is what
 * abi.encode() gives such a service; a test checks the two agree.
 */

/* Columns of n services (in), and where their rows go (out). */
struct socklb_new_rows {
	uint32_t n;		/* services */
	const uint32_t *counts; /* backends of each service */
	const uint8_t *uniform; /* from socklb_rows_uniform: pack service i iff uniform[i] */
	/* per service */
	const uint8_t *svc_addr;  /* 16 bytes each, network order */
	const uint16_t *svc_port; /* host order */
	const uint8_t *svc_proto; /* SOCKLB_PROTO_* */
	const uint8_t *svc_flags; /* SOCKLB_SVC_F_* */
	const uint8_t *svc_requested_algo;
	const uint8_t *svc_opts; /* SOCKLB_SVC_O_* */
	const uint32_t *svc_affinity_timeout;
	/* per backend, the services' backends one after the other */
	const uint8_t *be_addr;	 /* 16 bytes each, network order */
	const uint16_t *be_port; /* host order */
	const uint32_t *be_weight;
	/* ids: the k-th uniform service gets svc_ids[k] and list_ids[k], its
	 * backends the next ones of backend_ids; a NULL array stands for the
	 * consecutive ids from svc_id0 (list_id0, backend_id0) on */
	const uint32_t *svc_ids;
	const uint32_t *list_ids;
	const uint32_t *backend_ids;
	uint32_t svc_id0;
	uint32_t list_id0;
	uint32_t backend_id0;
	/* out: one element per uniform service or backend */
	struct socklb_svc_key *svc_keys;
	struct socklb_svc_val *svc_vals;
	uint32_t *backend_keys;
	struct socklb_backend_val *backend_vals;
	struct socklb_slot_key *slot_keys;
	struct socklb_slot_val *slot_vals;
};

/* Which of n services are uniform (see above).  uniform[i] is 1 on entry for
 * a service that may be (not Maglev) and is left 1 only if it is; states
 * (SOCKLB_STATE_* of each backend) may be NULL when every backend is active.
 * *backends is set to the uniform services' backends in all.  Returns how
 * many services are uniform. */
uint32_t socklb_rows_uniform(uint32_t n, const uint32_t *counts, const uint8_t *states, const uint32_t *weights,
			     uint8_t *uniform, uint64_t *backends);

/* Write the service, backend and slot elements of the uniform services of
 * r (their ids as r says).  Returns how many services were packed. */
uint32_t socklb_rows_pack(const struct socklb_new_rows *r);

/* One bulk update of the elements keys/values (n of them) of the map fd,
 * as socklb_map_update does it; rc and done are set when it ran. */
struct socklb_update_job {
	int fd;
	uint32_t n;
	uint32_t key_size;
	uint32_t value_size;
	const void *keys;
	const void *values;
	uint64_t flags;
	int rc;	       /* out: 0 or -errno */
	uint32_t done; /* out: elements written */
};

/* Run the n jobs on up to threads threads at once (the caller's own
 * included), each job whole on one thread; returns when every job has run.
 * Returns 0, or -errno of a thread that could not be started (the jobs it
 * would have taken are then run by the others). */
int socklb_map_update_parallel(struct socklb_update_job *jobs, uint32_t n, uint32_t threads);
