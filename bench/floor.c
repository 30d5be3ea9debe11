/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * bench/libfloor.so: the measurement floor of bench/hook_cost.py, a shared
 * library that bench/build.py builds and bench/hook_cost.py loads with
 * ctypes.  It is the bench's own: socklb's extension does not ship it.
 *
 * floor_attach() loads a program that does nothing but allow (r0 = 1; exit),
 * of type cgroup sock_addr for hook FLOOR_CONNECT4 or FLOOR_SENDMSG4, and
 * attaches it to the cgroup with a bpf_link after what is there.  Its
 * bpf_stats cost is what the kernel's clock reads and program dispatch take
 * on this machine.  It returns the program fd and sets *link_fd (close both
 * to detach), or a negative errno.
 *
 * floor_prog_stats() reads a program's kernel statistics by fd (they count
 * while kernel.bpf_stats_enabled=1): 0, or a negative errno.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <linux/bpf.h>
#include <bpf/bpf.h>

#define FLOOR_CONNECT4 0
#define FLOOR_SENDMSG4 1

int floor_attach(int hook, int cgroup_fd, int *link_fd)
{
	const struct bpf_insn insns[] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 1 },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	enum bpf_attach_type type;
	int prog, link;

	if (hook == FLOOR_CONNECT4)
		type = BPF_CGROUP_INET4_CONNECT;
	else if (hook == FLOOR_SENDMSG4)
		type = BPF_CGROUP_UDP4_SENDMSG;
	else
		return -EINVAL;
	LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = type);
	prog = bpf_prog_load(BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
			     hook == FLOOR_CONNECT4 ? "floor_connect4" : "floor_sendmsg4", "GPL", insns, 2, &opts);
	if (prog < 0)
		return -errno;
	link = bpf_link_create(prog, cgroup_fd, type, NULL);
	if (link < 0) {
		int err = -errno;

		close(prog);
		return err;
	}
	*link_fd = link;
	return prog;
}

int floor_prog_stats(int prog_fd, uint64_t *run_cnt, uint64_t *run_time_ns)
{
	struct bpf_prog_info info;
	__u32 len = sizeof(info);

	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(prog_fd, &info, &len))
		return -errno;
	*run_cnt = info.run_cnt;
	*run_time_ns = info.run_time_ns;
	return 0;
}
