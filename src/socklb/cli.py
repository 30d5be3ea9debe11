"""The ``socklb`` command.

``socklb demo`` builds a lab (a node namespace, a client pod and backend pods),
programs a service, attaches to the client pod's cgroup and shows where a few
hundred connections to the service address went.  ``socklb cleanup`` removes
what a crashed lab left behind.  ``socklb kubernetes`` is the node agent: it
watches the API server and balances the Services for the pods of one cgroup.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from .errors import SocklbError

if TYPE_CHECKING:
    from .lab import Pod

__all__ = ["main"]


def _bar(n: int, total: int, width: int = 40) -> str:
    return "#" * round(width * n / total) if total else ""


def demo(backends: int, connections: int, quiet: bool = False) -> int:
    """Run the demo; returns the process exit status."""
    from . import Backend, Balancer, Service
    from .lab import SERVICE_CIDR4, Lab

    def say(*a: object) -> None:
        if not quiet:
            print(*a, flush=True)

    vip4, vip6, port, target = "10.96.0.10", "fd00:96::a", 80, 8080
    failed = False
    with Lab() as lab:
        client = lab.add_pod("client")
        pods = [lab.add_pod(f"backend-{i + 1}") for i in range(backends)]
        for p in pods:
            p.serve(p.name, tcp=[target])
        say(f"lab {lab.id}: node namespace, client pod {client.ipv4} / {client.ipv6}")
        for p in pods:
            say(f"  {p.name}: {p.ipv4} / {p.ipv6}, serving tcp/{target}")
        say(f"service CIDRs {SERVICE_CIDR4} and the IPv6 one are unreachable routes in the node namespace")

        before = _dial(client, vip4, port, 1)
        why = before["errors"][0] if before["errors"] else "it did not fail?!"
        say(f"\nwithout socklb, connect({vip4}:{port}) fails: {why} (the VIP is an unreachable route)")

        with Balancer() as lb:
            svc4 = Service(vip4, port, "tcp", [Backend(p.ipv4, target) for p in pods])
            svc6 = Service(vip6, port, "tcp", [Backend(p.ipv6, target) for p in pods])
            lb.upsert(svc4)
            lb.upsert(svc6)
            lb.attach(client.cgroup)
            say(f"programmed {svc4} and {svc6} with {backends} backends each; attached to {client.cgroup}")
            for host in (vip4, vip6, "::ffff:" + vip4):
                t0 = time.monotonic()
                res = _dial(client, host, port, connections)
                dt = time.monotonic() - t0
                served = Counter(res["served"])
                peers = Counter(res["peers"])
                label = _peer(host, port)
                say(f"\n{connections} connections to {label} in {dt:.2f} s, {len(res['errors'])} failed")
                for name in sorted(served):
                    say(f"  {name:<12} {served[name]:>5}  {_bar(served[name], connections)}")
                say("  getpeername() returned: " + ", ".join(f"{p} x{c}" for p, c in peers.items()))
                if res["errors"] or len(served) != backends or set(peers) != {_peer(host, port)}:
                    failed = True
                    for e in res["errors"][:5]:
                        say(f"  error: {e}")
            c = lb.counters()
            say(
                f"\ndatapath counters: {c['connect']} connects translated, "
                f"{c['getpeername']} getpeername() answers rewritten"
            )
    say("\nlab removed" + ("; the demo FAILED" if failed else "; every backend served, every peer was the VIP"))
    return 1 if failed else 0


def _peer(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dial(pod: Pod, host: str, port: int, n: int) -> Dict[str, List[str]]:
    argv = [sys.executable, "-m", "socklb.labclient", "tcp", host, str(port), "-n", str(n)]
    out: Dict[str, List[str]] = json.loads(pod.run(argv, timeout=300).stdout)
    return out


def _api_client(kubeconfig: Optional[str], context: Optional[str]) -> Any:
    """An ApiClient from a kubeconfig file, else the in-cluster service account."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return client.ApiClient(cfg)


