/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * socklb map layouts: the one definition of every key and value shared by the
 * BPF programs (socklb.bpf.c), the native core (loader.c, ...) and Python (the cffi
 * declarations are generated from this file by build_ffi.py).
 *
 * The file is read by cffi's parser, so it holds only fixed-width struct
 * definitions and integer #defines; no other preprocessor directives, no
 * expressions in #defines.  The including file provides __u8/__u16/__u32/__u64.
 *
 * Addresses are always 16 bytes in network order.  IPv4 addresses are stored
 * as IPv4-mapped IPv6 (::ffff:a.b.c.d), so a v4-mapped destination given to
 * connect6/sendmsg6 finds the IPv4 service through the same key.
 */

/* Bump whenever a struct below changes layout: pinned maps written with
 * another version are refused, never misread. */
#define SOCKLB_LAYOUT_VERSION 12
#define SOCKLB_META_MAGIC 1936484460

#define SOCKLB_PROTO_TCP 6
#define SOCKLB_PROTO_UDP 17

/* Backend selection, per service.  In socklb_svc_val.algo (what the datapath
 * runs): RANDOM picks a slot uniformly (all weights equal), WEIGHTED picks a
 * slot uniformly and then its backend or its alias (the list is an alias
 * table, see socklb_slot_val), MAGLEV reads the service's Maglev table.  In
 * requested_algo, WEIGHTED is what the user asked for ("weighted", now an
 * alias of "random": both honour weights). */
#define SOCKLB_ALGO_RANDOM 0
#define SOCKLB_ALGO_WEIGHTED 1
#define SOCKLB_ALGO_MAGLEV 2

/* Backend states.  Only the control plane decides which backends go in a
 * service's selectable list; the datapath checks the state again when it
 * reuses a remembered choice (affinity, a UDP socket's sticky backend). */
#define SOCKLB_STATE_ACTIVE 0
#define SOCKLB_STATE_TERMINATING 1
#define SOCKLB_STATE_QUARANTINED 2
#define SOCKLB_STATE_MAINTENANCE 3
/* Written for a backend whose weight is 0: kept, never chosen (drained). */
#define SOCKLB_STATE_DRAINING 4

/* socklb_svc_val.flags */
#define SOCKLB_SVC_F_AFFINITY 1
/* The selectable list holds terminating backends (no active one is left). */
#define SOCKLB_SVC_F_FALLBACK 2

/* socklb_svc_val.opts */
#define SOCKLB_SVC_O_TERMINATE_TCP 1
/* A wildcard frontend: the key's address is 0 (::ffff:0.0.0.0 or ::) and the
 * service answers on every address of the node (node_addrs) and, from the
 * node's own network namespace, on loopback.  NODE_PORT ones are also
 * protected from bind() in the node's namespace (post_bind). */
#define SOCKLB_SVC_O_NODE_PORT 2
#define SOCKLB_SVC_O_HOST_PORT 4

/* socklb_sock_entry.flags.  In sock_dgram: the entry is the socket's current
 * choice for its service.  In sock_conn: replies from the backend are shown
 * as the VIP (cleared when an unconnected sendto() to another service that
 * shares the backend is made on the connected socket: the later one wins). */
#define SOCKLB_ENTRY_CURRENT 1

/* Unconnected-UDP flows (service, backend) remembered per socket (see
 * socklb_sock_dgram): a load-time setting (udp_flows_per_socket), at most
 * SOCKLB_MAX_UDP_FLOWS; one more evicts the oldest (SOCKLB_CNT_UDP_EVICTED). */
#define SOCKLB_DEFAULT_UDP_FLOWS 16
#define SOCKLB_MAX_UDP_FLOWS 64

/* Backends of one service at most (model.MAX_BACKENDS_PER_SERVICE). */
#define SOCKLB_MAX_SVC_BACKENDS 65536

/* Backend ids the socket iterators terminate in one pass (their "doomed"
 * map); the control plane hands them over in chunks of this size. */
#define SOCKLB_DOOMED_ENTRIES 65536

/* Cgroups a pinned balancer records (the "attachments" map). */
#define SOCKLB_MAX_ATTACHMENTS 4096

/* Counters in the per-CPU "counters" array. */
#define SOCKLB_CNT_CONNECT 0
#define SOCKLB_CNT_SENDMSG 1
#define SOCKLB_CNT_RECVMSG 2
#define SOCKLB_CNT_GETPEERNAME 3
#define SOCKLB_CNT_NO_BACKEND 4
#define SOCKLB_CNT_RETRY 5
#define SOCKLB_CNT_AFFINITY_HIT 6
#define SOCKLB_CNT_STICKY_HIT 7
/* Written by the control plane only (CPU 0's slot): sockets it terminated
 * because their backend went away, kept with the pins across owners. */
