"""Commands: what the scheduler core asks the world to do (commands out).

Commands are imperatives addressed to a worker, a client or the data store. The
runtime executes them; the core never waits for the outcome, which comes back as
a new event. ``Command.match`` builds partial matchers for tests. Commands are
never changed once built; like events they are not ``frozen`` only because that
triples the cost of building one, and the core builds one or more per task.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, fields
from typing import Any

Key = Hashable


@dataclass(slots=True, kw_only=True)
class Command:
    """Base class of all commands."""

    stimulus_id: str

    @classmethod
    def match(cls, **partial: Any) -> _CommandMatcher:
        """A value equal to any command of this class whose named fields match."""
        names = {f.name for f in fields(cls)}
        unknown = set(partial) - names
        if unknown:
            raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
        return _CommandMatcher(cls, partial)


class _CommandMatcher:
    __slots__ = ("cls", "partial")

    def __init__(self, cls: type[Command], partial: dict[str, Any]) -> None:
        self.cls = cls
        self.partial = partial

    def __eq__(self, other: object) -> bool:
        return type(other) is self.cls and all(
            getattr(other, name) == value for name, value in self.partial.items()
        )

    def __hash__(self) -> int:
        return hash(self.cls)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.partial.items())
        return f"{self.cls.__name__}.match({args})"


# --- to workers -------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class ComputeTask(Command):
    """Run a task on a worker; its dependencies are in memory somewhere."""

    worker: str
    key: Key
    run_spec: object
    priority: tuple[float, ...]
    #: Keys of the task's dependencies (their data must be passed to it).
    dependencies: tuple[Key, ...]
    resource_restrictions: dict[str, float] | None
    annotations: Mapping[str, Any]
    #: Echo this in the finished/erred message so stale answers are ignored.
    run_id: int


@dataclass(slots=True, kw_only=True)
class FreeKeys(Command):
    """A worker should forget these keys: drop results, cancel queued runs."""

    worker: str
    keys: tuple[Key, ...]


@dataclass(slots=True, kw_only=True)
class StealRequest(Command):
    """Ask a worker whether a queued task can be moved to ``thief``."""

    worker: str
    key: Key
    thief: str


@dataclass(slots=True, kw_only=True)
class AcquireReplicas(Command):
    """Copy keys that only ``source`` holds in-process onto ``worker``."""

    worker: str
    keys: tuple[Key, ...]
    source: str


@dataclass(slots=True, kw_only=True)
class CloseWorker(Command):
    """Stop a worker process (after retirement it holds nothing unique)."""

    worker: str
    reason: str


# --- to the data store ---------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class FreeData(Command):
    """A key's result is no longer needed anywhere: free its stored bytes."""

    key: Key


# --- to clients ----------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class KeyInMemory(Command):
    client: str
    key: Key
    type: str | None


@dataclass(slots=True, kw_only=True)
class KeyErred(Command):
    client: str
    key: Key
    exception: object
    traceback: object
    exception_text: str
    traceback_text: str


@dataclass(slots=True, kw_only=True)
class KeyLost(Command):
    """A key's data was lost; the client's future goes back to pending."""

    client: str
    key: Key


@dataclass(slots=True, kw_only=True)
class KeyCancelled(Command):
    client: str
    key: Key
    reason: str


@dataclass(slots=True, kw_only=True)
class KeyRetried(Command):
    client: str
    key: Key


@dataclass(slots=True, kw_only=True)
class GraphRejected(Command):
    """A submitted graph was invalid; nothing changed."""

    client: str
    keys: tuple[Key, ...]
    error: Exception


@dataclass(slots=True, kw_only=True)
class RetirementFailed(Command):
    """Workers could not be retired (no other worker can take their data)."""

    workers: tuple[str, ...]
    reason: str
