"""The four ways a client reaches a service, each in a lab of its own.

Every mode gets an identical :class:`socklb.testing.lab.Lab`: a client pod and
``backends`` backend pods, each running ``bench/bin/server`` (TCP and UDP).
One lab per mode keeps each mode's state to itself: iptables and nftables
rules (and the connection tracking they switch on in the node namespace) stay
loaded while other modes are measured without touching their traffic, and a
50,000-service ruleset is loaded once per scale instead of once per round.

- ``direct``: the client dials backend pod addresses itself (the physical limit);
- ``socklb``: a :class:`socklb.Balancer` attached to the client pod's cgroup;
- ``iptables``: kube-proxy iptables-mode rules in the node namespace;
- ``nftables``: kube-proxy nftables-mode rules in the node namespace.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from bench import rules
from bench.rules import Svc, Table
from bench.system import CpuSample, busy_fraction, cpu_sample, proc_cpu_seconds
from socklb.testing.lab import Lab, Pod, Sandbox

__all__ = [
    "MODES",
    "TCP_PORT",
    "UDP_PORT",
    "SVC_TCP_PORT",
    "SVC_UDP_PORT",
    "Workload",
    "ModeLab",
    "services_for_scale",
    "make_mode",
    "Arm",
    "direct_targets",
    "run_sliced",
]

MODES = ("socklb", "iptables", "nftables", "direct", "detached")
#: Where the backend servers listen.
TCP_PORT = 8080
UDP_PORT = 5353
#: The service ports clients dial.
SVC_TCP_PORT = 80
SVC_UDP_PORT = 53
#: The sliced A/B's UDP services: port 54 + i has one endpoint, backend pod
#: i, and the load generator's thread i dials it (or, direct, the pod).  A
#: UDP socket keeps its backend for the whole run, so with several endpoints
#: a run's outcome would hang on which pods the client's sockets happened to
#: share.
SVC_UDP_ONE_PORT = 54
#: The measured services' address: the same at every scale.  (A client that
#: reuses ports must keep dialling the same VIP: TCP derives a connection's
#: initial sequence number and timestamp offset from the address it dials, so
#: after a VIP change, SYNs that DNAT onto a server TIME_WAIT socket of the
#: same 4-tuple are refused half of the time and retried a second later.)
MEASURED_VIP = "10.96.0.10"
#: Endpoints per filler service in the data-plane tables.
FILLER_ENDPOINTS = 2


@dataclass(frozen=True)
class Workload:
    proto: str  # "tcp" (connect/request/response/close) | "udp" (request/response)
    duration: float
    warmup: float
    concurrency: int
    req_size: int
    resp_size: int


def services_for_scale(
    n: int, backend_ips: Sequence[str], filler_endpoints: int = FILLER_ENDPOINTS
) -> Tuple[List[Svc], int]:
    """``n`` TCP services plus the measured UDP services, and the index of the
    measured TCP service (the middle of the table; the UDP one follows it, then
    the one-endpoint UDP service of the sliced A/B).

    Filler services have ``filler_endpoints`` endpoints each: the backend pods
    on ports 8080, 8081, ... (fillers are never dialled).  The measured
    services have one endpoint per backend pod.
    """
    if n < 1:
        raise ValueError("a scale needs at least one service")
    if n > 60000:
        raise ValueError("at most 60,000 services fit the layout")
    fill = tuple((backend_ips[j % len(backend_ips)], TCP_PORT + j // len(backend_ips)) for j in range(filler_endpoints))
    mid = n // 2
    out: List[Svc] = []
    for i in range(n):
        if i == mid:
            eps = tuple((ip, TCP_PORT) for ip in backend_ips)
            out.append(Svc("bench", "measured", MEASURED_VIP, SVC_TCP_PORT, "tcp", eps))
            ueps = tuple((ip, UDP_PORT) for ip in backend_ips)
            out.append(Svc("bench", "measured", MEASURED_VIP, SVC_UDP_PORT, "udp", ueps))
            for j, ip in enumerate(backend_ips):
                out.append(Svc("bench", "measured", MEASURED_VIP, SVC_UDP_ONE_PORT + j, "udp", ((ip, UDP_PORT),)))
        else:
            # Fillers from 10.96.1.0 up: never the measured address.
            out.append(Svc("bench", f"svc-{i}", rules.vip(255 + i), SVC_TCP_PORT, "tcp", fill))
    return out, mid


class ModeLab:
    """A lab for one mode: client pod, backend pods with servers, and the mode's
    service tables.  Subclasses implement :meth:`program` and :meth:`targets`."""

    name = "base"

    def __init__(
        self, n_backends: int, bins: Dict[str, str], server_threads: int = 1, pin: Optional[Tuple[str, str]] = None
    ) -> None:
        self.bins = bins
        #: CPU lists (taskset) for the load generator and the servers, or None.
        self.pin = pin
        self.lab = Lab()
        self.servers: List[subprocess.Popen[str]] = []
        try:
            self.client: Pod = self.lab.add_pod("client")
            self.backends: List[Pod] = [self.lab.add_pod(f"b{i + 1}") for i in range(n_backends)]
            for pod in self.backends:
                self.servers.append(self._start_server(pod, server_threads))
        except BaseException:
            self.lab.close()
            raise
        self.services: List[Svc] = []
        self.mid = 0
        self.load_info: Dict[str, Any] = {}

    def _start_server(self, pod: Pod, threads: int) -> subprocess.Popen[str]:
        argv = [self.bins["server"], "--tcp", str(TCP_PORT), "--udp", str(UDP_PORT), "--threads", str(threads)]
        if self.pin:
            argv = ["taskset", "-c", self.pin[1], *argv]
        proc: subprocess.Popen[str] = pod.popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"bench server in {pod.name} did not start (exit {proc.poll()})")
        return proc

    @property
    def backend_ips(self) -> List[str]:
        return [p.ipv4 for p in self.backends]

    # -- per mode ----------------------------------------------------------------

    def program(self, services: List[Svc], mid: int) -> Dict[str, Any]:
        """Install the service table; returns timings and sizes."""
        self.services, self.mid = services, mid
        return {}

    def targets(self, proto: str) -> List[str]:
        """What the load generator dials for this workload."""
        svc = self.services[self.mid + (1 if proto == "udp" else 0)]
        return [f"{svc.ip}:{svc.port}"]

    def sliced_targets(self, proto: str) -> List[str]:
        """What the load generator dials in the sliced A/B: as in the rounds
        for TCP; for UDP the one-endpoint services, one per thread (see
        SVC_UDP_ONE_PORT)."""
        if proto != "udp":
            return self.targets(proto)
        return [f"{s.ip}:{s.port}" for s in self.services[self.mid + 2 : self.mid + 2 + len(self.backends)]]

    def before_run(self) -> None:
        pass

    def after_run(self) -> None:
        pass

    def close(self) -> None:
        try:
            for proc in self.servers:
                proc.terminate()
            for proc in self.servers:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                if proc.stdout is not None:
                    proc.stdout.close()
        finally:
            self.lab.close()

    # -- measuring ---------------------------------------------------------------

    def loadgen_argv(self, w: Workload, seed: int, targets: Sequence[str], extra: Sequence[str] = ()) -> List[str]:
        """The load generator's command line for a workload (pinned to the client CPUs)."""
        argv = [
            self.bins["loadgen"],
            "--proto",
            w.proto,
            "--duration",
            repr(w.duration),
            "--warmup",
            repr(w.warmup),
            "--concurrency",
            str(w.concurrency),
            "--req-size",
            str(w.req_size),
            "--resp-size",
            str(w.resp_size),
            "--seed",
            str(seed),
            *extra,
        ]
        for t in targets:
            argv += ["--target", t]
        if self.pin:
            argv = ["taskset", "-c", self.pin[0], *argv]
        return argv

    def run_load(self, w: Workload, seed: int = 1) -> Dict[str, Any]:
        """Run the load generator in the client pod; returns its JSON plus CPU use."""
        argv = self.loadgen_argv(w, seed, self.targets(w.proto))
        pids = [p.pid for p in self.servers]
        self.before_run()
        try:
            c0, s0, t0 = cpu_sample(), proc_cpu_seconds(pids), time.monotonic()
            r = self.client.run(argv, timeout=w.duration + w.warmup + 60)
            c1, s1, t1 = cpu_sample(), proc_cpu_seconds(pids), time.monotonic()
        finally:
            self.after_run()
        out: Dict[str, Any] = json.loads(r.stdout)
        done = max(int(out["completed_total"]), 1)
        client_cpu = float(out["cpu_s"]["user"]) + float(out["cpu_s"]["sys"])
        out["cpu"] = {
            **cpu_use(c0, c1, t1 - t0, client_cpu + (s1 - s0)),
            "server_s": s1 - s0,
            "client_s": client_cpu,
            "server_us_per_req": (s1 - s0) * 1e6 / done,
            "client_us_per_req": client_cpu * 1e6 / done,
            "elapsed_s": t1 - t0,
        }
        return out