#define SOCKLB_CNT_TERMINATED 8
/* The IPv6 programs' share of CONNECT, SENDMSG, RECVMSG and GETPEERNAME (the
 * hook's family: a v4-mapped destination counts here): counter + CNT_V6. */
#define SOCKLB_CNT_V6 9
#define SOCKLB_CNT_CONNECT6 9
#define SOCKLB_CNT_SENDMSG6 10
#define SOCKLB_CNT_RECVMSG6 11
#define SOCKLB_CNT_GETPEERNAME6 12
/* The TCP share of TERMINATED (control plane only, like it). */
#define SOCKLB_CNT_TERMINATED_TCP 13
/* Socket-local storage could not be allocated (memory pressure): a connect()
 * is still translated but getpeername() shows the backend; a datagram is
 * refused with ENOBUFS. */
#define SOCKLB_CNT_NO_STATE 14
/* An unconnected UDP socket sent to one flow more than it remembers: the
 * oldest flow's entry was reused, its late replies show the backend. */
#define SOCKLB_CNT_UDP_EVICTED 15
/* A TCP socket's slot in sock_tcp was held by another open socket: the
 * connect() was translated and its record went to socket-local storage (the
 * slower path, see socklb_sock_slot). */
#define SOCKLB_CNT_SOCK_TCP_FULL 16
#define SOCKLB_CNT_MAX 17

/* Slots of sock_tcp (a power of two). */
#define SOCKLB_SOCK_TCP_SLOTS 131072

/* services: (VIP, port, protocol) -> how to pick a backend. */
struct socklb_svc_key {
	__u32 addr[4]; /* network order, IPv4 as ::ffff:a.b.c.d */
	__u16 port;    /* network order */
	__u8 proto;    /* SOCKLB_PROTO_* */
	__u8 pad;
};

struct socklb_svc_val {
	__u32 svc_id;		/* stable for the service's lifetime */
	__u32 list_id;		/* current selectable list (slots, maglev) */
	__u32 count;		/* selectable slots, 0..count-1 of the list; 0 = refuse */
	__u32 total_weight;	/* sum of the selectable slots' weights (control plane) */
	__u32 members;		/* every backend of this version: slots 0..members-1 */
	__u32 affinity_timeout; /* seconds (SOCKLB_SVC_F_AFFINITY) */
	__u8 algo;		/* SOCKLB_ALGO_* the datapath runs */
	__u8 flags;		/* SOCKLB_SVC_F_* */
	/* Control-plane only, so that a restarted process can rebuild the
	 * Service from the maps: */
	__u8 requested_algo; /* SOCKLB_ALGO_* the user asked for */
	__u8 opts;	     /* SOCKLB_SVC_O_* */
};

/* slots: (list, index) -> backend.  A list is one version of a service: the
 * selectable backends first (0..count-1, what the datapath picks from), then
 * the others (count..members-1: drained, quarantined, ...), each with the
 * weight and state of that version.  A service update writes a new list
 * under a fresh list_id and then swaps svc_val.list_id in one map update, so
 * a connect() sees the old list or the new one, never a mix, and a restarted
 * control plane reads exactly one version back. */
struct socklb_slot_key {
	__u32 list_id;
	__u32 index;
};

/* A list's selectable slots are an alias table (Vose): a weighted pick draws
 * one 32-bit number r, takes slot i = (r * count) >> 32 and then backend_id if
 * the low 32 bits of r * count are below keep, else alias_id; one lookup.
 * Uniform lists and slots kept with certainty have alias_id == backend_id.
 * A selectable slot also holds backend_id's address (a backend id names one
 * address for its lifetime), so that a pick of it needs no backends lookup;
 * an alias taken that is another backend is looked up (not stored: 20 more
 * bytes on every slot for the weighted lists' share of picks). */
struct socklb_slot_val {
	__u32 backend_id;
	__u32 alias_id;	 /* selectable slots: the backend taken otherwise */
	__u32 keep;	 /* selectable slots: P(backend_id | slot) * 2^32, saturated */
	__u32 weight;	 /* control plane only: the backend's weight in this version */
	__u32 addr[4];	 /* selectable slots: backend_id's address; else 0 */
	__u16 port;	 /* selectable slots: backend_id's port, network order; else 0 */
	__u8 user_state; /* control plane only: its SOCKLB_STATE_* in this version */
	__u8 pad;
};

