// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * socklb native core, socklb trace: the reader of the trace_events ring
 * buffer, copying events out in batches.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <bpf/libbpf.h>

#include "loader.h"
#include "socklb_maps.h"

struct socklb_trace {
	struct ring_buffer *rb;
	char *events;
	uint32_t cap, n;
	uint64_t lost;
};

static int trace_sample(void *ctx, void *data, size_t len)
{
	struct socklb_trace *t = ctx;

	if (len < sizeof(struct socklb_trace_event) || t->n >= t->cap) {
		t->lost++;
		return 0;
	}
	memcpy(t->events + (size_t)t->n * sizeof(struct socklb_trace_event), data, sizeof(struct socklb_trace_event));
	t->n++;
	return 0;
}

int socklb_trace_open(int ringbuf_fd, struct socklb_trace **out)
{
	struct socklb_trace *t = calloc(1, sizeof(*t));

	if (!t)
		return -ENOMEM;
	t->rb = ring_buffer__new(ringbuf_fd, trace_sample, t, NULL);
	if (!t->rb) {
		int err = -errno;

		free(t);
		return err ? err : -EINVAL;
	}
	*out = t;
	return 0;
}

int socklb_trace_poll(struct socklb_trace *t, void *events, uint32_t cap, int timeout_ms, uint64_t *lost)
{
	int err;

	t->events = events;
	t->cap = cap;
	t->n = 0;
	t->lost = 0;
	err = ring_buffer__poll(t->rb, timeout_ms);
	*lost = t->lost;
	if (err < 0 && err != -EINTR)
		return err;
	return (int)t->n;
}

void socklb_trace_close(struct socklb_trace *t)
{
	if (!t)
		return;
	ring_buffer__free(t->rb);
	free(t);
}
