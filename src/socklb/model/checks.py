"""Validation of the fields of socklb's values, each raising
:class:`~socklb.errors.InvalidValueError` naming the field: addresses, ports,
bounded integers, enum members and paths; and the helpers that make a
dataclass frozen and slotted without the cost of ``dataclass(frozen=True)``."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import operator
import os
import socket
from typing import Any, Callable, Optional, SupportsIndex, Tuple, Type, TypeVar, cast

from socklb.errors import InvalidValueError

_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def _pton(family: int, text: str) -> Optional[bytes]:
    try:
        return socket.inet_pton(family, text)
    except OSError:
        return None


_WILDCARDS = {"0.0.0.0", "::"}


def _address(value: object, name: str, backend: bool = False, wildcard: bool = False) -> Tuple[str, bytes, int]:
    """Validate an address: (normalized text, 16 bytes in network order with
    IPv4 as ::ffff:a.b.c.d, IP version).  inet_pton, not ipaddress: a
    controller builds hundreds of thousands of these, so the usual addresses
    pass with one test of the first byte.

    Refused for services and backends: the unspecified address and multicast.
    Refused for backends only: 255.255.255.255 and IPv6 link-local (fe80::/10).
    Accepted: loopback (a backend there is reached in the client's own network
    namespace: the host for a host-network client, the pod itself for a pod),
    IPv4 link-local (no zone needed) and 240.0.0.0/4 (Linux routes it as
    unicast and clusters use it for pods)."""
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidValueError(name, f"must be an IP address string, not {type(value).__name__}")
    if wildcard and value in _WILDCARDS:
        return (value, _V4_MAPPED + bytes(4), 4) if value == "0.0.0.0" else (value, bytes(16), 6)
    raw = _pton(socket.AF_INET, value)
    if raw is not None:
        text, a16 = socket.inet_ntop(socket.AF_INET, raw), _V4_MAPPED + raw
        if raw[0] == 0 or raw[0] >= 224:
            _check_special4(raw, text, name, backend)
        return text, a16, 4
    raw = _pton(socket.AF_INET6, value)
    if raw is None:
        if "%" in value:
            raise InvalidValueError(
                name,
                f"{value!r} has a zone (%...), which socklb addresses cannot carry; "
                "give a global or unique-local address",
            )
        raise InvalidValueError(name, f"{value!r} is not an IPv4 or IPv6 address")
    if raw[0] == 0 or raw[0] >= 0xFE:
        _check_special6(raw, value, name, backend)
    return socket.inet_ntop(socket.AF_INET6, raw), raw, 6


def _check_special4(raw: bytes, text: str, name: str, backend: bool) -> None:
    if raw == b"\0\0\0\0":
        what = "the backend's" if backend else "the service's"
        raise InvalidValueError(
            name, f"{text} is the unspecified address, not a host's: give {what} own unicast address"
        )
    if 224 <= raw[0] <= 239:
        raise InvalidValueError(
            name, f"{text} is a multicast address: services and backends are unicast hosts; give a unicast address"
        )
    if backend and raw == b"\xff\xff\xff\xff":
        raise InvalidValueError(
            name,
            f"{text} is the limited broadcast address: a connect() to it fails and a datagram reaches every host "
            "on the link; give the backend's unicast address",
        )


def _check_special6(raw: bytes, value: str, name: str, backend: bool) -> None:
    if raw == bytes(16):
        what = "the backend's" if backend else "the service's"
        raise InvalidValueError(name, f":: is the unspecified address, not a host's: give {what} own unicast address")
    if raw[:12] == _V4_MAPPED:
        v4 = socket.inet_ntop(socket.AF_INET, raw[12:])
        if backend:
            raise InvalidValueError(
                name,
                f"{value} is IPv4-mapped, an IPv4 backend: give {v4} and put it in an IPv4 service, which IPv6 "
                "sockets also reach via ::ffff:<vip> (an IPv6 service cannot have IPv4 backends)",
            )
        raise InvalidValueError(
            name, f"{value} is IPv4-mapped: give the IPv4 address {v4}; v6 sockets reach it through ::ffff:"
        )
    text = socket.inet_ntop(socket.AF_INET6, raw)
    if raw[0] == 0xFF:
        raise InvalidValueError(
            name, f"{text} is a multicast address: services and backends are unicast hosts; give a unicast address"
        )
    if backend and raw[0] == 0xFE and raw[1] & 0xC0 == 0x80:
        raise InvalidValueError(
            name,
            f"{text} is IPv6 link-local: it is only meaningful with a zone (an interface), which a backend "
            "cannot carry; give the backend's global or unique-local (fd00::/8) address",
        )


def special_frontend(a16: bytes) -> Optional[str]:
    """The rule a frontend address (16 bytes, IPv4 as ::ffff:a.b.c.d) breaks,
    or None: a service there would capture traffic that is never a service's
    (CVE-2020-8554: a Service's externalIPs or LoadBalancer status taking over
    the node's loopback or the cloud metadata server).  Loopback and
    link-local are refused unless asked for; the unspecified address and
    multicast are refused by :func:`_address` whatever the caller asks."""
    if a16[:12] == _V4_MAPPED:
        if a16[12] == 127:
            return "loopback (127.0.0.0/8): the node's own services"
        if a16[12] == 169 and a16[13] == 254:
            return "link-local (169.254.0.0/16): node-local services and the cloud metadata server 169.254.169.254"
        if a16[12] == 0:
            return "unspecified (0.0.0.0/8): not a host's address"
        if a16[12] >= 224 and a16[12] <= 239:
            return "multicast (224.0.0.0/4): not a host's address"
        return None
    if a16 == bytes(15) + b"\x01":
        return "loopback (::1): the node's own services"
    if a16[0] == 0xFE and a16[1] & 0xC0 == 0x80:
        return "link-local (fe80::/10): node-local services"
    if a16 == bytes(16):
        return "unspecified (::): not a host's address"
    if a16[0] == 0xFF:
        return "multicast (ff00::/8): not a host's address"
    return None


def _int(value: object, lo: int, hi: int) -> Optional[int]:
    """``value`` as a plain int if it is an integer in lo..hi, else None.

    Any integer type is accepted through ``__index__`` (numpy integers, an
    IntEnum) and stored as a plain int; bool is not an integer here."""
    if type(value) is int:
        i = value
    elif isinstance(value, bool):
        return None
    else:
        # Not isinstance(value, SupportsIndex): a runtime protocol check costs
        # microseconds.  int.__int__ makes a plain int of an int subclass.
        try:
            i = int.__int__(operator.index(cast(SupportsIndex, value)))
        except TypeError:  # no __index__, or one that refuses (numpy's bool)
            return None
    return i if lo <= i <= hi else None


def _port(value: object, name: str = "port") -> int:
    port = _int(value, 1, 65535)
    if port is None:
        raise InvalidValueError(name, f"must be an integer in 1..65535, not {value!r}")
    return port


E = TypeVar("E", bound=enum.Enum)


def _enum(cls: Type[E], value: object, name: str) -> E:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in cls)
        raise InvalidValueError(name, f"{value!r} is not one of {allowed}") from None


_T = TypeVar("_T")


def _slotted(*private: str, **computed: property) -> Callable[[Type[_T]], Type[_T]]:
    """Give a dataclass ``__slots__`` (its fields plus ``private``), as
    ``dataclass(slots=True)`` does on Python 3.10+: a value then has no
    ``__dict__`` (a Backend takes ~80 bytes instead of ~400).  A field named
    in ``computed`` is not stored but computed by that property.  The class
    stays a dataclass (``dataclasses.fields``, ``replace`` and ``asdict`` work)."""

    def make(cls: Type[_T]) -> Type[_T]:
        names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        ns = {k: v for k, v in cls.__dict__.items() if k not in names and k not in ("__dict__", "__weakref__")}
        ns["__slots__"] = tuple(n for n in names if n not in computed) + private
        ns.update(computed)
        meta: Any = type(cls)
        new: Type[_T] = meta(cls.__name__, cls.__bases__, ns)
        new.__qualname__ = cls.__qualname__
        return new

    return make


def _frozen(self: object, name: str, value: object = None) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_del(self: object, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


def path_text(value: object, name: str) -> str:
    """A path given as str, bytes or os.PathLike, as str (bytes decoded with
    the filesystem encoding); InvalidValueError naming ``name`` otherwise."""
    if isinstance(value, (bytes, bytearray)):
        return os.fsdecode(bytes(value))
    if isinstance(value, os.PathLike):
        return os.fsdecode(os.fspath(value))
    if not isinstance(value, str):
        raise InvalidValueError(name, f"must be a path (str, bytes or os.PathLike), not {value!r}")
    return value
