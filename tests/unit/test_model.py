"""Unit tests of the value types: no root, no kernel."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from socklb import Affinity, Algorithm, Backend, BackendState, InvalidValueError, Protocol, Service
from socklb.model import MAX_WEIGHT, normalize_key


def test_service_normalises_and_keys() -> None:
    svc = Service("fd00:96:0:0::a", 53, "udp", [Backend("fd00:244:1::0002", 5353)])
    assert svc.address == "fd00:96::a"
    assert svc.backends[0].address == "fd00:244:1::2"
    assert svc.key == ("fd00:96::a", 53, "udp")
    assert svc.protocol is Protocol.UDP
    assert svc.algorithm is Algorithm.RANDOM
    assert str(svc) == "[fd00:96::a]:53/udp"


def test_values_are_frozen_and_hashable() -> None:
    b = Backend("10.244.1.2", 80)
    svc = Service("10.96.0.1", 80, backends=[b])
    with pytest.raises(dataclasses.FrozenInstanceError):
        svc.port = 81
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.weight = 2
    assert hash(svc) == hash(Service("10.96.0.1", 80, backends=[Backend("10.244.1.2", 80)]))
    assert svc == Service("10.96.0.1", 80, "tcp", (b,))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"address": "10.96.0.300", "port": 80}, "address"),
        ({"address": "not-an-ip", "port": 80}, "address"),
        ({"address": 167772170, "port": 80}, "address"),
        ({"address": "0.0.0.0", "port": 80}, "address"),
        ({"address": "::ffff:10.96.0.1", "port": 80}, "address"),
        ({"address": "10.96.0.1", "port": 0}, "port"),
        ({"address": "10.96.0.1", "port": 65536}, "port"),
        ({"address": "10.96.0.1", "port": "80"}, "port"),
        ({"address": "10.96.0.1", "port": True}, "port"),
        ({"address": "10.96.0.1", "port": 80, "protocol": "sctp"}, "protocol"),
        ({"address": "10.96.0.1", "port": 80, "algorithm": "round-robin"}, "algorithm"),
        ({"address": "10.96.0.1", "port": 80, "backends": "10.244.1.2"}, "backends"),
        ({"address": "10.96.0.1", "port": 80, "backends": [("10.244.1.2", 80)]}, "backends[0]"),
        ({"address": "10.96.0.1", "port": 80, "backends": [Backend("fd00::1", 80)]}, "backends[0]"),
        ({"address": "fd00::1", "port": 80, "backends": [Backend("10.1.1.1", 80)]}, "backends[0]"),
        (
            {"address": "10.96.0.1", "port": 80, "backends": [Backend("10.1.1.1", 80), Backend("10.1.1.1", 80)]},
            "backends[1]",
        ),
        ({"address": "10.96.0.1", "port": 80, "affinity": 30}, "affinity"),
    ],
)
def test_invalid_service(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidValueError) as e:
        Service(**kwargs)  # type: ignore[arg-type]
    assert e.value.field == field
    assert isinstance(e.value, ValueError)
    assert str(e.value).startswith(field + ":")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"address": "10.1.1.1", "port": -1}, "port"),
        ({"address": "10.1.1.1", "port": 80, "weight": -1}, "weight"),
        ({"address": "10.1.1.1", "port": 80, "weight": MAX_WEIGHT + 1}, "weight"),
        ({"address": "10.1.1.1", "port": 80, "weight": 1.5}, "weight"),
        ({"address": "10.1.1.1", "port": 80, "state": "dead"}, "state"),
        ({"address": "224.0.0.1", "port": 80}, "address"),
    ],
)
def test_invalid_backend(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidValueError) as e:
        Backend(**kwargs)  # type: ignore[arg-type]
    assert e.value.field == field


def test_backend_states_and_weights() -> None:
    assert Backend("10.1.1.1", 80, state="terminating").state is BackendState.TERMINATING
    assert Backend("10.1.1.1", 80, weight=0).weight == 0
    assert not Backend("10.1.1.1", 80, weight=0).usable_when_active


@pytest.mark.parametrize("timeout", [0, 86401, -5, 1.0, True])
def test_affinity_bounds(timeout: object) -> None:
    with pytest.raises(InvalidValueError) as e:
        Affinity(timeout=timeout)  # type: ignore[arg-type]
    assert e.value.field == "affinity.timeout"


def test_affinity_default_is_kubernetes() -> None:
    assert Affinity().timeout == 10800
    assert Affinity(1).timeout == 1 and Affinity(86400).timeout == 86400


def test_normalize_key() -> None:
    assert normalize_key(("10.96.0.10", 80)) == ("10.96.0.10", 80, "tcp")
    assert normalize_key(("fd00:96:0::a", 53, "udp")) == ("fd00:96::a", 53, "udp")
    with pytest.raises(InvalidValueError):
        normalize_key(("10.96.0.10", 80, "icmp"))
    with pytest.raises(InvalidValueError):
        normalize_key("10.96.0.10:80")  # type: ignore[arg-type]


def test_with_backends_keeps_the_rest() -> None:
    svc = Service("10.96.0.1", 80, "udp", [Backend("10.1.1.1", 80)], "maglev", Affinity(60))
    other = svc.with_backends([Backend("10.1.1.2", 80)])
    assert other.key == svc.key and other.algorithm is Algorithm.MAGLEV and other.affinity == Affinity(60)
    assert other.backends == (Backend("10.1.1.2", 80),)


# --- frontends that must never be served (CVE-2020-8554) -----------------------


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "loopback (127.0.0.0/8)"),
        ("127.1.2.3", "loopback (127.0.0.0/8)"),
        ("::1", "loopback (::1)"),
        ("169.254.169.254", "the cloud metadata server"),
        ("169.254.20.10", "link-local (169.254.0.0/16)"),
        ("fe80::1", "link-local (fe80::/10)"),
        ("0.1.2.3", "unspecified (0.0.0.0/8)"),
    ],
)
def test_special_frontends_are_refused_unless_asked_for(address: str, rule: str) -> None:
    with pytest.raises(InvalidValueError, match="allow_special_frontend=True") as e:
        Service(address, 80, backends=[Backend("fd00::2" if ":" in address else "10.1.0.2", 80)])
    assert rule in str(e.value) and "CVE-2020-8554" in str(e.value) and e.value.field == "address"
    with pytest.raises(InvalidValueError, match=rule.split(" ")[0]):
        Service.host_port(8080, address=address, family=6 if ":" in address else 4)
    svc = Service(address, 80, allow_special_frontend=True)
    assert svc.address == address
    # Copies of a service that was allowed stay allowed.
    assert pickle.loads(pickle.dumps(svc)) == svc
    assert svc.with_backends([Backend("fd00::2" if ":" in address else "10.1.0.2", 80)]).address == address


@pytest.mark.parametrize("address", ["224.0.0.1", "ff02::1", "0.0.0.0", "::"])
def test_multicast_and_unspecified_frontends_are_refused_even_when_asked_for(address: str) -> None:
    with pytest.raises(InvalidValueError):
        Service(address, 80, allow_special_frontend=True)


def test_wildcard_node_and_host_ports_and_ordinary_addresses_need_no_opt_in() -> None:
    assert Service.node_port(30080).key == ("0.0.0.0", 30080, "tcp")
    assert Service.node_port(30080, family=6).key == ("::", 30080, "tcp")
    assert Service.host_port(8080).key == ("0.0.0.0", 8080, "tcp")
    assert Service.host_port(8080, family=6).key == ("::", 8080, "tcp")
    for ok in ("10.96.0.1", "169.253.255.255", "169.255.0.1", "126.255.255.255", "128.0.0.1", "fd00::1", "fec0::1"):
        assert Service(ok, 80).address == ok


def test_the_opt_in_is_a_bool() -> None:
    with pytest.raises(InvalidValueError, match="allow_special_frontend"):
        Service("10.96.0.1", 80, allow_special_frontend=1)  # type: ignore[arg-type]