/* backends: backend_id -> address.  A backend id belongs to one service. */
struct socklb_backend_val {
	__u32 addr[4]; /* network order, IPv4 as ::ffff:a.b.c.d */
	__u16 port;    /* network order */
	__u8 state;    /* SOCKLB_STATE_*, DRAINING for weight 0 */
	__u8 pad;
	__u32 svc_id; /* owner, to reject a reused id */
};

/* affinity: (client pod's netns cookie, service) -> backend. */
struct socklb_affinity_key {
	__u64 netns_cookie;
	__u32 svc_id;
	__u32 pad;
};

struct socklb_affinity_val {
	__u64 last_used_ns; /* bpf_ktime_get_ns() */
	__u32 backend_id;
	__u32 pad;
};

/* One translation remembered by a socket: replies from backend:backend_port
 * are shown as coming from vip:vip_port. */
struct socklb_sock_entry {
	__u32 vip[4];
	__u32 backend[4];
	__u16 vip_port;	    /* network order; 0 = unused entry */
	__u16 backend_port; /* network order */
	__u32 backend_id;
	__u32 svc_id;
	__u32 flags;	 /* SOCKLB_ENTRY_* */
	__u32 last_used; /* socklb_sock_dgram.clock at the last datagram sent */
	/* The service's list when the backend was chosen or last checked: a
	 * list is one version of the service (a backend's state or weight
	 * changing makes a new one, and list ids are not reused until they
	 * wrap), so while svc_id and list_id are the service's, the backend
	 * is still usable and its address is this entry's: a datagram takes
	 * it without looking the backend up. */
	__u32 list_id;
};

/* Socket-local storage (BPF_MAP_TYPE_SK_STORAGE), freed with the socket, in
 * two maps so that a TCP connect() allocates only what it needs:
 *   sock_conn:  struct socklb_sock_entry, from connect(): getpeername() and
 *               replies on a connected UDP socket;
 *   sock_dgram: struct socklb_sock_dgram, the flows of an unconnected UDP socket.
 * sock_dgram's value holds udp_flows_per_socket entries, not the maximum
 * declared here: the loader shrinks the array (its BTF and the map's value
 * size) before load, so a socket pays only for the flows it may remember. */
struct socklb_sock_dgram {
	__u64 cookie; /* the socket's cookie (for the mark, without a call) */
	__u32 next;   /* round-robin cursor into dgram */
	__u32 clock;  /* counts datagrams sent through dgram entries */
	__u32 recent; /* the entry of the last datagram (last_used == clock) */
	/* So that a datagram looks sock_conn up only on a socket that
	 * connect()ed through a service: it is skipped while no_conn && !had_conn.
	 * no_conn: the first datagram found no connect record; had_conn: the
	 * socket had one (set by a translated connect() or a datagram that
	 * found one, never cleared).  Two words, each written with one value
	 * only, so that a connect() racing a sendto() on the same socket
	 * cannot leave the pair saying "none" while a record exists. */
	__u32 no_conn;
	__u32 had_conn;
	__u32 pad;
	struct socklb_sock_entry dgram[SOCKLB_MAX_UDP_FLOWS]; /* last: resized */
};

/* sock_tcp: the record of a TCP socket socklb connected, in slot (cookie mod
 * SOCKLB_SOCK_TCP_SLOTS) of an array, where the kernel has cgroup/sock_release
 * and bpf_skc_to_mptcp_sock (tcp_by_cookie in bpf/maps.h): connect() claims
 * a free slot (cookie 0) with one compare-and-swap and writes the record,
 * the socket's release frees it, getpeername() and the iterators find it by
 * cookie.  No allocation and no lock on the connect path.  A slot held by
 * another open socket (its cookie is SOCKLB_SOCK_TCP_SLOTS away), an MPTCP
 * subflow (a kernel socket: no release program runs for it) and kernels
 * without those features use socket-local storage (sock_conn) instead. */
struct socklb_sock_slot {
	__u64 cookie; /* the owner's socket cookie; 0 = free */
	struct socklb_sock_entry e;
};

/* socklb_mark2: the last translation a socklb program made on this CPU.  One
 * per-CPU array shared by every socklb balancer on the machine (the loader
 * finds it by name and layout, see find_mark_map() in loader.c; it is never
 * pinned).  The programs of one system call run in a row on one CPU, child
 * cgroup first, so a program that finds a mark for its own socket and
 * destination, made in this call, knows an earlier socklb program already
 * translated the socket: it leaves it alone (nested attachments).  Rename the
 * map if the meaning of a field changes (socklb_mark held nanoseconds). */
#define SOCKLB_HOOK_CONNECT 1
#define SOCKLB_HOOK_SENDMSG 2
/* A mark older than this many jiffies (one tick: 1-10 ms) is never from the
 * same system call.  Jiffies rather than bpf_ktime_get_ns(): the verifier
 * inlines bpf_jiffies64() into one load, the clock read is a helper call on
 * every translation. */
