"""Facts about the machine, CPU accounting, and the kernel's BPF statistics switch."""

from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

__all__ = [
    "machine_info",
    "ipvs_status",
    "CpuSample",
    "cpu_sample",
    "proc_cpu_seconds",
    "bpf_stats",
    "rss_kib",
]


def _cmd_version(argv: Sequence[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr).strip() else "?"


def ipvs_status() -> str:
    """Whether IPVS (kube-proxy's third mode) could be benchmarked here."""
    if os.path.exists("/proc/net/ip_vs"):
        return "available (/proc/net/ip_vs exists)"
    detail = ""
    if shutil.which("modprobe"):
        try:
            r = subprocess.run(["modprobe", "-n", "ip_vs"], capture_output=True, text=True, timeout=10, check=False)
            detail = (r.stderr or r.stdout).strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            detail = str(e)
    config = _kernel_config("CONFIG_IP_VS")
    parts = ["not available: /proc/net/ip_vs does not exist"]
    if config:
        parts.append(config)
    if detail:
        parts.append(f"modprobe -n ip_vs: {detail}")
    return "; ".join(parts)


def _kernel_config(option: str) -> str:
    import gzip

    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith(option + "=") or line.startswith(f"# {option} is not set"):
                    return line.strip()
    except OSError:
        pass
    return ""


def machine_info() -> Dict[str, Any]:
    """Kernel, CPU, cores, memory and tool versions, for the record."""
    cpu = "?"
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and cpu == "?":
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1]
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            m = re.search(r"MemTotal:\s+(\d+)", f.read())
            mem_kib = int(m.group(1)) if m else 0
    except OSError:
        pass
    virt = "hypervisor" in flags.split()
    return {
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "arch": platform.machine(),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "virtualized": virt,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "iptables": _cmd_version(["iptables", "--version"]),
        "nft": _cmd_version(["nft", "--version"]),
        "gcc": _cmd_version(["gcc", "--version"]),
        "ipvs": ipvs_status(),
        "preempt": _kernel_config("CONFIG_PREEMPT_DYNAMIC") or _kernel_config("CONFIG_PREEMPT"),
    }


# --- CPU accounting ----------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    """Jiffies from /proc/stat per line ("cpu", "cpu0", ...): (total, idle + iowait, softirq, steal).

    *steal* is time the hypervisor ran something else while this guest had
    work for the CPU: on a shared VM it is the noise no process here causes."""

    lines: Dict[str, Tuple[int, int, int, int]]


def cpu_sample() -> CpuSample:
    out: Dict[str, Tuple[int, int, int, int]] = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *rest = line.split()
            fields = [int(x) for x in rest]
            # user nice system idle iowait irq softirq steal guest guest_nice
            out[name] = (sum(fields[:8]), fields[3] + fields[4], fields[6], fields[7])
    return CpuSample(out)


def busy_fraction(a: CpuSample, b: CpuSample) -> Dict[str, Any]:
    """Share of all CPUs that was busy (and in softirq, and stolen by the
    hypervisor) between two samples, and per CPU.  Steal counts as busy: the
    CPU was not available to this machine."""
    out: Dict[str, Any] = {"busy": 0.0, "softirq": 0.0, "steal": 0.0, "per_cpu_busy": {}}
    for name, (t1, i1, s1, st1) in b.lines.items():
        t0, i0, s0, st0 = a.lines.get(name, (t1, i1, s1, st1))
        total = t1 - t0
        busy = 1 - (i1 - i0) / total if total > 0 else 0.0
        if name == "cpu":
            out["busy"] = busy
            out["softirq"] = (s1 - s0) / total if total > 0 else 0.0
            out["steal"] = (st1 - st0) / total if total > 0 else 0.0
        else:
            out["per_cpu_busy"][name] = round(busy, 3)
    return out


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of the processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                text = f.read()
        except OSError:
            continue
        rest = text[text.rindex(")") + 2 :].split()
        total += int(rest[11]) + int(rest[12])  # utime, stime (fields 14, 15)
    return total / _CLK_TCK


def rss_kib(pid: Optional[int] = None) -> int:
    with open(f"/proc/{pid or 'self'}/status", encoding="ascii") as f:
        m = re.search(r"VmRSS:\s+(\d+)", f.read())
    return int(m.group(1)) if m else 0


# --- BPF statistics ----------------------------------------------------------

_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "s390x": 351, "ppc64le": 361}
_BPF_ENABLE_STATS = 32
_BPF_STATS_RUN_TIME = 0


class bpf_stats:
    """Context manager: the kernel counts run_cnt/run_time_ns of every BPF program
    while it is entered.

    It uses the BPF_ENABLE_STATS command, whose effect ends when its fd is
    closed - even if this process dies - and falls back to the
    ``kernel.bpf_stats_enabled`` sysctl (restoring the old value) where the
    command is missing.  ``how`` says which one was used.
    """

    def __init__(self) -> None:
        self._fd = -1
        self._old: Optional[str] = None
        self.how = ""

    def __enter__(self) -> bpf_stats:
        nr = _NR_BPF.get(platform.machine())
        if nr is not None:
            libc = ctypes.CDLL(None, use_errno=True)
            attr = ctypes.create_string_buffer(8)
            ctypes.c_uint32.from_buffer(attr).value = _BPF_STATS_RUN_TIME
            fd = libc.syscall(nr, _BPF_ENABLE_STATS, attr, 8)
            if fd >= 0:
                self._fd = int(fd)
                self.how = "BPF_ENABLE_STATS"
                return self
        path = "/proc/sys/kernel/bpf_stats_enabled"
        with open(path, encoding="ascii") as f:
            self._old = f.read().strip()
        with open(path, "w", encoding="ascii") as f:
            f.write("1\n")
        self.how = "sysctl kernel.bpf_stats_enabled=1"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._old is not None:
            with open("/proc/sys/kernel/bpf_stats_enabled", "w", encoding="ascii") as f:
                f.write(self._old + "\n")
            self._old = None
