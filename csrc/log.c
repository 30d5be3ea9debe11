// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Where libbpf's messages go: the buffer of the native call in progress on
 * this thread (a verifier log for the caller), and nowhere otherwise.  Used by
 * the loader and by the socket iterators' code (internal.h).
 */
#include <stdarg.h>
#include <stdio.h>

#include <bpf/libbpf.h>

#include "internal.h"

/* libbpf's messages go to the buffer of the call in progress on this thread
 * (cffi releases the GIL, so calls from several threads may overlap), and
 * nowhere otherwise: a library must not write to the host's stderr. */
static __thread char *log_dst;
static __thread size_t log_cap, log_len;

static int print_cb(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	int n;

	if (!log_dst || level == LIBBPF_DEBUG || log_len + 1 >= log_cap)
		return 0;
	n = vsnprintf(log_dst + log_len, log_cap - log_len, fmt, ap);
	if (n > 0)
		log_len = (size_t)n >= log_cap - log_len ? log_cap - 1 : log_len + (size_t)n;
	return n;
}

void socklb__log_capture(char *buf, size_t size)
{
	libbpf_set_print(print_cb);
	log_dst = buf;
	log_cap = size;
	log_len = 0;
	if (buf && size)
		buf[0] = '\0';
}

void socklb__log_release(void)
{
	log_dst = NULL;
	log_cap = log_len = 0;
}
