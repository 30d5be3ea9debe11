"""socklb's benchmark suite: socklb against kube-proxy-style iptables and
nftables rules, and against the physical limit (clients dialling backends
directly), in throwaway lab namespaces.

Run it from the repository root as root::

    python -m bench                      # the full default run (~20 min on 2 cores)
    python -m bench --quick              # a one-minute look
    python -m bench --help

Results go to ``bench/results/``: ``results.json``, ``results.md`` and the
plots ``throughput.png`` and ``p99.png``.  See ``bench/README.md``.
"""
