"""Hardening of the value types (Service, Backend, Affinity): values that were
accepted but cannot work, and integer types other than int.  No root, no kernel."""

from __future__ import annotations

import dataclasses
import enum
import pickle
import sys
from typing import Any, cast

import pytest
from helpers import in_ci

from socklb import Affinity, Backend, InvalidValueError, Service
from socklb.model import normalize_key


def _rejects(field: str, cls: object, *args: object, **kwargs: object) -> str:
    """Construct cls(*args, **kwargs); assert it raises InvalidValueError naming field; return the message."""
    with pytest.raises(InvalidValueError) as e:
        cls(*args, **kwargs)  # type: ignore[operator]
    assert e.value.field == field, str(e.value)
    assert str(e.value).startswith(field + ": ")
    return str(e.value)


# --- Addresses that cannot be a backend ------------------------------------


@pytest.mark.parametrize(
    ("vip", "backends", "index"),
    [
        ("10.96.0.10", [("10.244.0.1", 80), ("10.96.0.10", 8080)], 1),
        ("10.96.0.10", [("10.96.0.10", 80)], 0),
        # compared as addresses, not as text
        ("fd00:96::a", [("fd00:244::1", 80), ("fd00:244::2", 80), ("fd00:96:0:0::000a", 53)], 2),
    ],
)
def test_backend_equal_to_the_vip_is_rejected_naming_its_index(
    vip: str, backends: list[tuple[str, int]], index: int
) -> None:
    msg = _rejects(f"backends[{index}]", Service, vip, 80, backends=[Backend(a, p) for a, p in backends])
    assert "service's own address" in msg and "give the address" in msg


def test_a_backend_on_another_address_of_the_vip_subnet_is_fine() -> None:
    svc = Service("10.96.0.10", 80, backends=[Backend("10.96.0.11", 80)])
    assert svc.backends[0].address == "10.96.0.11"


def test_broadcast_backend_is_rejected() -> None:
    msg = _rejects("address", Backend, "255.255.255.255", 80)
    assert "broadcast" in msg and "unicast address" in msg


@pytest.mark.parametrize("address", ["240.0.0.1", "250.1.2.3", "255.255.255.254"])
def test_class_e_backends_are_accepted(address: str) -> None:
    # Decision: 240.0.0.0/4 is "reserved", but Linux routes it as unicast and
    # GKE offers it for pod ranges; only the limited broadcast address is refused.
    assert Backend(address, 80).address == address
    assert Service("10.96.0.10", 80, backends=[Backend(address, 80)]).backends[0].address == address


@pytest.mark.parametrize(("address", "text"), [("0.0.0.0", "0.0.0.0"), ("::", "::"), ("0:0::0", "::")])
def test_unspecified_backend_is_rejected_with_a_hint(address: str, text: str) -> None:
    msg = _rejects("address", Backend, address, 80)
    assert text in msg and "unspecified" in msg and "give the" in msg


@pytest.mark.parametrize("address", ["224.0.0.1", "239.255.255.255", "ff02::1", "ff05::1:3"])
def test_multicast_is_still_rejected_with_a_hint(address: str) -> None:
    assert "multicast" in _rejects("address", Backend, address, 80)
    assert "multicast" in _rejects("address", Service, address, 80)


@pytest.mark.parametrize("address", ["0.0.0.0", "::"])
def test_unspecified_vip_is_still_rejected(address: str) -> None:
    assert "unspecified" in _rejects("address", Service, address, 80)


@pytest.mark.parametrize("address", ["fe80::1", "FE80::1:2", "febf:ffff::1"])
def test_ipv6_link_local_backend_is_rejected(address: str) -> None:
    msg = _rejects("address", Backend, address, 80)
    assert "link-local" in msg and "zone" in msg and "global or unique-local" in msg


def test_zoned_addresses_say_zones_are_not_carried() -> None:
    msg = _rejects("address", Backend, "fe80::1%eth0", 80)
    assert "zone" in msg and "global or unique-local" in msg


@pytest.mark.parametrize("address", ["fe7f::1", "fec0::1", "fd00::1", "169.254.20.10"])
def test_addresses_next_to_ipv6_link_local_are_accepted(address: str) -> None:
    # fe80::/10 is fe80:: .. febf:...; IPv4 link-local needs no zone (node-local
    # DNS listens on 169.254.20.10).
    assert Backend(address, 80).address == address


@pytest.mark.parametrize("address", ["127.0.0.1", "127.255.255.254", "::1"])
def test_loopback_backends_are_accepted(address: str) -> None:
    # Decision: kept.  A loopback backend is reached in the client's own network
    # namespace: right for host-network clients, the pod itself for a pod.
    vip = "fd00:96::a" if ":" in address else "10.96.0.10"
    assert Service(vip, 80, backends=[Backend(address, 8080)]).backends[0].address == address


