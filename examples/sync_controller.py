"""A controller loop: declare the services you want, let sync() apply the difference.

Run as root:  .venv/bin/python examples/sync_controller.py

sync() makes the programmed state equal to the list it is given, touching
only what changed, and reports what it did.
"""

from __future__ import annotations

from socklb import Backend, BackendState, Balancer, Service
from socklb.testing.lab import Lab


def desired(pods: list[str], version: int) -> list[Service]:
    """What a controller would derive from the API server's Services and EndpointSlices."""
    web = [
        Backend(ip, 8080, state=BackendState.TERMINATING if version == 2 and i == 0 else BackendState.ACTIVE)
        for i, ip in enumerate(pods)
    ]
    services = [Service("10.96.0.10", 80, "tcp", web)]
    if version >= 1:
        services.append(Service("10.96.0.53", 53, "udp", [Backend(ip, 5353) for ip in pods]))
    return services


def main() -> None:
    with Lab() as lab:
        pods = [lab.add_pod(f"p{i}").ipv4 for i in range(2)]
        with Balancer() as lb:
            for version in range(3):
                result = lb.sync(desired(pods, version))
                print(
                    f"v{version}: added={result.added} updated={result.updated} "
                    f"removed={result.removed} unchanged={result.unchanged} map writes={result.map_writes}"
                )
            result = lb.sync(desired(pods, 2))
            assert not result.changed and result.map_writes == 0
            print("again: nothing to do")
            lb.sync([])
            assert lb.services() == []


if __name__ == "__main__":
    main()