#define SOCKLB_MARK_WINDOW_JIFFIES 1

struct socklb_mark {
	__u64 cookie;	    /* bpf_get_socket_cookie() of the translated socket */
	__u64 when_jiffies; /* bpf_jiffies64() of the translation */
	__u32 vip[4];	    /* what the application dialled */
	__u32 addr[4];	    /* what it was rewritten to */
	__u32 peer[4];	    /* the socket's peer before the call (bpf_sock dst) */
	__u16 vip_port;	    /* network order */
	__u16 port;	    /* network order, rewritten */
	__u16 peer_port;    /* network order, the socket's peer port before the call */
	__u16 hook;	    /* SOCKLB_HOOK_* */
	__u32 src_port;	    /* host order, the socket's local port before the call */
	__u32 state;	    /* the socket's state before the call */
};

/* Tracing (socklb trace): trace_ctl holds a lease, the bpf_ktime_get_ns()
 * time until which translation events go to the trace_events ring buffer.
 * A reader renews it while it reads; a reader that dies leaves a lease that
 * expires, so tracing turns itself off.  When off, a translation pays one
 * array lookup and a compare with 0 (the datapath clears an expired lease). */
#define SOCKLB_TRACE_RING_BYTES 1048576
#define SOCKLB_TRACE_TRANSLATED 1
#define SOCKLB_TRACE_NO_BACKEND 2
#define SOCKLB_TRACE_REFUSED 3

struct socklb_trace_ctl {
	__u64 lease_until_ns; /* 0 = off */
	__u64 dropped;	      /* events the ring buffer had no room for */
};

struct socklb_trace_event {
	__u64 ts_ns; /* bpf_ktime_get_ns() */
	__u64 cgroup_id;
	__u64 netns_cookie;
	__u64 cookie;	    /* the socket's */
	__u32 pid;	    /* thread group id */
	__u32 backend_id;   /* 0 when none was chosen */
	__u32 vip[4];	    /* what the application dialled */
	__u32 backend[4];   /* where it goes */
	__u16 vip_port;	    /* network order */
	__u16 backend_port; /* network order */
	__u8 hook;	    /* SOCKLB_HOOK_* */
	__u8 proto;	    /* SOCKLB_PROTO_* */
	__u8 outcome;	    /* SOCKLB_TRACE_* */
	__u8 v6;	    /* the hook was connect6/sendmsg6 */
	__u8 retried;	    /* the pick was retried (the list changed under it) */
	__u8 pad[3];
	char comm[16];
};

/* node_addrs: the node's addresses (key: 16 bytes, IPv4 v4-mapped) -> 1.
 * A connect()/sendmsg() to one of them whose exact (address, port) is not a
 * service finds the wildcard frontend of the port, if any. */
#define SOCKLB_MAX_NODE_ADDRS 1024

/* wild_ports: one bit per port (host order) that has a wildcard frontend,
 * 64 ports per entry: a destination that is not a service pays one inlined
 * array lookup before the wildcard lookup is tried. */
#define SOCKLB_WILD_PORT_WORDS 1024

/* node_cfg: the node, as the datapath needs it. */
struct socklb_node_cfg {
	__u64 netns_cookie; /* the node's network namespace; 0 = not known */
};

/* meta: one entry describing pinned state. */
struct socklb_meta {
	__u32 magic;	      /* SOCKLB_META_MAGIC (0x736c686c) */
	__u32 layout_version; /* SOCKLB_LAYOUT_VERSION of the writer */
	__u32 max_services;
	__u32 max_backends;
	__u32 max_slots;
	__u32 max_affinity;
	__u32 maglev_size;
	__u32 max_maglev;
	__u32 udp_flows; /* entries of each socket's sock_dgram value */
	__u32 pad;
};

/* attachments: cgroup id -> the cgroup's path, for pinned links. */
struct socklb_attach_info {
	char path[512];
};

/* Output of the listing socket iterators (socklb_iter.bpf.c, counting-only
 * object): one record per socket socklb connected to a doomed backend, which
 * the loader then terminates with sock_diag's SOCK_DESTROY (kernels without
 * bpf_sock_destroy).  Not a map: nothing is pinned. */
struct socklb_doomed_sock {
	__u32 src[4]; /* IPv4 in src[0] when family is AF_INET */
	__u32 dst[4];
	__u16 sport;   /* network order */
	__u16 dport;   /* network order */
	__u32 ifindex; /* the socket's bound device, 0 if none */
	__u8 family;
	__u8 protocol;
	__u8 pad[2];
};
