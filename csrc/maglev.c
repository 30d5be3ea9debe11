// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * socklb native core, Maglev: a backend table by consistent hashing, each
 * backend's share of positions in proportion to its weight.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "loader.h"

static uint64_t fnv1a(const uint8_t *p, uint32_t n, uint64_t h)
{
	for (uint32_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	/* splitmix64 finalizer: FNV's low bits are weak for short keys. */
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebULL;
	h ^= h >> 31;
	return h;
}

int socklb_maglev(const uint8_t *ident, uint32_t ident_size, const uint32_t *weights, const uint32_t *ids, uint32_t n,
		  uint32_t *table, uint32_t m)
{
	uint64_t *offset = NULL, *skip = NULL, *next = NULL, *credit = NULL;
	uint32_t maxw = 0, filled = 0, i;
	int err = 0;

	if (m < 2 || n == 0)
		return -EINVAL;
	for (i = 0; i < n; i++)
		if (weights[i] > maxw)
			maxw = weights[i];
	if (maxw == 0)
		return -EINVAL;

	offset = calloc(n, sizeof(*offset));
	skip = calloc(n, sizeof(*skip));
	next = calloc(n, sizeof(*next));
	credit = calloc(n, sizeof(*credit));
	if (!offset || !skip || !next || !credit) {
		err = -ENOMEM;
		goto out;
	}
	for (i = 0; i < n; i++) {
		const uint8_t *id = ident + (size_t)i * ident_size;

		offset[i] = fnv1a(id, ident_size, 0xcbf29ce484222325ULL) % m;
		skip[i] = fnv1a(id, ident_size, 0x84222325cbf29ce4ULL) % (m - 1) + 1;
	}
	for (i = 0; i < m; i++)
		table[i] = UINT32_MAX;

	/* Each round every backend earns its weight in credit and takes one
	 * preferred free position per maxw of credit, so positions are shared
	 * in proportion to weight; the heaviest backend takes one per round, so
	 * the loop ends after at most m rounds. */
	while (filled < m) {
		for (i = 0; i < n && filled < m; i++) {
			credit[i] += weights[i];
			while (credit[i] >= maxw && filled < m) {
				uint64_t pos;

				credit[i] -= maxw;
				do {
					pos = (offset[i] + next[i] * skip[i]) % m;
					next[i]++;
				} while (table[pos] != UINT32_MAX);
				table[pos] = ids[i];
				filled++;
			}
		}
	}
out:
	free(offset);
	free(skip);
	free(next);
	free(credit);
	return err;
}