class DirectLab(ModeLab):
    name = "direct"

    def targets(self, proto: str) -> List[str]:
        port = UDP_PORT if proto == "udp" else TCP_PORT
        return [f"{ip}:{port}" for ip in self.backend_ips]


class SocklbLab(ModeLab):
    name = "socklb"

    def __init__(
        self, n_backends: int, bins: Dict[str, str], server_threads: int = 1, pin: Optional[Tuple[str, str]] = None
    ) -> None:
        super().__init__(n_backends, bins, server_threads, pin)
        from socklb import Balancer

        try:
            self.balancer = Balancer(max_services=65536, max_backends=1 << 20)
            self.empty_memlock = self.memlock()
            self.attachment = self.balancer.attach(self.client.cgroup)
        except BaseException:
            super().close()
            raise

    def to_services(self, services: List[Svc]) -> List[Any]:
        from socklb import Backend, Service

        return [Service(s.ip, s.port, s.protocol, [Backend(ip, port) for ip, port in s.endpoints]) for s in services]

    def program(self, services: List[Svc], mid: int) -> Dict[str, Any]:
        super().program(services, mid)
        values = self.to_services(services)
        t0 = time.perf_counter()
        res = self.balancer.sync(values)
        t1 = time.perf_counter()
        return {
            "sync_s": t1 - t0,
            "map_writes": res.map_writes,
            "memlock_bytes": self.memlock(),
            "memlock_empty_bytes": self.empty_memlock,
        }

    def memlock(self) -> Dict[str, int]:
        """Kernel memory charged to each map (``memlock:`` in fdinfo)."""
        return self.balancer.map_memory()

    def close(self) -> None:
        try:
            self.balancer.close()
        finally:
            super().close()