def test_v4_mapped_backend_hint_leads_to_an_ipv4_service() -> None:
    msg = _rejects("address", Backend, "::ffff:10.244.1.2", 80)
    assert "10.244.1.2" in msg and "IPv4 service" in msg
    # Following the hint: the IPv4 backend is refused by an IPv6 service with a
    # hint that leads on, and accepted by an IPv4 service.
    msg = _rejects("backends[0]", Service, "fd00:96::a", 80, backends=[Backend("10.244.1.2", 80)])
    assert "an IPv6 service cannot have IPv4 backends" in msg
    assert "make an IPv4 service" in msg and "::ffff:" in msg
    svc = Service("10.96.0.10", 80, backends=[Backend("10.244.1.2", 80)])
    assert svc.backends[0].address == "10.244.1.2"


def test_ipv6_backend_in_an_ipv4_service_says_what_to_do() -> None:
    msg = _rejects("backends[0]", Service, "10.96.0.10", 80, backends=[Backend("fd00:244::1", 80)])
    assert "an IPv4 service cannot have IPv6 backends" in msg and "make an IPv6 service" in msg


def test_v4_mapped_vip_hint_is_kept() -> None:
    msg = _rejects("address", Service, "::ffff:10.96.0.10", 80)
    assert "give the IPv4 address 10.96.0.10" in msg and "::ffff:" in msg
    assert Service("10.96.0.10", 80).address == "10.96.0.10"


# --- Integer types ----------------------------------------------------------


