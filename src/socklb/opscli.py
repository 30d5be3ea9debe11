"""The operator's commands of ``socklb``: status, services, stats, apply, doctor.

``cli.py`` registers them (:func:`register`); the logic lives in
:mod:`socklb.inspect` (read-only views of a pinned balancer),
:mod:`socklb.servicefile` (the file ``apply`` reads) and :mod:`socklb.doctor`;
this module only parses arguments and prints.  Every failure is one line on
stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from .errors import SocklbError

__all__ = ["register", "table", "render"]

EXIT_ERROR = 2


class CommandError(SocklbError):
    """A command's own failure (bad arguments, a missing optional package)."""


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces (like ``cilium-dbg bpf lb list``).

    >>> print(table(["A", "BB"], [["x", 1], ["yyy", 22]]))
    A    BB
    x    1
    yyy  22
    """
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def render(data: Any, fmt: str, as_table: Callable[[Any], str]) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    if fmt == "yaml":
        try:
            import yaml
        except ImportError:
            raise CommandError("-o yaml needs PyYAML (pip install 'socklb[yaml]'); -o json works without it") from None
        return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False)).rstrip("\n")
    return as_table(data)


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
    from .inspect import PinnedView

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
    from .inspect import PinnedView, parse_frontend

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
    from .errors import MissingFeatureError
    from .inspect import PinnedView

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
    from . import servicefile

    want = servicefile.load(args.file)
    if args.dry_run:
        diff = servicefile.diff_pinned(args.pin_dir, want)
        print(render(diff, args.output, servicefile.diff_text))
        return 0
    res = servicefile.apply(args.pin_dir, want)
    print(render(res, args.output, servicefile.result_text))
    return 0


# -- doctor ------------------------------------------------------------------------


def _doctor(args: argparse.Namespace) -> int:
    from . import doctor

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

    from .inspect import parse_frontend
    from .trace import Tracer

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
        from . import metrics
    except ImportError as e:
        raise CommandError(str(e)) from None
    from .inspect import PinnedView

    if not 0 < args.port < 65536:
        raise CommandError(f"--port must be 1..65535, not {args.port}")
    PinnedView(args.pin_dir).close()  # a clear error now rather than socklb_up 0 forever
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    metrics.start_http_server(args.pin_dir, args.port, args.address, per_backend=args.per_backend)
    print(
        f"socklb exporter: serving {args.pin_dir} on http://{args.address or '0.0.0.0'}:{args.port}/metrics", flush=True
    )
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
    p = sub.add_parser("apply", help="make a pinned balancer's services those of a YAML or JSON file")
    p.add_argument("-f", "--file", required=True, help="services file (YAML or JSON; '-' for stdin)")
    pin(p, required=False)
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
    p.add_argument("--address", default="", help="address to listen on (default: all)")
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
