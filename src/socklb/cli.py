"""The ``socklb`` command: one module for every subcommand.

Operators: ``status``, ``services``, ``stats``, ``apply``, ``trace``, ``exporter``
and ``doctor`` read or write a pinned balancer; the logic lives in
:mod:`socklb.ops` (:mod:`~socklb.ops.view`, :mod:`~socklb.ops.servicefile`,
:mod:`~socklb.ops.trace`, :mod:`~socklb.ops.metrics`, :mod:`~socklb.ops.doctor`),
this module only parses arguments and prints.  ``socklb kubernetes`` is the node
agent (:mod:`socklb.kubernetes`); ``socklb demo`` and ``socklb cleanup`` use the
lab (:mod:`socklb.testing`).  Every failure is one line on stderr and a non-zero
exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import Any, Dict, List, Optional, Sequence

from socklb.errors import InvalidValueError, SocklbError
from socklb.ops.output import EXIT_ERROR, CommandError, render, table

__all__ = ["main", "parser"]


def _hp(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


# -- status ------------------------------------------------------------------------


def _status_table(st: Dict[str, Any]) -> str:
    lim = st["limits"]
    feats = st["features"]
    lines = [
        f"Pin directory:    {st['pin_dir']}",
        f"Layout version:   {st['layout_version']}",
        f"Owner:            {'pid ' + str(st['owner_pid']) if st['owner_pid'] else 'none (no process holds the lock)'}",
        f"Kernel:           {st['kernel']}",
        "Limits:           " + ", ".join(f"{k.replace('max_', '')} {v}" for k, v in lim.items()),
        f"Socket termination: {'kernel has it' if feats['socket_termination'] else 'unavailable (Linux 6.5)'}",
        f"Selection counters: {'yes' if feats['selection_counters'] else 'no (pins of an older datapath)'}",
        "Tracing:          "
        + (
            "unavailable"
            if st.get("tracing") is None
            else (
                f"on (a reader holds the lease for {st['tracing']['lease_left_s']} s)" if st["tracing"]["on"] else "off"
            )
            + (f", {st['tracing']['dropped']} events dropped" if st.get("tracing") and st["tracing"]["dropped"] else "")
        ),
        "",
        table(
            ["MAP", "TYPE", "ENTRIES", "MAX", "USED"],
            [
                [
                    m["name"],
                    m["type"],
                    m["entries"],
                    m["max_entries"] or None,
                    f"{100 * m['entries'] / m['max_entries']:.1f}%"
                    if m["entries"] is not None and m["max_entries"]
                    else None,
                ]
                for m in st["maps"]
            ],
        ),
        "",
    ]
    rows: List[List[object]] = []
    for a in st["attachments"]:
        for i, (prog, pid) in enumerate(sorted(a["programs"].items())):
            rows.append([a["cgroup_id"] if i == 0 else "", (a["cgroup"] or "?") if i == 0 else "", prog, pid])
        if not a["programs"]:
            rows.append([a["cgroup_id"], a["cgroup"] or "?", None, None])
    lines.append(table(["CGROUP ID", "CGROUP", "PROGRAM", "PROG ID"], rows) if rows else "Attachments:      none")
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    from socklb.ops.view import PinnedView

    with PinnedView(args.pin_dir) as v:
        print(render(v.status(), args.output, _status_table))
    return 0


# -- services ----------------------------------------------------------------------


def _services_table(svcs: List[Dict[str, Any]]) -> str:
    rows: List[List[object]] = []
    for s in svcs:
        front = f"{_hp(s['address'], s['port'])}/{s['protocol'].upper()}"
        aff = f"ClientIP {s['affinity']['timeout']}s" if s["affinity"] else None
        first = [front, s["algorithm"], aff]
        if not s["backends"]:
            rows.append([*first, None, "(no backends)", None, None, None])
        for i, b in enumerate(s["backends"]):
            lead = first if i == 0 else ["", "", ""]
            rows.append([*lead, b["id"], _hp(b["address"], b["port"]), b["state"], b["weight"], b["selections"]])
    return table(["FRONTEND", "ALGORITHM", "AFFINITY", "ID", "BACKEND", "STATE", "WEIGHT", "SELECTED"], rows)


def _services(args: argparse.Namespace) -> int:
    from socklb.ops.view import PinnedView, parse_frontend

    front = parse_frontend(args.service) if args.service else None
    with PinnedView(args.pin_dir) as v:
        data = [sv.to_json() for sv in v.service_views(front)]
    print(render(data, args.output, _services_table))
    return 0


# -- stats -------------------------------------------------------------------------

_STAT_HELP = {
    "connect": "connect() translated (TCP, connected UDP; v4 and v6)",
    "sendmsg": "unconnected UDP datagrams translated",
    "recvmsg": "UDP replies shown as from the VIP",
    "getpeername": "getpeername() answers rewritten to the VIP",
    "no_backend": "refused: service without a usable backend (ECONNREFUSED)",
    "retry": "retried: the list changed under a pick",
    "affinity_hit": "ClientIP affinity reused a backend",
    "sticky_hit": "unconnected UDP socket kept its backend",
    "terminated": "sockets terminated: their backend was removed or left the active state",
    "terminated_tcp": "  of them: TCP (Service(terminate_tcp=True))",
    "no_state": "socket-local storage not allocated (memory): getpeername shows the backend, datagram refused",
    "udp_evicted": "unconnected UDP flow forgotten for a newer one (udp_flows_per_socket): replies show the backend",
    "sock_tcp_full": "TCP connect()s whose sock_tcp slot was held: record kept in socket-local storage",
    "connect6": "  of the connects: by IPv6 sockets (v4-mapped included)",
    "sendmsg6": "  of the datagrams: by IPv6 sockets",
    "recvmsg6": "  of the replies: to IPv6 sockets",
    "getpeername6": "  of the getpeername() answers: IPv6 sockets",
}


def _stats_table(st: Dict[str, Any]) -> str:
    rows = [[k, v, _STAT_HELP.get(k, "")] for k, v in st["counters"].items()]
    states = st.get("socket_states")
    rows.append(
        ["socket_states", "-" if states is None else states, "live per-socket states (attached cgroups' namespaces)"]
    )
    return table(["COUNTER", "VALUE", "MEANING"], rows)


def _stats(args: argparse.Namespace) -> int:
    from socklb.errors import MissingFeatureError
    from socklb.ops.view import PinnedView

    with PinnedView(args.pin_dir) as v:
        data: Dict[str, Any] = {"counters": v.counters()}
        try:
            data["socket_states"] = v.socket_states()
        except MissingFeatureError:
            data["socket_states"] = None  # no socket iterators here (Linux < 6.5 or a build without BTF)
    print(render(data, args.output, _stats_table))
    return 0


# -- apply -------------------------------------------------------------------------


def _apply(args: argparse.Namespace) -> int:
    from socklb.ops import servicefile

    want = servicefile.load(args.file)
    servicefile.check_request(want, args.prune)
    if args.dry_run:
        diff = servicefile.diff_pinned(args.pin_dir, want, args.prune)
        print(render(diff, args.output, servicefile.diff_text))
        return 0
    res = servicefile.apply(args.pin_dir, want, args.prune)
    print(render(res, args.output, servicefile.result_text))
    return 0


# -- doctor ------------------------------------------------------------------------


def _doctor(args: argparse.Namespace) -> int:
    from socklb.ops import doctor

    rep = doctor.report()
    print(render(rep, args.output, doctor.text))
    return 0 if rep["verdict"]["can_balance"] else 1


# -- trace -------------------------------------------------------------------------

_TRACE_COLS = ("TIME", "HOOK", "PID", "COMM", "CGROUP", "NETNS", "PROTO", "FRONTEND", "BACKEND", "OUTCOME")


def _trace_row(ev: Any) -> List[object]:
    import time as _time

    t = _time.strftime("%H:%M:%S", _time.localtime(ev.time)) + f".{int(ev.time * 1e6) % 1000000:06d}"
    backend = _hp(ev.backend, ev.backend_port) if ev.backend is not None else "-"
    outcome = ev.outcome + (" (retried)" if ev.retried else "")
    return [t, ev.hook, ev.pid, ev.comm, ev.cgroup_id, ev.netns_cookie, ev.protocol, ev.frontend, backend, outcome]


def _trace(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading

    from socklb.ops.trace import Tracer
    from socklb.ops.view import parse_frontend

    front = parse_frontend(args.service) if args.service else None
    cgid = None
    if args.cgroup:
        try:
            cgid = os.stat(args.cgroup).st_ino
        except OSError as e:
            raise CommandError(f"--cgroup {args.cgroup}: {e.strerror}") from None
    if args.count is not None and args.count < 1:
        raise CommandError("--count must be at least 1")
    if args.output == "yaml":
        render({}, "yaml", str)  # fails early, with the clear line, without PyYAML

    # SIGTERM stops the loop between polls: the lease is always cleared.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    widths = [15, 8, 7, 15, 8, 8, 5, 22, 22, 10]
    with Tracer(args.pin_dir) as t:
        try:
            print(f"socklb trace: tracing {t.pin_dir}; Ctrl-C stops", file=sys.stderr, flush=True)
            if args.output == "table":
                print("  ".join(c.ljust(w) for c, w in zip(_TRACE_COLS, widths)).rstrip(), flush=True)
            events = t.events(count=args.count, frontend=front, cgroup_id=cgid, timeout=args.timeout, stop=stop)
            for ev in events:
                if args.output == "json":
                    print(json.dumps(ev.to_json()), flush=True)
                elif args.output == "yaml":
                    print("---\n" + render(ev.to_json(), "yaml", str), flush=True)
                else:
                    row = [str(c) for c in _trace_row(ev)]
                    print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), flush=True)
        except KeyboardInterrupt:
            pass
        if t.dropped or t.lost:
            print(f"socklb trace: {t.dropped + t.lost} events lost (the ring buffer was full)", file=sys.stderr)
    return 0


# -- exporter ----------------------------------------------------------------------


def _exporter(args: argparse.Namespace) -> int:
    import signal
    import threading

    try:
        from socklb.ops import metrics
    except ImportError as e:
        raise CommandError(str(e)) from None
    from socklb.ops.view import PinnedView

    if not 0 < args.port < 65536:
        raise CommandError(f"--port must be 1..65535, not {args.port}")
    PinnedView(args.pin_dir).close()  # a clear error now rather than socklb_up 0 forever
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    metrics.start_http_server(args.pin_dir, args.port, args.address, per_backend=args.per_backend)
    print(f"socklb exporter: serving {args.pin_dir} on http://{_hp(args.address, args.port)}/metrics", flush=True)
    try:
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    return 0


# -- registration ------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add the operator's subcommands to ``socklb``'s subparsers."""

    def out(p: argparse.ArgumentParser) -> None:
        p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table", help="output format")

    def pin(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("--pin-dir", required=required, help="the balancer's pin directory (bpffs)")

    p = sub.add_parser("status", help="a pinned balancer: limits, maps, attachments, owner (read-only)")
    pin(p)
    out(p)
    p.set_defaults(ops_func=_status)
    p = sub.add_parser("services", help="a pinned balancer's services and backends (read-only)")
    pin(p)
    out(p)
    p.add_argument("service", nargs="?", help="only this frontend: VIP or VIP:PORT ([V6]:PORT)")
    p.set_defaults(ops_func=_services)
    p = sub.add_parser("stats", help="a pinned balancer's datapath counters (read-only)")
    pin(p)
    out(p)
    p.set_defaults(ops_func=_stats)
    p = sub.add_parser(
        "apply", help="add or update a pinned balancer's services from a YAML or JSON file (--prune: only those)"
    )
    p.add_argument("-f", "--file", required=True, help="services file (YAML or JSON; '-' for stdin)")
    pin(p, required=False)
    p.add_argument(
        "--prune",
        action="store_true",
        help="also remove the services the file does not name (an explicit empty list removes every one)",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would change; write nothing, take no lock")
    out(p)
    p.set_defaults(ops_func=_apply)
    p = sub.add_parser("trace", help="live translation events of a pinned balancer")
    pin(p)
    out(p)
    p.add_argument("--service", help="only this frontend: VIP or VIP:PORT ([V6]:PORT)")
    p.add_argument("--cgroup", help="only processes of this cgroup (its directory)")
    p.add_argument("--count", type=int, help="stop after N events")
    p.add_argument("--timeout", type=float, help="stop after SECONDS")
    p.set_defaults(ops_func=_trace)
    p = sub.add_parser("exporter", help="serve a pinned balancer's Prometheus metrics on /metrics")
    pin(p)
    p.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    p.add_argument(
        "--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 or :: for every one)"
    )
    p.add_argument("--per-backend", action="store_true", help="also export per-backend selection counts")
    p.set_defaults(ops_func=_exporter)
    p = sub.add_parser("doctor", help="what this machine can do for socklb")
    out(p)
    p.set_defaults(ops_func=_doctor)


def run(args: argparse.Namespace) -> Optional[int]:
    """Run an operator's command; None if ``args`` is not one of them."""
    func = getattr(args, "ops_func", None)
    if func is None:
        return None
    try:
        return int(func(args))
    except SocklbError as e:
        print(f"socklb {args.cmd}: {e}", file=sys.stderr)
    except OSError as e:
        print(f"socklb {args.cmd}: {e.strerror or e}{': ' + e.filename if e.filename else ''}", file=sys.stderr)
    except ValueError as e:
        print(f"socklb {args.cmd}: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return EXIT_ERROR


# -- the agent, the lab and the entry point ------------------------------------------


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
    from socklb.balancer import Balancer
    from socklb.kubernetes import Agent

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log = logging.getLogger("socklb.agent")
    if not args.node_name:
        print("socklb kubernetes: give --node-name or set NODE_NAME", file=sys.stderr)
        return 2
    options = _translate_options(args)
    if options is None:
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
            **options,
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


def _translate_options(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """The agent's options for translate() (socklb.kubernetes.translation), checked before
    anything is loaded; None (after saying why on stderr) when they are wrong."""
    from socklb.kubernetes.translation import external_ip_networks

    cidrs = [c for c in args.external_ip_cidrs.split(",") if c.strip()]
    try:
        networks = external_ip_networks(cidrs)
    except InvalidValueError as e:
        print(f"socklb kubernetes: --external-ip-cidrs: {e}", file=sys.stderr)
        return None
    return {"external_ip_cidrs": networks}


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
    k.add_argument(
        "--healthz-address",
        default="127.0.0.1",
        help="the address for /healthz and /metrics (default 127.0.0.1; 0.0.0.0 for every one)",
    )
    k.add_argument("--min-sync-period", type=float, default=0.01, help="seconds between applies (default 0.01)")
    k.add_argument("--max-services", type=int, default=65536, help="service limit of a new balancer")
    k.add_argument("--max-backends", type=int, default=262144, help="backend limit of a new balancer")
    k.add_argument(
        "--external-ip-cidrs",
        default="",
        metavar="CIDR[,CIDR...]",
        help="serve a Service's externalIPs only inside these ranges (default: none, as with Kubernetes' "
        "DenyServiceExternalIPs: any user who may create a Service could otherwise take over any address, "
        "CVE-2020-8554); 0.0.0.0/0,::/0 serves them all, as kube-proxy does",
    )
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
    register(sub)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    rc = run(args)
    if rc is not None:
        return rc
    try:
        if args.cmd == "kubernetes":
            return kubernetes_agent(args)
        if args.cmd == "demo":
            if not 1 <= args.backends <= 32 or not 1 <= args.connections <= 100000:
                ap.error("--backends must be 1..32 and --connections 1..100000")
            from socklb.testing.demo import demo

            return demo(args.backends, args.connections)
        from socklb.testing.lab import cleanup_leftovers

        n = cleanup_leftovers()
        print(f"removed {n} leftover lab objects")
        return 0
    except SocklbError as e:
        print(f"socklb: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
