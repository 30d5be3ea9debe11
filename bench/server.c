/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * bench/server: the backend of the socklb benchmark.
 *
 *   server [--tcp PORT] [--udp PORT] [--threads N]
 *
 * TCP: accept, read the request (bench_hdr.req_len bytes), write
 * bench_hdr.resp_len bytes, close.  UDP: recvfrom, sendto the reply.
 * Each thread has its own epoll instance and its own SO_REUSEPORT sockets, so
 * threads never share a lock.  Prints "ready" on stdout once every socket
 * listens; exits on SIGTERM/SIGINT.  Counters (requests served, errors) go to
 * stderr at exit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proto.h"

#define MAX_THREADS 16
#define MAX_EVENTS 256

enum kind { K_LISTEN = 1, K_UDP, K_CONN };

struct conn {
	enum kind kind;
	int fd;
	uint32_t got;		/* request bytes read */
	uint32_t need;		/* request length, once the header is in */
	uint32_t resp_len;
	uint32_t sent;
	unsigned char hdr[BENCH_HDR_SIZE];
};

static int tcp_port, udp_port, nthreads = 1;
static volatile sig_atomic_t stopping;
static atomic_ulong served_tcp, served_udp, errors;
static unsigned char filler[BENCH_MAX_MSG];

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static int make_socket(int type, int port)
{
	struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = IN6ADDR_ANY_INIT };
	int one = 1, zero = 0;
	int fd = socket(AF_INET6, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		die("socket");
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) ||
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)))
		die("setsockopt");
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)))
		die("bind");
	if (type == SOCK_STREAM && listen(fd, 4096))
		die("listen");
	return fd;
}

static struct conn *new_conn(enum kind kind, int fd)
{
	struct conn *c = calloc(1, sizeof(*c));

	if (!c)
		die("calloc");
	c->kind = kind;
	c->fd = fd;
	return c;
}

static void close_conn(int ep, struct conn *c)
{
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c);
}

/* Write what is left of the response; returns 1 when done, 0 to wait, -1 on error. */
static int write_resp(struct conn *c)
{
	while (c->sent < c->resp_len) {
		const unsigned char *src;
		size_t len;
		ssize_t n;

		if (c->sent < BENCH_HDR_SIZE) {
			src = c->hdr + c->sent;
			len = BENCH_HDR_SIZE - c->sent;
			if (len > c->resp_len - c->sent)
				len = c->resp_len - c->sent;
		} else {
			src = filler;
			len = c->resp_len - c->sent;
		}
		n = send(c->fd, src, len, MSG_NOSIGNAL);
		if (n < 0)
			return errno == EAGAIN ? 0 : -1;
		c->sent += (uint32_t)n;
	}
	return 1;
}

/* Read the request; when complete, answer.  Returns 1 if the connection is finished. */
static int serve_conn(int ep, struct conn *c, uint32_t events)
{
	unsigned char buf[4096];

	if (c->need && c->got >= c->need) { /* waiting to write */
		int r = write_resp(c);
		if (r == 0)
			return 0;
		if (r < 0)
			atomic_fetch_add(&errors, 1);
		else
			atomic_fetch_add(&served_tcp, 1);
		return 1;
	}
	for (;;) {
		ssize_t n = recv(c->fd, buf, sizeof(buf), 0);

		if (n < 0) {
			if (errno == EAGAIN)
				return 0;
			atomic_fetch_add(&errors, 1);
			return 1;
		}
		if (n == 0) { /* EOF before the whole request */
			if (c->got)
				atomic_fetch_add(&errors, 1);
			return 1;
		}
		for (ssize_t i = 0; i < n && c->got + i < BENCH_HDR_SIZE; i++)
			c->hdr[c->got + i] = buf[i];
		c->got += (uint32_t)n;
		if (!c->need && c->got >= BENCH_HDR_SIZE) {
			struct bench_hdr h;

			memcpy(&h, c->hdr, sizeof(h));
			c->need = ntohl(h.req_len);
			c->resp_len = ntohl(h.resp_len);
			if (c->need < BENCH_HDR_SIZE || c->need > BENCH_MAX_MSG || c->resp_len > BENCH_MAX_MSG) {
				atomic_fetch_add(&errors, 1);
				return 1;
			}
		}
		if (c->need && c->got >= c->need) {
			int r = write_resp(c);

			if (r == 0) {
				struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = c };
				epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
				return 0;
			}
			if (r < 0)
				atomic_fetch_add(&errors, 1);
			else
				atomic_fetch_add(&served_tcp, 1);
			return 1;
		}
	}
	(void)events;
}

