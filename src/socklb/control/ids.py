"""Id allocation: fresh u32 ids for services, lists and backends.

A plan reserves the ids it needs (:class:`Reserved`, kept as ranges); the
writer commits them or gives them back.  :class:`Ids` hands out ids that are
not reused until its counter wraps, and only then keeps track of those in use.
Pure Python.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Set

from socklb.errors import CapacityError

__all__ = ["Ids", "Reserved"]


class Reserved:
    """Ids a plan reserved, kept as the ranges they were taken in: the
    5,000,000 backend ids of a large first sync are a few hundred thousand
    ``range`` objects, not 5,000,000 ints."""

    __slots__ = ("_ones", "_parts", "_removed")

    def __init__(self) -> None:
        self._parts: List[Sequence[int]] = []
        self._ones: List[int] = []
        self._removed: Set[int] = set()

    def append(self, i: int) -> None:
        self._ones.append(i)
        self._removed.discard(i)

    def extend(self, ids: Sequence[int]) -> None:
        self._parts.append(ids)
        if self._removed:
            self._removed.difference_update(ids)

    def remove(self, i: int) -> None:
        if i not in self:
            raise ValueError(f"id {i} is not reserved")
        self._removed.add(i)

    def __contains__(self, i: object) -> bool:
        if i in self._removed:
            return False
        return i in self._ones or any(i in part for part in self._parts)

    def __iter__(self) -> Iterator[int]:
        removed = self._removed
        for part in self._parts:
            for i in part:
                if i not in removed:
                    yield i
        for i in self._ones:
            if i not in removed:
                yield i

    def __len__(self) -> int:
        return sum(map(len, self._parts)) + len(self._ones) - len(self._removed)


class Ids:
    """Allocator of non-zero ids (u32) that are not reused until the counter wraps.

    Until then an id is new by construction and nothing is recorded: a
    controller with 500,000 backends keeps no set of them.  When the counter
    wraps, the ids still in use are read once from ``in_use`` (plus those
    taken since the state last committed or aborted), and from then on every
    id taken is recorded and every id given back is forgotten.
    """

    def __init__(self, in_use: Callable[[], Iterable[int]], limit: int = 0xFFFFFFFF) -> None:
        self._in_use = in_use
        self._limit = limit
        self._next = 1
        self._used: Optional[Set[int]] = None  # recorded only once the counter wrapped
        self._recent: List[Iterable[int]] = []  # ranges taken since the last settle()
        self._recent_ones: List[int] = []  # single ids taken since then

    def settle(self) -> None:
        """What was taken is now in the state (committed) or given back (aborted)."""
        self._recent.clear()
        self._recent_ones.clear()

    def _wrap(self) -> Set[int]:
        used = set(self._in_use())
        for r in self._recent:
            used.update(r)
        used.update(self._recent_ones)
        self._used, self._next = used, 1
        return used

    def take(self) -> int:
        used = self._used
        if used is None:
            i = self._next
            if i <= self._limit:
                self._next = i + 1
                self._recent_ones.append(i)
                return i
            used = self._wrap()
        for _ in range(self._limit):
            i = self._next
            self._next = i + 1 if i < self._limit else 1
            if i not in used:
                used.add(i)
                return i
        raise CapacityError("ids", self._limit + 1, self._limit)

    def take_many(self, n: int) -> Sequence[int]:
        """n ids; a contiguous range unless the counter is about to wrap."""
        start = self._next
        if self._used is None and start + n - 1 <= self._limit:
            r = range(start, start + n)
            self._next = start + n
            self._recent.append(r)
            return r
        return [self.take() for _ in range(n)]

    def give(self, i: int) -> None:
        if self._used is not None:
            self._used.discard(i)

    def mark(self, i: int) -> None:
        """Record an id found in use (adopting pinned state)."""
        if self._used is not None:
            self._used.add(i)
        if i >= self._next:
            self._next = i + 1  # past the limit: the next take wraps
