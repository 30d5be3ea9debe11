"""Values that describe services: :class:`Service`, :class:`Backend`, :class:`Affinity`.

They are frozen and validated when made; an invalid field raises
:class:`~socklb.errors.InvalidValueError` (a :class:`ValueError`) naming it.

>>> svc = Service("10.96.0.10", 80, backends=[Backend("10.244.2.1", 8080)])
>>> svc.key
('10.96.0.10', 80, 'tcp')
>>> Backend("10.244.2.1", 0)
Traceback (most recent call last):
...
socklb.errors.InvalidValueError: port: must be an integer in 1..65535, not 0

The package's modules, by concern: :mod:`.kinds` (the enums and limits),
:mod:`.checks` (validation of addresses, ports, integers, enum members and
paths; the frozen, slotted dataclass helpers) and :mod:`.values` (the values).
Import from ``socklb.model``: the classes are its own (``__module__``, so
pickles and reprs name ``socklb.model``).
"""

import types

from socklb.model.checks import _address as _address
from socklb.model.checks import path_text as path_text
from socklb.model.kinds import AFFINITY_DEFAULT as AFFINITY_DEFAULT
from socklb.model.kinds import AFFINITY_MAX as AFFINITY_MAX
from socklb.model.kinds import AFFINITY_MIN as AFFINITY_MIN
from socklb.model.kinds import (
    MAX_BACKENDS_PER_SERVICE,
    MAX_WEIGHT,
    Algorithm,
    BackendState,
    Frontend,
    Protocol,
    ServiceKey,
)
from socklb.model.kinds import IPAddress as IPAddress
from socklb.model.values import Affinity, Backend, Service
from socklb.model.values import normalize_key as normalize_key

__all__ = [
    "Affinity",
    "Algorithm",
    "Backend",
    "BackendState",
    "Frontend",
    "Protocol",
    "Service",
    "ServiceKey",
    "MAX_WEIGHT",
    "MAX_BACKENDS_PER_SERVICE",
]


def _own(cls: type) -> None:
    """Make ``cls`` socklb.model's, and the functions of its body with it:
    pickles, reprs and documentation name socklb.model.Service, as before the
    package was split, and ``doctest.testmod(socklb.model)`` finds every example."""
    cls.__module__ = __name__
    for member in vars(cls).values():
        func = getattr(member, "__func__", member)  # a classmethod's function
        if isinstance(func, types.FunctionType) and func.__qualname__.startswith(cls.__qualname__ + "."):
            func.__module__ = __name__


for _cls in (Affinity, Algorithm, Backend, BackendState, Frontend, Protocol, Service):
    _own(_cls)
del _cls
