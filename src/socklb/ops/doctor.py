"""``socklb doctor``: what this machine can do for socklb, and what follows.

:func:`report` gathers the kernel release, the cgroup v2 mount (a hybrid
layout, cgroup v1 controllers beside a cgroup2 mount such as
``/sys/fs/cgroup/unified``, is found too), bpffs, BTF, each feature of
:data:`socklb._native.features.FEATURES` and the process's privileges; ``verdict``
says what socklb can do here.  Nothing is written (the feature probe loads
small test programs and unloads them).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

from socklb._native import features
from socklb.datapath import pins
from socklb.datapath.cgroup import MOUNTINFO, parse_mountinfo
from socklb.ops.output import table

__all__ = ["report", "text"]

_CAPS = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}


def _caps() -> Dict[str, bool]:
    eff = 0
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    eff = int(line.split()[1], 16)
    except OSError:
        pass
    return {name: bool(eff >> bit & 1) for name, bit in _CAPS.items()}


def _mounts() -> Dict[str, Any]:
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            entries = parse_mountinfo(f.read())
    except OSError as e:
        return {"cgroup2": None, "cgroup_v1": [], "layout": f"unknown ({e})", "bpffs": []}
    v2 = [e.mount_point for e in entries if e.fstype == "cgroup2"]
    v1 = [e.mount_point for e in entries if e.fstype == "cgroup"]
    layout = "unified (cgroup v2 only)" if v2 and not v1 else "hybrid (cgroup v1 and v2)" if v2 else "cgroup v1 only"
    return {
        "cgroup2": v2[0] if v2 else None,
        "cgroup_v1": v1,
        "layout": layout,
        "bpffs": [e.mount_point for e in entries if e.fstype == "bpf"],
    }


def report() -> Dict[str, Any]:
    """The facts and the verdict, as plain data."""
    fallback = {f.name: f.fallback for f in features.FEATURES}
    root = os.geteuid() == 0
    caps = _caps()
    privileged = caps["CAP_SYS_ADMIN"] or (caps["CAP_BPF"] and caps["CAP_NET_ADMIN"])
    m = _mounts()
    bpffs_default = False
    try:
        bpffs_default = os.path.isdir(pins.DEFAULT_BPFFS) and pins.is_bpffs(pins.DEFAULT_BPFFS)
    except Exception:
        bpffs_default = False
    btf = os.path.exists("/sys/kernel/btf/vmlinux")
    probed = privileged
    missing = {f.name for f in features.missing()} if probed else set()
    feats: List[Dict[str, Any]] = [
        {
            "name": f.name,
            "description": f.description,
            "kernel": f.kernel,
            "required": f.required,
            "present": (f.name not in missing) if probed else None,
        }
        for f in features.FEATURES
    ]
    try:
        with open("/proc/sys/kernel/bpf_stats_enabled", encoding="ascii") as fh:
            bpf_stats = fh.read().strip() == "1"
    except OSError:
        bpf_stats = False
    required_ok = probed and not any(f["required"] and not f["present"] for f in feats)
    can = bool(privileged and required_ok and m["cgroup2"])
    notes = []
    if not privileged:
        notes.append("not privileged: loading and attaching need CAP_BPF + CAP_NET_ADMIN, or CAP_SYS_ADMIN (root)")
    for f in feats:
        if f["present"] is False:
            what = "socklb cannot load" if f["required"] else fallback[f["name"]]
            notes.append(f"missing {f['description']} (Linux {f['kernel']}): {what}")
    if not m["cgroup2"]:
        notes.append("no cgroup v2 mount: mount one (mount -t cgroup2 none /sys/fs/cgroup/unified)")
    elif m["cgroup_v1"]:
        notes.append(f"hybrid cgroup layout: attach to directories below {m['cgroup2']}")
    if not bpffs_default:
        notes.append(f"no bpffs at {pins.DEFAULT_BPFFS}: a pinned balancer mounts it on first use")
    if not btf:
        notes.append("no kernel BTF (/sys/kernel/btf/vmlinux): socket termination is unavailable")
    # Both ways of terminating run socket iterators, which load against the
    # kernel's BTF: bpf_sock_destroy in them, else sock_diag's SOCK_DESTROY.
    sock_diag = "diag_destroy" not in missing and "iter_storage" not in missing
    term = bool(probed and btf and ("sock_destroy" not in missing or sock_diag))
    return {
        "kernel": os.uname().release,
        "cgroup": {"cgroup2_mount": m["cgroup2"], "layout": m["layout"], "cgroup_v1_mounts": m["cgroup_v1"]},
        "bpffs": {"mounts": m["bpffs"], "default_mounted": bpffs_default},
        "btf": btf,
        "bpf_stats_enabled": bpf_stats,
        "privileges": {"euid": os.geteuid(), "root": root, **caps, "sufficient": bool(privileged)},
        "features": feats,
        "verdict": {
            "can_balance": can,
            "socket_termination": term,
            "pinned_state": True,
            "notes": notes,
        },
    }


def text(r: Dict[str, Any]) -> str:
    def yn(v: object) -> str:
        return "yes" if v is True else "no" if v is False else "not probed (needs privileges)"

    p = r["privileges"]
    lines = [
        f"Kernel:          {r['kernel']}",
        f"cgroup v2:       {r['cgroup']['cgroup2_mount'] or 'not mounted'} ({r['cgroup']['layout']})",
        f"bpffs:           {', '.join(r['bpffs']['mounts']) or 'not mounted'}",
        f"BTF:             {yn(r['btf'])}",
        "bpf_stats:       "
        + ("enabled" if r["bpf_stats_enabled"] else "disabled (sysctl kernel.bpf_stats_enabled=1 to time programs)"),
        "Privileges:      "
        + f"euid {p['euid']}, "
        + ", ".join(f"{k} {'yes' if p[k] else 'no'}" for k in _CAPS)
        + f" -> {'sufficient' if p['sufficient'] else 'insufficient'}",
        "",
        table(
            ["FEATURE", "KERNEL", "NEEDED", "PRESENT", "WHAT"],
            [
                [
                    f["name"],
                    f["kernel"],
                    "required" if f["required"] else "optional",
                    yn(f["present"]),
                    f["description"],
                ]
                for f in r["features"]
            ],
        ),
        "",
    ]
    v = r["verdict"]
    lines.append(f"socklb can balance here: {yn(v['can_balance'])}")
    lines.append(f"sockets on removed backends terminated: {yn(v['socket_termination'])}")
    lines += [f"  - {n}" for n in v["notes"]]
    return "\n".join(lines)
