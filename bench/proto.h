/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * The wire format shared by bench/loadgen.c and bench/server.c.
 *
 * Every request starts with this header (network byte order); the rest of the
 * request is filler.  The server answers with resp_len bytes whose first
 * min(resp_len, 16) bytes echo the header, so a UDP client can match a reply
 * to its request by seq.  TCP: the server reads req_len bytes, writes the
 * response and closes (it does the active close, so TIME_WAIT stays on the
 * server and the client's ephemeral ports are free again at once).
 */
#ifndef BENCH_PROTO_H
#define BENCH_PROTO_H

#include <stdint.h>

struct bench_hdr {
	uint32_t req_len;	/* bytes in the whole request, header included */
	uint32_t resp_len;	/* bytes the server must answer with */
	uint64_t seq;		/* echoed */
};

#define BENCH_HDR_SIZE 16
#define BENCH_MAX_MSG 65000	/* fits one UDP datagram */

#endif
