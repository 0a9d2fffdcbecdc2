"""State of the coordination primitives, on the scheduler thread.

``Event``, ``Lock``/``Semaphore``, ``MultiLock``, ``Variable``, ``Queue`` and published
datasets (``localsched.client.coordination`` and ``Client.publish_dataset``) keep their
state here, in one :class:`Coordination` per runtime. Every operation is a short
non-blocking call on the scheduler thread, made by the request handler for a
``Coordinate`` request (``localsched.transport.requests``), whichever link carried it. A
caller that must wait (an event not set yet, a lock held, an empty queue) sends
``WaitFor``: its waiter is answered once the condition holds, so the scheduler
thread never blocks.

Futures stored in a Variable, a Queue or a dataset are held by a pseudo-client
(``variable-<name>``, ``queue-<name>``, ``published-<name>``, as dask names
them), so their keys stay in memory. Handing a future to a reader goes through a
``handoff-<token>`` pseudo-client that holds the keys until the reader's own
client desires them (``handoff_done``), so a concurrent overwrite cannot lose
them in between.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from localsched.scheduler import events as ev
from localsched.transport.requests import WaitCancelled

if TYPE_CHECKING:
    from localsched.runtime.scheduler_thread import SchedulerRuntime

logger = logging.getLogger("localsched.runtime.scheduler_thread")

Key = Hashable

__all__ = ["DEFERRED", "OPERATIONS", "Coordination", "coordination_of"]

#: A stored value: its pickled bytes and the keys of the futures inside it.
Record = tuple[bytes, tuple[Key, ...]]


@dataclass
class _Semaphore:
    max_leases: int
    #: lease id -> id of the client that holds it
    leases: dict[str, str] = field(default_factory=dict)


@dataclass
class _Queue:
    maxsize: int
    items: deque[Record] = field(default_factory=deque)
    #: key -> how many items of the queue hold it
    refcount: dict[Key, int] = field(default_factory=dict)


@dataclass
class _Waiter:
    client: str
    attempt: Callable[[], Any]
    reply: Callable[[Any], None]
    fail: Callable[[BaseException], None]


#: Operations a caller may wait on (a falsy answer means "not yet"), and the
#: kind of object whose changes may make them succeed.
_WAITABLE = {
    "event_is_set": "event",
    "semaphore_acquire": "semaphore",
    "variable_get": "variable",
    "queue_get": "queue",
    "queue_put": "queue",
    "multilock_acquire": "multilock",
}

#: ``Coordination.wait`` registered a waiter: the answer comes later.
DEFERRED = object()


class Coordination:
    """Events, semaphores, variables, queues and datasets of one cluster."""

    def __init__(self, runtime: SchedulerRuntime) -> None:
        self.runtime = runtime
        self.events: set[str] = set()
        self.semaphores: dict[str, _Semaphore] = {}
        self.variables: dict[str, Record] = {}
        self.queues: dict[str, _Queue] = {}
        self.datasets: dict[Key, Record] = {}
        self.handoffs: set[str] = set()
        #: MultiLock: lock name -> id of the acquisition holding it
        self.multilock_owners: dict[str, str] = {}
        #: MultiLock: acquisition id -> (client, names it holds)
        self.multilock_grants: dict[str, tuple[str, tuple[str, ...]]] = {}
        #: (kind, name) -> wait id -> waiter, in arrival order
        self.waiters: dict[tuple[str, Any], dict[str, _Waiter]] = {}
        self._to_wake: list[tuple[str, Any]] = []
        self._waking = False

    # -- waiters ----------------------------------------------------------------------

    def wait(
        self,
        client: str,
        wait_id: str,
        method: str,
        args: tuple[Any, ...],
        reply: Callable[[Any], None],
        fail: Callable[[BaseException], None],
    ) -> Any:
        """The answer of ``method`` if it holds now, else :data:`DEFERRED`:
        ``reply(answer)`` is called once it holds (on the scheduler thread)."""
        kind = _WAITABLE.get(method)
        if kind is None:
            raise ValueError(f"cannot wait on {method!r}")
        attempt = partial(getattr(self, method), client, *args)
        result = attempt()
        if result:
            return result
        # A MultiLock request spans several names: its waiters form one group,
        # all tried again on any release.
        name = None if kind == "multilock" else args[0]
        waiters = self.waiters.setdefault((kind, name), {})
        waiters[wait_id] = _Waiter(client, attempt, reply, fail)
        return DEFERRED

    def wait_cancel(self, client: str, wait_id: str) -> bool:
        """Withdraw a waiter (it fails with ``WaitCancelled``, so its link
        forgets it); False if it was answered already."""
        for key, waiters in list(self.waiters.items()):
            waiter = waiters.pop(wait_id, None)
            if waiter is not None:
                if not waiters:
                    del self.waiters[key]
                waiter.fail(WaitCancelled(wait_id))
                return True
        return False

    def fail_all(self, error: BaseException) -> None:
        """Fail every waiter with ``error`` (the scheduler thread is stopping)."""
        waiters, self.waiters = self.waiters, {}
        for group in waiters.values():
            for waiter in group.values():
                try:
                    waiter.fail(error)
                except Exception:
                    logger.exception("Could not fail a waiter of %r", waiter.client)

    def _wake(self, kind: str, name: Any) -> None:
        """Answer the waiters of ``(kind, name)`` whose condition now holds."""
        self._to_wake.append((kind, name))
        if self._waking:
            return
        self._waking = True
        clients = self.runtime.clients
        try:
            while self._to_wake:
                key = self._to_wake.pop()
                waiters = self.waiters.get(key)
                if not waiters:
                    continue
                for wait_id, waiter in list(waiters.items()):
                    if wait_id not in waiters:
                        continue
                    if waiter.client not in clients:
                        del waiters[wait_id]  # its client went away
                        continue
                    try:
                        result = waiter.attempt()
                    except Exception as exc:
                        del waiters[wait_id]
                        waiter.fail(exc)
                        continue
                    if result:
                        del waiters[wait_id]
                        waiter.reply(result)
                if not waiters and self.waiters.get(key) is waiters:
                    del self.waiters[key]
        finally:
            self._waking = False

    # -- keys held by pseudo-clients --------------------------------------------------

    def _check_keys(self, keys: tuple[Key, ...]) -> None:
        tasks = self.runtime.scheduler.tasks
        for key in keys:
            if key not in tasks:
                raise TimeoutError(f"Task {key!r} unknown to scheduler.")

    def _desire(self, client: str, keys: tuple[Key, ...]) -> None:
        if keys:
            runtime = self.runtime
            runtime._handle(
                [
                    ev.ClientDesiresKeys(
                        stimulus_id=runtime.stimulus_id("client-desires-keys"),
                        client=client,
                        keys=tuple(keys),
                    )
                ]
            )

    def _drop_client(self, client: str) -> None:
        """Release every key the pseudo-client holds and forget it."""
        runtime = self.runtime
        runtime._handle(
            [
                ev.ClientRemoved(
                    stimulus_id=runtime.stimulus_id("client-removed"), client=client
                )
            ]
        )

    def _release(self, client: str, keys: tuple[Key, ...]) -> None:
        if keys:
            runtime = self.runtime
            runtime._handle(
                [
                    ev.ClientReleasesKeys(
                        stimulus_id=runtime.stimulus_id("client-releases-keys"),
                        client=client,
                        keys=tuple(keys),
                    )
                ]
            )

    def _handoff(self, keys: tuple[Key, ...]) -> str | None:
        """Hold ``keys`` until the reader's client desires them."""
        if not keys:
            return None
        token = f"handoff-{uuid.uuid4().hex}"
        self.handoffs.add(token)
        self._desire(token, keys)
        return token

    def handoff_done(self, client: str, token: str) -> None:
        if token in self.handoffs:
            self.handoffs.discard(token)
            self._drop_client(token)

    # -- Event ------------------------------------------------------------------------

    def event_set(self, client: str, name: str) -> None:
        self.events.add(name)
        self._wake("event", name)

    def event_clear(self, client: str, name: str) -> None:
        self.events.discard(name)

    def event_is_set(self, client: str, name: str) -> bool:
        return name in self.events

    # -- Semaphore / Lock -------------------------------------------------------------

    def _semaphore(self, name: str, max_leases: int | None) -> _Semaphore:
        sem = self.semaphores.get(name)
        if sem is None:
            sem = self.semaphores[name] = _Semaphore(max_leases or 1)
        elif max_leases is not None and sem.max_leases != max_leases:
            raise ValueError(
                f"Inconsistent max leases: {name}, expected: {sem.max_leases}, "
                f"got: {max_leases}"
            )
        # Leases of a client (or a worker's client) that went away are free.
        clients = self.runtime.clients
        dead = [lid for lid, owner in sem.leases.items() if owner not in clients]
        for lease_id in dead:
            del sem.leases[lease_id]
        return sem

    def semaphore_create(self, client: str, name: str, max_leases: int) -> None:
        self._semaphore(name, max_leases)

    def semaphore_acquire(
        self, client: str, name: str, max_leases: int, lease_id: str
    ) -> bool:
        sem = self._semaphore(name, max_leases)
        if lease_id in sem.leases:
            return True
        if len(sem.leases) >= sem.max_leases:
            return False
        sem.leases[lease_id] = client
        return True

    def semaphore_release(self, client: str, name: str, lease_id: str) -> bool:
        sem = self.semaphores.get(name)
        if sem is None or lease_id not in sem.leases:
            return False
        del sem.leases[lease_id]
        self._wake("semaphore", name)
        return True

    def semaphore_value(self, client: str, name: str) -> int:
        if name not in self.semaphores:
            return 0
        return len(self._semaphore(name, None).leases)

    def semaphore_close(self, client: str, name: str) -> None:
        self.semaphores.pop(name, None)
        self._wake("semaphore", name)

    # -- MultiLock --------------------------------------------------------------------

    def multilock_acquire(
        self, client: str, names: tuple[str, ...], num_locks: int, lock_id: str
    ) -> bool:
        """Grant ``num_locks`` of ``names`` to ``lock_id`` at once, or nothing."""
        if not 0 < num_locks <= len(names):
            raise ValueError(
                f"num_locks must be between 1 and {len(names)}, got {num_locks}"
            )
        # Locks of a client (or a worker's client) that went away are free.
        clients = self.runtime.clients
        for gone in [
            i for i, (c, _) in self.multilock_grants.items() if c not in clients
        ]:
            self._multilock_free(gone)
        if lock_id in self.multilock_grants:
            return True
        owners = self.multilock_owners
        free = [name for name in dict.fromkeys(names) if name not in owners]
        if len(free) < num_locks:
            return False
        taken = tuple(free[:num_locks])
        for name in taken:
            owners[name] = lock_id
        self.multilock_grants[lock_id] = (client, taken)
        return True

    def multilock_release(self, client: str, lock_id: str) -> bool:
        if not self._multilock_free(lock_id):
            return False
        self._wake("multilock", None)
        return True

    def _multilock_free(self, lock_id: str) -> bool:
        grant = self.multilock_grants.pop(lock_id, None)
        if grant is None:
            return False
        for name in grant[1]:
            del self.multilock_owners[name]
        return True

    # -- Variable ---------------------------------------------------------------------

    def variable_set(self, client: str, name: str, record: Record) -> None:
        keys = tuple(record[1])
        self._check_keys(keys)
        holder = f"variable-{name}"
        self._desire(holder, keys)
        old = self.variables.get(name)
        self.variables[name] = (record[0], keys)
        if old is not None:
            self._release(holder, tuple(k for k in old[1] if k not in keys))
        self._wake("variable", name)

    def variable_get(
        self, client: str, name: str
    ) -> tuple[bytes, tuple[Key, ...], str | None] | None:
        record = self.variables.get(name)
        if record is None:
            return None
        return record[0], record[1], self._handoff(record[1])

    def variable_delete(self, client: str, name: str) -> None:
        if self.variables.pop(name, None) is not None:
            self._drop_client(f"variable-{name}")

    # -- Queue ------------------------------------------------------------------------

    def _queue(self, name: str) -> _Queue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = _Queue(0)
        return queue

    def queue_create(self, client: str, name: str, maxsize: int) -> None:
        if name not in self.queues:
            self.queues[name] = _Queue(maxsize)

    def queue_put(self, client: str, name: str, record: Record) -> bool:
        queue = self._queue(name)
        if queue.maxsize > 0 and len(queue.items) >= queue.maxsize:
            return False
        keys = tuple(record[1])
        self._check_keys(keys)
        self._desire(f"queue-{name}", keys)
        for key in keys:
            queue.refcount[key] = queue.refcount.get(key, 0) + 1
        queue.items.append((record[0], keys))
        self._wake("queue", name)
        return True

    def queue_get(
        self, client: str, name: str, count: int | None
    ) -> tuple[list[Record], str | None] | None:
        """``count`` items (all there are if None); None if too few are there."""
        queue = self._queue(name)
        items = queue.items
        if count is None:
            count = len(items)
        elif len(items) < count:
            return None
        taken = [items.popleft() for _ in range(count)]
        keys = tuple({key: None for _, ks in taken for key in ks})
        token = self._handoff(keys)
        released = []
        for key in (key for _, ks in taken for key in ks):
            left = queue.refcount[key] - 1
            if left:
                queue.refcount[key] = left
            else:
                del queue.refcount[key]
                released.append(key)
        self._release(f"queue-{name}", tuple(released))
        if taken:
            self._wake("queue", name)
        return taken, token

    def queue_qsize(self, client: str, name: str) -> int:
        return len(self._queue(name).items)

    def queue_close(self, client: str, name: str) -> None:
        if self.queues.pop(name, None) is not None:
            self._drop_client(f"queue-{name}")

    # -- datasets ---------------------------------------------------------------------

    def publish_put(
        self, client: str, names: list[Key], records: list[Record], override: bool
    ) -> None:
        if not override:
            for name in names:
                if name in self.datasets:
                    raise KeyError(f"Dataset {name} already exists")
        for name, record in zip(names, records, strict=True):
            keys = tuple(record[1])
            self._check_keys(keys)
            holder = f"published-{name}"
            old = self.datasets.pop(name, None)
            self._desire(holder, keys)
            if old is not None:
                self._release(holder, tuple(k for k in old[1] if k not in keys))
            self.datasets[name] = (record[0], keys)

    def publish_get(
        self, client: str, names: list[Key]
    ) -> list[tuple[bytes, tuple[Key, ...], str | None] | None]:
        out: list[tuple[bytes, tuple[Key, ...], str | None] | None] = []
        for name in names:
            record = self.datasets.get(name)
            if record is None:
                out.append(None)
            else:
                out.append((record[0], record[1], self._handoff(record[1])))
        return out

    def publish_list(self, client: str) -> list[Key]:
        return sorted(self.datasets, key=str)

    def publish_delete(self, client: str, names: list[Key]) -> None:
        for name in names:
            if self.datasets.pop(name, None) is not None:
                self._drop_client(f"published-{name}")


#: Methods the runtime calls itself; no client may name them.
_RUNTIME_ONLY = frozenset({"wait", "fail_all"})

#: The operations a ``Coordinate`` request may name (``requests.Operation``).
OPERATIONS = frozenset(
    name
    for name in vars(Coordination)
    if not name.startswith("_")
    and name not in _RUNTIME_ONLY
    and callable(getattr(Coordination, name))
)


def coordination_of(runtime: SchedulerRuntime) -> Coordination:
    """The runtime's :class:`Coordination` (scheduler thread only)."""
    state = getattr(runtime, "_coordination", None)
    if state is None:
        state = Coordination(runtime)
        runtime._coordination = state  # type: ignore[attr-defined]
    return state