class DetachedLab(ModeLab):
    """The socklb lab itself (its client, pods, servers and CPU placement) with
    the balancer detached while it runs, the client dialling the backend pods:
    socklb against direct with nothing else different, where "direct" compares
    two labs (other namespaces, other server processes)."""

    name = "detached"

    def __init__(self, socklb: SocklbLab) -> None:
        self.socklb = socklb
        self.bins, self.pin, self.lab = socklb.bins, socklb.pin, socklb.lab
        self.client, self.backends, self.servers = socklb.client, socklb.backends, socklb.servers
        self.services, self.mid, self.load_info = [], 0, {}

    def targets(self, proto: str) -> List[str]:
        port = UDP_PORT if proto == "udp" else TCP_PORT
        return [f"{ip}:{port}" for ip in self.backend_ips]

    def before_run(self) -> None:
        self.socklb.attachment.detach()

    def after_run(self) -> None:
        self.socklb.attachment = self.socklb.balancer.attach(self.client.cgroup)

    def close(self) -> None:
        pass  # the socklb lab closes what is shared


class IptablesLab(ModeLab):
    name = "iptables"

    def program(self, services: List[Svc], mid: int) -> Dict[str, Any]:
        super().program(services, mid)
        self.clear()
        text = rules.iptables_restore(Table(services))
        t0 = time.perf_counter()
        self.lab.node.run(["iptables-restore"], input=text, timeout=1800)
        t1 = time.perf_counter()
        return {"restore_s": t1 - t0, "lines": text.count("\n"), "bytes": len(text)}

    def clear(self) -> None:
        # iptables-nft keeps empty tables (and their hooks) after a flush: delete them.
        for table in ("nat", "filter"):
            self.lab.node.run(["nft", "delete", "table", "ip", table], timeout=600, check=False)


class NftablesLab(ModeLab):
    name = "nftables"

    def clear(self) -> None:
        self.lab.node.run(["nft", "delete", "table", "ip", rules.NFT_TABLE], timeout=600, check=False)

    chunk = 500

    def program(self, services: List[Svc], mid: int) -> Dict[str, Any]:
        super().program(services, mid)
        self.clear()
        texts = rules.nft_transactions(services, self.chunk)
        t0 = time.perf_counter()
        for text in texts:
            self.lab.node.run(["nft", "-f", "-"], input=text, timeout=1800)
        t1 = time.perf_counter()
        return {
            "load_s": t1 - t0,
            "transactions": len(texts),
            "services_per_transaction": self.chunk,
            "lines": sum(t.count("\n") for t in texts),
        }


def cpu_use(c0: CpuSample, c1: CpuSample, elapsed: float, own_cpu_s: float) -> Dict[str, Any]:
    """The machine's CPU use between two samples, with the share taken by
    anything but the measured processes (``own_cpu_s`` of CPU time: load
    generators and servers), i.e. other processes and the hypervisor's steal:
    noise, reported per run, with the steal on its own."""
    busy = busy_fraction(c0, c1)
    ncpu = max(len(busy["per_cpu_busy"]), 1)
    foreign = busy["busy"] * elapsed * ncpu - own_cpu_s
    return {
        **busy,
        "foreign_share": round(max(foreign, 0.0) / (elapsed * ncpu), 3),
        "steal_share": round(float(busy["steal"]), 3),
    }