static void accept_all(int ep, struct conn *l)
{
	for (;;) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct conn *c;

		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				atomic_fetch_add(&errors, 1);
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return;
		}
		c = new_conn(K_CONN, fd);
		/* The request is usually there already: answer without a wakeup. */
		if (serve_conn(ep, c, EPOLLIN)) {
			close(fd);
			free(c);
			continue;
		}
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
		if (c->need && c->got >= c->need)
			ev.events = EPOLLOUT;
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev)) {
			atomic_fetch_add(&errors, 1);
			close(fd);
			free(c);
		}
	}
}

static void serve_udp(struct conn *u)
{
	static __thread unsigned char buf[BENCH_MAX_MSG];
	static __thread unsigned char out[BENCH_MAX_MSG];

	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage peer;
		socklen_t plen = sizeof(peer);
		ssize_t n = recvfrom(u->fd, buf, sizeof(buf), 0, (struct sockaddr *)&peer, &plen);
		struct bench_hdr h;
		uint32_t resp;

		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNREFUSED)
				atomic_fetch_add(&errors, 1);
			if (errno == EAGAIN)
				return;
			continue;
		}
		if (n < BENCH_HDR_SIZE) {
			atomic_fetch_add(&errors, 1);
			continue;
		}
		memcpy(&h, buf, sizeof(h));
		resp = ntohl(h.resp_len);
		if (resp > BENCH_MAX_MSG) {
			atomic_fetch_add(&errors, 1);
			continue;
		}
		memcpy(out, buf, resp < BENCH_HDR_SIZE ? resp : BENCH_HDR_SIZE);
		if (sendto(u->fd, out, resp, 0, (struct sockaddr *)&peer, plen) < 0)
			atomic_fetch_add(&errors, 1);
		else
			atomic_fetch_add(&served_udp, 1);
	}
}

/* One worker: its own epoll instance and its own SO_REUSEPORT sockets. */
static int make_worker(void)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct conn *socks[2];
	int n = 0;

	if (ep < 0)
		die("epoll_create1");
	if (tcp_port)
		socks[n++] = new_conn(K_LISTEN, make_socket(SOCK_STREAM, tcp_port));
	if (udp_port)
		socks[n++] = new_conn(K_UDP, make_socket(SOCK_DGRAM, udp_port));
	for (int i = 0; i < n; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = socks[i] };
		if (epoll_ctl(ep, EPOLL_CTL_ADD, socks[i]->fd, &ev))
			die("epoll_ctl");
	}
	return ep;
}

static void *worker(void *arg)
{
	struct epoll_event evs[MAX_EVENTS];
	int ep = (int)(intptr_t)arg;

	while (!stopping) {
		int k = epoll_wait(ep, evs, MAX_EVENTS, 200);

		for (int i = 0; i < k; i++) {
			struct conn *c = evs[i].data.ptr;

			if (c->kind == K_LISTEN)
				accept_all(ep, c);
			else if (c->kind == K_UDP)
				serve_udp(c);
			else if (serve_conn(ep, c, evs[i].events))
				close_conn(ep, c);
		}
	}
	return NULL;
}

static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

static int parse_int(const char *s, int lo, int hi, const char *what)
{
	char *end;
	long v = strtol(s, &end, 10);

	if (*s == '\0' || *end != '\0' || v < lo || v > hi) {
		fprintf(stderr, "server: %s must be an integer in %d..%d\n", what, lo, hi);
		exit(2);
	}
	return (int)v;
}

int main(int argc, char **argv)
{
	pthread_t th[MAX_THREADS];
	struct sigaction sa = { .sa_handler = on_signal };
	struct rlimit rl;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--tcp") && i + 1 < argc)
			tcp_port = parse_int(argv[++i], 1, 65535, "--tcp");
		else if (!strcmp(argv[i], "--udp") && i + 1 < argc)
			udp_port = parse_int(argv[++i], 1, 65535, "--udp");
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			nthreads = parse_int(argv[++i], 1, MAX_THREADS, "--threads");
		else {
			fprintf(stderr, "usage: server [--tcp PORT] [--udp PORT] [--threads N]\n");
			return 2;
		}
	}
	if (!tcp_port && !udp_port) {
		fprintf(stderr, "server: give --tcp and/or --udp\n");
		return 2;
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	memset(filler, 'x', sizeof(filler));

	/* Every socket listens before "ready" is printed. */
	int eps[MAX_THREADS];
	for (int i = 0; i < nthreads; i++)
		eps[i] = make_worker();
	for (int i = 0; i < nthreads; i++)
		if (pthread_create(&th[i], NULL, worker, (void *)(intptr_t)eps[i]))
			die("pthread_create");
	printf("ready\n");
	fflush(stdout);
	for (int i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	fprintf(stderr, "{\"served_tcp\": %lu, \"served_udp\": %lu, \"errors\": %lu}\n",
		(unsigned long)atomic_load(&served_tcp), (unsigned long)atomic_load(&served_udp),
		(unsigned long)atomic_load(&errors));
	return 0;
}
