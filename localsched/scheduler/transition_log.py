"""The transition log: dask's ``Transition`` records, stored flat.

Kept out of the compiled core (``setup.py``): ``TransitionLog`` subclasses
``collections.deque``, which a mypyc native class cannot, and it is read (by
``story``, plugins, tests) far less often than it is appended to.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator, Mapping
from typing import Any, NamedTuple

Key = Hashable  # as tasks.Key (tasks imports this module)


class Transition(NamedTuple):
    """One entry of the transition log (dask's ``Transition`` namedtuple)."""

    key: Key
    start: str
    finish: str
    recommendations: Mapping[Key, str]
    stimulus_id: str
    time: float


#: A log entry as stored: ``(key, start, finish, stimulus_id, time, *rec_keys,
#: *rec_states)``, one flat tuple (see ``TransitionLog``).
LogEntry = tuple[Any, ...]


# ``Any``: entries are stored as flat ``LogEntry`` tuples and read back as
# ``Transition`` records, two types for one item.
class TransitionLog(deque[Any]):
    """The bounded transition log; reads hand out ``Transition`` records.

    Entries are stored as flat tuples of atoms: ``(key, start, finish,
    stimulus_id, time)`` followed by the recommended keys, then their states.
    The garbage collector stops tracking a tuple of atoms at its first
    collection, while a tuple holding a dict (or a nested tuple not yet
    untracked) stays tracked, and 100,000 log entries walked on every full
    collection were a large part of the core's cost per task. Only the engine
    appends (``record``, or ``append`` with an entry already in that form).
    Iterating and indexing rebuild each entry as a ``Transition``, with a dict
    of recommendations, as dask's log holds.
    """

    __slots__ = ()

    def record(
        self,
        key: Key,
        start: str,
        finish: str,
        recommendations: Mapping[Key, str],
        stimulus_id: str,
        time: float,
    ) -> None:
        """Append one transition (the engine's hot path inlines this)."""
        self.append(
            (
                key,
                start,
                finish,
                stimulus_id,
                time,
                *recommendations,
                *recommendations.values(),
            )
        )

    def entries(self) -> Iterator[LogEntry]:
        """The stored entries, oldest first, without building records."""
        return deque.__iter__(self)

    def __iter__(self) -> Iterator[Transition]:
        for entry in deque.__iter__(self):
            yield as_transition(entry)

    def __reversed__(self) -> Iterator[Transition]:
        for entry in deque.__reversed__(self):
            yield as_transition(entry)

    # Integer indexing only (dask's log is read that way); deque's slice-free
    # signature also takes SupportsIndex, which mypy wants kept.
    def __getitem__(self, index: int) -> Transition:  # type: ignore[override]
        return as_transition(deque.__getitem__(self, index))

    def __repr__(self) -> str:
        return f"TransitionLog({list(self)!r}, maxlen={self.maxlen})"


def recommended_keys(entry: LogEntry) -> tuple[Key, ...]:
    """The keys a stored log entry recommended."""
    return entry[5 : 5 + (len(entry) - 5) // 2]


def as_transition(entry: LogEntry) -> Transition:
    """A stored log entry as a ``Transition`` record."""
    key, start, finish, stimulus_id, time = entry[:5]
    n = (len(entry) - 5) // 2
    recommendations = dict(zip(entry[5 : 5 + n], entry[5 + n :], strict=True))
    return Transition(key, start, finish, recommendations, stimulus_id, time)