@dataclass(frozen=True)
class Arm:
    """One arm of a time-sliced run: who runs the load generator, where, and what it dials."""

    name: str
    lab: ModeLab
    place: Sandbox
    targets: Tuple[str, ...]


def direct_targets(lab: ModeLab, proto: str) -> Tuple[str, ...]:
    """What a direct arm of the sliced A/B dials: the backend pods (for UDP in
    the order of the one-endpoint services, see SVC_UDP_ONE_PORT)."""
    port = UDP_PORT if proto == "udp" else TCP_PORT
    return tuple(f"{ip}:{port}" for ip in lab.backend_ips)


def run_sliced(
    arms: Sequence[Arm], w: Workload, slice_s: float, seed: int, blocks: int = 5, start_delay: float = 0.5
) -> Dict[str, Any]:
    """Run one load generator per arm, time-sharing the client CPU in slices of
    ``slice_s`` (loadgen ``--slices``): every cycle gives each arm one slice, in
    an order drawn from ``seed``, so that the machine's noise hits all arms
    alike.  ``w.duration`` and ``w.warmup`` are the run's, shared by the arms.
    Returns each arm's JSON (with its ``slices``) and the run's CPU use."""
    if len(arms) < 2:
        raise ValueError("a sliced run needs at least two arms")
    start = time.monotonic_ns() + int(start_delay * 1e9)
    slice_ns = int(slice_s * 1e9)
    servers = sorted({p.pid for a in arms for p in a.lab.servers})
    procs: List[Tuple[Arm, subprocess.Popen[str]]] = []
    c0, s0, t0 = cpu_sample(), proc_cpu_seconds(servers), time.monotonic()
    try:
        for i, arm in enumerate(arms):
            extra = ["--slices", f"{start}:{slice_ns}:{len(arms)}:{i}:{seed}", "--blocks", str(blocks)]
            argv = arm.lab.loadgen_argv(w, seed + i, arm.targets, extra)
            procs.append((arm, arm.place.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        out: Dict[str, Any] = {"arms": {}}
        limit = start_delay + w.warmup + w.duration + 60
        for arm, proc in procs:
            so, se = proc.communicate(timeout=limit)
            if proc.returncode != 0:
                raise RuntimeError(f"loadgen of arm {arm.name} exited with {proc.returncode}: {se.strip()[-500:]}")
            out["arms"][arm.name] = json.loads(so)
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    c1, s1, t1 = cpu_sample(), proc_cpu_seconds(servers), time.monotonic()
    client = sum(float(r["cpu_s"]["user"]) + float(r["cpu_s"]["sys"]) for r in out["arms"].values())
    out["cpu"] = {**cpu_use(c0, c1, t1 - t0, client + (s1 - s0)), "elapsed_s": t1 - t0}
    out["slice_s"] = slice_s
    out["seed"] = seed
    return out


@dataclass
class Modes:
    labs: Dict[str, ModeLab] = field(default_factory=dict)

    def close(self) -> List[str]:
        problems = []
        for name, lab in self.labs.items():
            try:
                lab.close()
            except Exception as e:
                problems.append(f"{name}: {e}")
        self.labs.clear()
        return problems


def make_mode(
    name: str, n_backends: int, bins: Dict[str, str], server_threads: int = 1, pin: Optional[Tuple[str, str]] = None
) -> ModeLab:
    if name == "detached":
        raise ValueError("the detached mode shares the socklb lab: see Modes.add")
    cls = {"direct": DirectLab, "socklb": SocklbLab, "iptables": IptablesLab, "nftables": NftablesLab}[name]
    return cls(n_backends, bins, server_threads, pin)


def conntrack_count(lab: ModeLab) -> Optional[int]:
    """Entries in the node namespace's connection tracking table, if it is on."""
    try:
        r = lab.lab.node.run(["cat", "/proc/sys/net/netfilter/nf_conntrack_count"], timeout=10, check=False)
    except Exception:
        return None
    text = r.stdout.strip()
    return int(text) if text.isdigit() else None


def wait_quiet(max_wait: float = 10.0, threshold: float = 0.15, sample: float = 0.25) -> float:
    """Wait (at most ``max_wait`` s) until the machine's CPUs are mostly idle;
    returns the last busy share seen.  Other work on the machine is noise."""
    deadline = time.monotonic() + max_wait
    while True:
        a = cpu_sample()
        time.sleep(sample)
        busy = float(busy_fraction(a, cpu_sample())["busy"])
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def default_pinning() -> Optional[Tuple[str, str]]:
    """Client on CPU 0, servers on the others (None with a single CPU)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return (str(cpus[0]), ",".join(str(c) for c in cpus[1:]))