def kubernetes_agent(args: argparse.Namespace) -> int:
    """Run the node agent until SIGTERM or SIGINT; returns the exit status."""
    from . import Balancer
    from .kubernetes import Agent

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log = logging.getLogger("socklb.agent")
    if not args.node_name:
        print("socklb kubernetes: give --node-name or set NODE_NAME", file=sys.stderr)
        return 2
    try:
        api = _api_client(args.kubeconfig, args.context)
    except Exception as e:  # no kubeconfig, not in a cluster: say so, no traceback
        where = args.kubeconfig or "the in-cluster service account"
        print(f"socklb kubernetes: cannot configure the API client from {where}: {e}", file=sys.stderr)
        return 2
    limits = {"max_services": args.max_services, "max_backends": args.max_backends}
    lb = Balancer(pin_dir=args.pin_dir, **limits) if args.pin_dir else Balancer(**limits)
    try:
        adopted = {a.cgroup for a in lb.attachments()}
        if lb.pin_dir and (adopted or lb.services()):
            log.info("adopted %d services and %d attachments from %s", len(lb.services()), len(adopted), lb.pin_dir)
        cgroup = os.path.realpath(args.cgroup)
        if cgroup not in adopted:
            lb.attach(cgroup)
        log.info("balancing the sockets of cgroup %s (node %s)", cgroup, args.node_name)
        agent = Agent(
            lb,
            node_name=args.node_name,
            api_client=api,
            proxy_name=args.proxy_name,
            min_sync_period=args.min_sync_period,
            healthz_port=args.healthz_port,
            healthz_address=args.healthz_address,
            freeze_gc=True,  # this process is the agent: no cyclic-GC walks of its long-lived state
        )
        done = threading.Event()

        def stop(signum: int, _frame: Any) -> None:
            log.info("signal %d: stopping", signum)
            done.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        agent.start()
        if args.healthz_port is not None:
            log.info("/healthz and /metrics on %s:%s", args.healthz_address, agent.healthz_port)
        while not done.wait(1.0):
            pass
        agent.stop()
        return 0
    finally:
        lb.close()  # with --pin-dir the services and the attachment stay for the next agent


def _add_kubernetes_parser(sub: Any) -> None:
    k = sub.add_parser(
        "kubernetes",
        help="the node agent: watch Services and EndpointSlices and balance them for one cgroup",
        description="Watch the API server and program this node's Services into socklb, attached to one cgroup "
        "(the node's kubepods cgroup: every pod below it is balanced).",
    )
    k.add_argument("--node-name", default=os.environ.get("NODE_NAME"), help="this node (default: $NODE_NAME)")
    k.add_argument("--cgroup", required=True, help="the cgroup v2 directory to attach to")
    k.add_argument("--kubeconfig", help="a kubeconfig file (default: the in-cluster service account)")
    k.add_argument("--context", help="the kubeconfig context to use")
    k.add_argument("--pin-dir", help="keep the state pinned in this bpffs directory; a restart adopts it")
    k.add_argument("--proxy-name", help="serve only Services labelled service.kubernetes.io/service-proxy-name=NAME")
    k.add_argument(
        "--healthz-port", "--metrics-port", type=int, help="serve /healthz and /metrics on this port (0: any)"
    )
    k.add_argument("--healthz-address", default="0.0.0.0", help="the address for /healthz (default 0.0.0.0)")
    k.add_argument("--min-sync-period", type=float, default=0.01, help="seconds between applies (default 0.01)")
    k.add_argument("--max-services", type=int, default=65536, help="service limit of a new balancer")
    k.add_argument("--max-backends", type=int, default=262144, help="backend limit of a new balancer")
    k.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def parser() -> argparse.ArgumentParser:
    """The ``socklb`` command line."""
    ap = argparse.ArgumentParser(prog="socklb", description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="balance connections in a throwaway lab and show the result")
    d.add_argument("--backends", type=int, default=3, help="backend pods (default 3)")
    d.add_argument("--connections", type=int, default=300, help="connections per address family (default 300)")
    sub.add_parser("cleanup", help="remove namespaces and cgroups left by a crashed lab")
    _add_kubernetes_parser(sub)
    from . import opscli

    opscli.register(sub)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import opscli

    ap = parser()
    args = ap.parse_args(argv)
    rc = opscli.run(args)
    if rc is not None:
        return rc
    try:
        if args.cmd == "kubernetes":
            return kubernetes_agent(args)
        if args.cmd == "demo":
            if not 1 <= args.backends <= 32 or not 1 <= args.connections <= 100000:
                ap.error("--backends must be 1..32 and --connections 1..100000")
            return demo(args.backends, args.connections)
        from .lab import cleanup_leftovers

        n = cleanup_leftovers()
        print(f"removed {n} leftover lab objects")
        return 0
    except SocklbError as e:
        print(f"socklb: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