class Index:
    """The smallest integer-like type: it only has __index__."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"Index({self.value})"


class Port(enum.IntEnum):
    HTTP = 80
    ALT = 8080


def _plain(value: object, expected: int) -> None:
    assert value == expected and type(value) is int


def test_backend_accepts_index_types_and_stores_int() -> None:
    b = Backend("10.244.1.2", Index(8080), weight=Index(3))
    _plain(b.port, 8080)
    _plain(b.weight, 3)
    assert b == Backend("10.244.1.2", 8080, weight=3)
    assert hash(b) == hash(Backend("10.244.1.2", 8080, weight=3))


def test_int_enum_port_becomes_a_plain_int() -> None:
    b = Backend("10.244.1.2", Port.ALT)
    _plain(b.port, 8080)
    _plain(b._key[1], 8080)
    assert "Port" not in repr(b)
    svc = Service("10.96.0.10", Port.HTTP, backends=[b])
    _plain(svc.port, 80)
    _plain(svc.key[1], 80)
    assert str(svc) == "10.96.0.10:80/tcp"
    _plain(Affinity(Port.HTTP).timeout, 80)


def test_service_and_affinity_accept_index_types() -> None:
    svc = Service("10.96.0.10", Index(53), "udp", affinity=Affinity(Index(60)))
    _plain(svc.port, 53)
    _plain(svc.key[1], 53)
    assert svc.affinity is not None
    _plain(svc.affinity.timeout, 60)
    assert svc.with_backends([]).port == 53


def test_normalize_key_accepts_index_types() -> None:
    for port in (Index(80), Port.HTTP):
        key = normalize_key(("10.96.0.10", port, "udp"))
        assert key == ("10.96.0.10", 80, "udp")
        _plain(key[1], 80)


@pytest.mark.parametrize("value", [True, False])
def test_bool_stays_rejected(value: bool) -> None:
    _rejects("port", Backend, "10.1.1.1", value)
    _rejects("weight", Backend, "10.1.1.1", 80, weight=value)
    _rejects("port", Service, "10.96.0.1", value)
    _rejects("affinity.timeout", Affinity, value)
    _rejects("port", normalize_key, ("10.96.0.1", value))


@pytest.mark.parametrize("value", [80.0, "80", None, Index(0), Index(65536)])
def test_non_integers_and_out_of_range_index_types_are_rejected(value: object) -> None:
    msg = _rejects("port", Backend, "10.1.1.1", value)
    assert msg.endswith(f"not {value!r}")
    _rejects("port", Service, "10.96.0.1", value)


def test_out_of_range_index_types_for_weight_and_timeout() -> None:
    _rejects("weight", Backend, "10.1.1.1", 80, weight=Index(-1))
    _rejects("weight", Backend, "10.1.1.1", 80, weight=Index(65536))
    _rejects("affinity.timeout", Affinity, Index(0))
    _rejects("affinity.timeout", Affinity, Index(86401))


def test_numpy_integers() -> None:
    try:
        import numpy as np
    except ImportError:
        if in_ci():
            pytest.fail("numpy is needed (the dev extra installs it with scipy); CI=true forbids skipping")
        pytest.skip("numpy is not installed")
    b = Backend("10.244.1.2", np.int64(8080), weight=np.uint16(7))
    _plain(b.port, 8080)
    _plain(b.weight, 7)
    svc = Service("10.96.0.10", np.int32(80), backends=[b], affinity=Affinity(np.int64(30)))
    _plain(svc.port, 80)
    assert svc.affinity is not None
    _plain(svc.affinity.timeout, 30)
    _plain(normalize_key(("10.96.0.10", np.int64(80)))[1], 80)
    _rejects("port", Backend, "10.1.1.1", np.float64(80))
    _rejects("port", Backend, "10.1.1.1", np.True_)
    _rejects("port", Backend, "10.1.1.1", np.int64(70000))


# --- ABI encoding is the control plane's ------------------------------------


def test_backend_has_no_abi_encoding_fields() -> None:
    names = {f.name for f in dataclasses.fields(Backend)} | set(cast(Any, Backend).__slots__)
    assert "_nport" not in names and "_state_idx" not in names
    b = Backend("10.244.1.2", 8080)
    assert not hasattr(b, "_nport") and not hasattr(b, "_state_idx")
    # what the rest of socklb uses stays
    assert b._a16 == bytes(10) + b"\xff\xff" + bytes([10, 244, 1, 2])
    assert b._version == 4 and b._key == ("10.244.1.2", 8080)


def test_values_have_slots_and_stay_dataclasses() -> None:
    b = Backend("10.244.1.2", 8080, weight=3)
    s = Service("10.96.0.1", 80, backends=[b])
    for v in (b, s):
        assert not hasattr(v, "__dict__")
        assert pickle.loads(pickle.dumps(v)) == v and hash(pickle.loads(pickle.dumps(v))) == hash(v)
        with pytest.raises(dataclasses.FrozenInstanceError):
            v.port = 1
    assert [f.name for f in dataclasses.fields(Backend)] == ["address", "port", "weight", "state"]
    assert dataclasses.replace(s, port=81).key == ("10.96.0.1", 81, "tcp")
    assert dataclasses.asdict(b)["address"] == "10.244.1.2"
    # The address text is made from the packed bytes; ports are shared ints.
    assert Backend("fd00:0::0001", 9000).address == "fd00::1"
    assert Backend("10.1.1.1", 40000).port is Backend("10.1.1.2", 40000).port
    # Equal values: equal and same hash; a differing one differs in its cached hash first.
    assert s == Service("10.96.0.1", 80, backends=[Backend("10.244.1.2", 8080, weight=3)])
    assert s != s.with_backends([Backend("10.244.1.2", 8080, weight=4)])
    assert sys.getsizeof(b) <= 64  # four slots and the GC header: the IP version is computed from the bytes
    assert (b._version, Backend("fd00::1", 80)._version) == (4, 6)


def test_frontend_values_are_validated() -> None:
    from socklb import Backend, Frontend, InvalidValueError, Service
    from socklb.model import normalize_key
    from socklb.ops.servicefile import parse

    be = [Backend("10.244.1.2", 8080)]
    with pytest.raises(InvalidValueError, match=r"Service\.node_port"):
        Service("0.0.0.0", 80, backends=be)  # the unspecified address is no ClusterIP
    with pytest.raises(InvalidValueError, match="every node address"):
        Service("10.96.0.10", 30080, backends=be, frontend="node_port")
    with pytest.raises(InvalidValueError, match="family"):
        Service.node_port(30080, backends=be, family=5)
    with pytest.raises(InvalidValueError, match="frontend"):
        Service("10.96.0.10", 80, frontend="cluster")
    with pytest.raises(InvalidValueError, match="IPv4"):
        Service.node_port(30080, backends=be, family=6)  # IPv4 backends, IPv6 NodePort
    np = Service.node_port(30080, "udp", be)
    assert np.wildcard and np.with_backends([]).frontend is Frontend.NODE_PORT
    assert Service.host_port(8443, backends=be, address="192.0.2.10").frontend is Frontend.HOST_PORT
    assert not Service.host_port(8443, backends=be, address="192.0.2.10").wildcard
    assert Service.host_port(8443, backends=[Backend("fd00::2", 1)], family=6).key == ("::", 8443, "tcp")
    assert normalize_key(("0.0.0.0", 30080, "udp")) == np.key
    (back,) = parse(
        '[{"address": "0.0.0.0", "port": 30080, "protocol": "udp", "frontend": "node_port",'
        ' "backends": [{"address": "10.244.1.2", "port": 8080}]}]'
    )
    assert back == np
