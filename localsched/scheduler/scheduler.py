"""``Scheduler``: the dask-named object that users and plugins see.

It wraps a ``SchedulerState`` (the pure core) and a ``PluginRegistry``. Its state
attributes are the core's own containers (no copies), and its methods keep dask's
names and signatures. Methods that change state go through the core's ``handle``,
so every invariant and the transition log stay intact; commands they produce are
collected in ``outbox`` for the runtime to carry out (when called from a plugin
hook inside ``handle``, they join that call's commands instead).
"""

from __future__ import annotations

import inspect
import itertools
import os
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from typing import Any, TypeVar

from localsched.plugins import PluginRegistry, SchedulerPlugin
from localsched.scheduler import engine, placement, policies
from localsched.scheduler import events as ev
from localsched.scheduler.commands import Command
from localsched.scheduler.computations import Computations
from localsched.scheduler.state import SchedulerState
from localsched.scheduler.tasks import (
    ClientState,
    TaskGroup,
    TaskPrefix,
    TaskState,
    WorkerState,
)
from localsched.scheduler.transition_log import Transition
from localsched.status import StatusStr

Key = Hashable
_T = TypeVar("_T")

_stimulus_counter = itertools.count()


def _stimulus(name: str) -> str:
    return f"{name}-{next(_stimulus_counter)}"


#: Events the facade keeps its own records for (``Scheduler.computations``).
_BOOKKEEPING = frozenset({ev.UpdateGraph, ev.RestartRequested})


class Scheduler:
    """Dynamic task scheduler for one machine (dask's ``Scheduler`` surface).

    Parameters
    ----------
    allowed_failures
        Times a task may be executing on a worker that dies before it errs with
        ``KilledWorker`` (default 3).
    validate
        Check every invariant after each change (slow; for tests).
    idle_timeout
        Seconds without work after which the runtime shuts the cluster down
        (None: never).
    worker_ttl
        Seconds without a message after which the runtime considers a worker
        dead (None: rely on process sentinels only).
    plugins
        Scheduler plugins to register at start.
    worker_saturation
        Root-ish tasks sent per worker thread ahead of time; ``inf`` disables
        queuing.
    computations_max_history
        How many computations ``computations`` keeps (dask's
        ``distributed.diagnostics.computations.max-history``).
    **kwargs
        More options of ``SchedulerState`` (``unknown_task_duration``,
        ``bandwidth``, ``transition_log_length``, ``work_stealing``...).

    Examples
    --------
    >>> s = Scheduler(validate=True)
    >>> s.tasks
    {}
    """

    def __init__(
        self,
        *,
        allowed_failures: int | None = None,
        validate: bool | None = None,
        idle_timeout: float | None = None,
        worker_ttl: float | None = None,
        plugins: Iterable[Any] = (),
        worker_saturation: float = 1.1,
        computations_max_history: int = 100,
        **kwargs: Any,
    ) -> None:
        self.state = SchedulerState(
            allowed_failures=3 if allowed_failures is None else allowed_failures,
            validate=bool(validate),
            worker_saturation=worker_saturation,
            **kwargs,
        )
        self.idle_timeout = idle_timeout
        self.worker_ttl = worker_ttl
        self.id = f"Scheduler-{os.getpid()}-{id(self):x}"
        self.address = f"local://{os.getpid()}"
        #: ``time.time()`` when the runtime started it (set there: the core
        #: reads no clock); dask's ``identity()["started"]``.
        self.started: float | None = None
        #: Commands produced by calls made outside ``handle`` (runtime flushes it).
        self.outbox: list[Command] = []
        #: The ``LocalCluster`` running this scheduler (set by it; weakly, and
        #: without an import: the reprs find their snapshot through it).
        self.cluster_ref: Callable[[], Any] = lambda: None
        self._plugins = PluginRegistry(self)
        self.state.hooks = self._plugins
        #: The runtime's event log (``runtime/event_log.py``: events kept per
        #: topic and sent to subscribers); None: only plugins see events.
        self.event_log: Any = None
        #: History of computations, oldest first (dask's deque of
        #: ``Computation``; ``scheduler/computations.py``).
        self.computations = Computations(maxlen=computations_max_history)
        self.status = StatusStr("init")
        for plugin in plugins:
            self.add_plugin(plugin)

    # -- state variables (the core's own containers) -----------------------------------

    @property
    def tasks(self) -> dict[Key, TaskState]:
        return self.state.tasks

    @property
    def workers(self) -> dict[str, WorkerState]:
        return self.state.workers

    @property
    def running(self) -> set[WorkerState]:
        return self.state.running

    @property
    def idle(self) -> dict[str, WorkerState]:
        return self.state.idle

    @property
    def saturated(self) -> set[WorkerState]:
        return self.state.saturated

    @property
    def unrunnable(self) -> dict[TaskState, float]:
        return self.state.unrunnable

    @property
    def queued(self) -> Any:
        return self.state.queued

    @property
    def clients(self) -> dict[str, ClientState]:
        return self.state.clients

    @property
    def task_groups(self) -> dict[str, TaskGroup]:
        return self.state.task_groups

    @property
    def task_prefixes(self) -> dict[str, TaskPrefix]:
        return self.state.task_prefixes

    @property
    def host_info(self) -> dict[str, dict[str, Any]]:
        return self.state.host_info

    @property
    def task_duration(self) -> dict[str, float]:
        return self.state.task_duration

    @property
    def transition_log(self) -> Any:
        return self.state.transition_log

    @property
    def total_nthreads(self) -> int:
        return self.state.total_nthreads

    @property
    def total_occupancy(self) -> float:
        return self.state.total_occupancy

    @property
    def n_tasks(self) -> int:
        return self.state.n_tasks

    @property
    def allowed_failures(self) -> int:
        return self.state.allowed_failures

    @allowed_failures.setter
    def allowed_failures(self, value: int) -> None:
        # dask's is a plain attribute that tests and tools set.
        self.state.allowed_failures = int(value)

    @property
    def validate(self) -> bool:
        return self.state.validate

    @property
    def plugins(self) -> dict[str, Any]:
        """name -> plugin, as in dask."""
        return self._plugins.plugins

    # -- driving the core --------------------------------------------------------------

    def handle(self, *events: ev.StateEvent) -> list[Command]:
        """Feed events to the core; return the commands (the runtime's entry)."""
        for event in events:
            if type(event) in _BOOKKEEPING:
                break
        else:  # the usual batch: results and releases
            return self.state.handle(*events)
        # Graphs go to the core one at a time, each filed in a computation;
        # the events between them in batches, in order.
        commands: list[Command] = []
        batch: list[ev.StateEvent] = []
        for event in events:
            if type(event) is ev.UpdateGraph:
                if batch:
                    commands += self.state.handle(*batch)
                    batch = []
                commands += self._update_graph(event)
            else:
                batch.append(event)
        if batch:
            commands += self.state.handle(*batch)
        if any(type(event) is ev.RestartRequested for event in events):
            self.computations.clear()  # as dask's restart: the groups are gone
        return commands

    def _update_graph(self, event: ev.UpdateGraph) -> list[Command]:
        state = self.state
        computation = self.computations.for_graph(
            state.task_groups, event.time, event.code, event.global_annotations
        )
        outer, state.created_groups = state.created_groups, []
        try:
            commands = state.handle(event)
            computation.groups.update(state.created_groups)
        finally:
            state.created_groups = outer
        return commands

    def _apply(self, *events: ev.StateEvent) -> list[Command]:
        nested = self.state._handling
        commands = self.handle(*events)
        if not nested:
            self.outbox.extend(commands)
        return commands

    def take_outbox(self) -> list[Command]:
        """Commands produced outside ``handle`` since the last call."""
        out, self.outbox = self.outbox, []
        return out

    # -- plugins -----------------------------------------------------------------------

    def add_plugin(
        self,
        plugin: SchedulerPlugin | Any = None,
        *,
        idempotent: bool | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Add an external plugin to the scheduler.

        Parameters
        ----------
        plugin
            A ``SchedulerPlugin`` (or any object with some of its hooks).
        idempotent
            Keep an existing plugin of the same name instead of replacing it
            (default: the plugin's ``idempotent`` attribute).
        name
            Name of the plugin (default: its ``name`` attribute, else a unique one).
        """
        if plugin is None:
            raise ValueError("add_plugin needs a plugin")
        if isinstance(plugin, type):
            raise TypeError(
                f"add_plugin got the class {plugin.__name__}; pass an instance"
            )
        added = self._plugins.add(plugin, name=name, idempotent=idempotent)
        self._sync_transition_hook()
        if added and self.status == "running":
            self._plugins.call_plugin(plugin, "start", self)

    def remove_plugin(self, name: str | None = None) -> None:
        """Remove the plugin registered under ``name``."""
        if name is None:
            raise ValueError("remove_plugin needs the plugin's name")
        self._plugins.remove(name)
        self._sync_transition_hook()

    def _sync_transition_hook(self) -> None:
        self.state.transition_hook = (
            self._plugins.transition if self._plugins.has("transition") else None
        )

    def start(self) -> None:
        """Mark the scheduler running and run the plugins' ``start`` hooks."""
        if self.status == "running":
            return
        self.status = StatusStr("running")
        self._plugins.call("start", self)

    def close(self) -> None:
        """Run ``before_close`` then ``close`` hooks; idempotent."""
        if self.status in ("closing", "closed"):
            return
        self.status = StatusStr("closing")
        self._plugins.call("before_close")
        self._plugins.call("close")
        self._plugins.close()
        self.status = StatusStr("closed")

    def log_event(self, topic: str | Collection[str], msg: Any) -> None:
        """Log an event under a topic, or each of a list of topics.

        The event ``(time, msg)`` is kept (the last 1,000 per topic), sent to
        the clients subscribed to the topic (``Client.subscribe_topic``), and
        plugins' ``log_event`` hooks see it.
        """
        topics = [topic] if isinstance(topic, str) else list(topic)
        if self.event_log is not None:
            self.event_log.publish(topics, msg)
        for t in topics:
            self._plugins.call("log_event", t, msg)

    def get_events(self, topic: str | None = None) -> Any:
        """Events of ``topic`` as ``((time, msg), ...)``, oldest first; of
        every topic (a dict) if None. Empty without a runtime."""
        if self.event_log is None:
            return () if topic is not None else {}
        return self.event_log.get_events(topic)

    def subscribe_topic(self, topic: str, client: str) -> None:
        """Send ``client`` the events later logged under ``topic``."""
        if self.event_log is not None:
            self.event_log.subscribe(topic, client)

    def unsubscribe_topic(self, topic: str, client: str) -> None:
        """Stop sending ``client`` the events of ``topic``."""
        if self.event_log is not None:
            self.event_log.unsubscribe(topic, client)

    # -- graph and data ----------------------------------------------------------------

    def update_graph(
        self,
        client: str,
        tasks: Mapping[Key, object],
        keys: Collection[Key],
        dependencies: Mapping[Key, Collection[Key]] | None = None,
        *,
        restrictions: Mapping[Key, Collection[Hashable]] | None = None,
        priority: Mapping[Key, int] | None = None,
        loose_restrictions: Collection[Key] = (),
        resources: Mapping[Key, Mapping[str, float]] | None = None,
        submitting_task: Key | None = None,
        retries: int | Mapping[Key, int] | None = None,
        user_priority: int | Mapping[Key, int] = 0,
        fifo_timeout: float = 0.0,
        annotations: Mapping[Key, Mapping[str, Any]] | None = None,
        stimulus_id: str | None = None,
        time: float = 0.0,
    ) -> list[Command]:
        """Add new computations to the graph (``Client.submit``/``map``/``compute``)."""
        return self._apply(
            ev.UpdateGraph(
                stimulus_id=stimulus_id or _stimulus("update-graph"),
                client=client,
                tasks=tasks,
                dependencies=dependencies or {},
                keys=keys,
                priority=priority,
                user_priority=user_priority,
                fifo_timeout=fifo_timeout,
                restrictions=restrictions,
                loose_restrictions=loose_restrictions,
                resources=resources,
                retries=retries,
                annotations=annotations,
                submitting_task=submitting_task,
                time=time,
            )
        )

    def update_data(
        self,
        *,
        who_has: Mapping[Key, str | None],
        nbytes: Mapping[Key, int] | None = None,
        client: str | None = None,
        shared: bool = True,
        types: Mapping[Key, str] | None = None,
    ) -> list[Command]:
        """Learn that new data entered the cluster from outside (``scatter``)."""
        return self._apply(
            ev.UpdateData(
                stimulus_id=_stimulus("update-data"),
                client=client or "fire-and-forget",
                who_has=who_has,
                nbytes=nbytes or {},
                types=types or {},
                shared=shared,
            )
        )

    def add_keys(self, worker: str, keys: Collection[Key] = ()) -> str:
        """Learn that a worker holds copies of keys."""
        if worker not in self.workers:
            return "not found"
        self._apply(
            ev.ReplicasAdded(
                stimulus_id=_stimulus("add-keys"), worker=worker, keys=keys
            )
        )
        return "OK"

    def add_resources(self, worker: str, resources: Mapping[str, float]) -> str:
        """Declare resources a worker offers (on top of those it started with)."""
        ws = self.workers[self.coerce_address(worker)]
        for name, amount in resources.items():
            ws.resources[name] = amount
            ws.used_resources.setdefault(name, 0.0)
        return "OK"

    def new_task(self, key: Key, spec: object, state: str = "released") -> TaskState:
        """Create a task record (released) in its group and prefix."""
        if state != "released":
            raise ValueError("new tasks start released; use transitions to move them")
        return self.state.new_task(key, spec)

    # -- stimuli under dask's names ----------------------------------------------------

    def stimulus_task_finished(
        self, key: Key, worker: str, **kwargs: Any
    ) -> list[Command]:
        """Mark that a task finished on a worker."""
        return self._apply(
            ev.TaskFinished(
                stimulus_id=kwargs.pop("stimulus_id", None)
                or _stimulus("task-finished"),
                key=key,
                worker=worker,
                **kwargs,
            )
        )

    def stimulus_task_erred(
        self,
        key: Key,
        worker: str,
        exception: object = None,
        traceback: object = None,
        **kwargs: Any,
    ) -> list[Command]:
        """Mark that a task erred on a worker."""
        return self._apply(
            ev.TaskErred(
                stimulus_id=kwargs.pop("stimulus_id", None) or _stimulus("task-erred"),
                key=key,
                worker=worker,
                exception=exception,
                traceback=traceback,
                **kwargs,
            )
        )

    def stimulus_missing_data(
        self, key: Key, worker: str | None = None, **kwargs: Any
    ) -> list[Command]:
        """Mark that a key's data went missing; recover by recomputing."""
        return self._apply(
            ev.MissingData(
                stimulus_id=_stimulus("missing-data"), key=key, worker=worker
            )
        )

    def stimulus_cancel(
        self, keys: Collection[Key], client: str, force: bool = False
    ) -> list[Command]:
        """Stop execution of keys (and their dependents) for a client."""
        return self._apply(
            ev.CancelRequested(
                stimulus_id=_stimulus("cancel"), client=client, keys=keys, force=force
            )
        )

    def cancel_key(self, key: Key, client: str, force: bool = False) -> list[Command]:
        """Cancel one key and everything that depends on it."""
        return self.stimulus_cancel([key], client, force)

    def stimulus_retry(self, keys: Collection[Key], client: str) -> list[Command]:
        """Retry erred keys (and the erred tasks they depend on)."""
        return self._apply(
            ev.RetryRequested(stimulus_id=_stimulus("retry"), client=client, keys=keys)
        )

    def handle_long_running(
        self, key: Key, worker: str, compute_duration: float | None = None
    ) -> list[Command]:
        """A task seceded from its worker's thread pool."""
        return self._apply(
            ev.TaskSeceded(
                stimulus_id=_stimulus("secede"),
                key=key,
                worker=worker,
                compute_duration=compute_duration,
            )
        )

    def reschedule(self, key: Key, worker: str | None = None) -> list[Command]:
        """Place a processing task again, maybe elsewhere."""
        return self._apply(
            ev.RescheduleRequested(
                stimulus_id=_stimulus("reschedule"), key=key, worker=worker
            )
        )

    def remove_client(self, client: str) -> list[Command]:
        """Forget a client and release every key it held."""
        return self._apply(
            ev.ClientRemoved(stimulus_id=_stimulus("remove-client"), client=client)
        )

    def client_releases_keys(self, keys: Collection[Key], client: str) -> list[Command]:
        return self._apply(
            ev.ClientReleasesKeys(
                stimulus_id=_stimulus("release"), client=client, keys=keys
            )
        )

    def client_desires_keys(self, keys: Collection[Key], client: str) -> list[Command]:
        return self._apply(
            ev.ClientDesiresKeys(
                stimulus_id=_stimulus("desire"), client=client, keys=keys
            )
        )

    def retire_workers(
        self,
        workers: Collection[str] | None = None,
        *,
        names: Collection[Any] | None = None,
        close_workers: bool = False,
        remove: bool = True,
        **kwargs: Any,
    ) -> list[str]:
        """Start retiring workers gracefully; return their addresses.

        Without ``workers`` or ``names``, ``workers_to_close(**kwargs)`` chooses.
        The core stops placing work on them, waits for their tasks, moves data
        that lives only inside them, then removes (and optionally closes) them.
        """
        if names is not None:
            addresses = [
                ws.address for ws in self.workers.values() if ws.name in set(names)
            ]
        elif workers is not None:
            addresses = self.workers_list(workers)
        else:
            addresses = self.workers_to_close(**kwargs)
        if addresses:
            self._apply(
                ev.RetireWorkers(
                    stimulus_id=_stimulus("retire-workers"),
                    workers=addresses,
                    close_workers=close_workers,
                )
            )
        return addresses

    def restart(self) -> list[Command]:
        """Forget every task; plugins' ``restart`` hooks run."""
        return self._apply(ev.RestartRequested(stimulus_id=_stimulus("restart")))

    # -- transitions -------------------------------------------------------------------

    def transition(
        self,
        key: Key,
        finish: str,
        *args: Any,
        stimulus_id: str | None = None,
        **kwargs: Any,
    ) -> dict[Key, str]:
        """Transition a key to ``finish``; return the recommendations that follow.

        >>> scheduler.transition('x', 'waiting')  # doctest: +SKIP
        {'x': 'processing'}
        """
        stimulus_id = stimulus_id or _stimulus("transition")
        return self._in_handle(
            lambda: engine.transition(self.state, key, finish, stimulus_id, **kwargs)
        )

    def transitions(
        self, recommendations: Mapping[Key, str], stimulus_id: str | None = None
    ) -> None:
        """Process transitions until none are left."""
        stimulus_id = stimulus_id or _stimulus("transitions")
        self._in_handle(
            lambda: engine.run_transitions(
                self.state, dict(recommendations), stimulus_id
            )
        )

    def _in_handle(self, func: Callable[[], _T]) -> _T:
        state = self.state
        if state._handling:
            return func()
        state._commands = []
        state._handling = True
        try:
            result = func()
        finally:
            state._handling = False
            self.outbox.extend(state._commands)
            state._commands = []
        if state.validate:
            state.validate_state()
        return result

    # -- placement and policies under dask's names -------------------------------------

    def decide_worker(self, ts: TaskState) -> WorkerState | None:
        """The worker ``ts`` would go to now (no state change)."""
        state = self.state
        if placement.is_rootish(state, ts) and placement.queuing_enabled(state):
            return placement.decide_worker_rootish_queuing_enabled(state)
        return placement.decide_worker_non_rootish(state, ts)

    def valid_workers(self, ts: TaskState) -> set[WorkerState] | None:
        return placement.valid_workers(self.state, ts)

    def worker_objective(self, ts: TaskState, ws: WorkerState) -> tuple[float, int]:
        return placement.worker_objective(self.state, ts, ws)

    def get_comm_cost(self, ts: TaskState, ws: WorkerState) -> float:
        return placement.get_comm_cost(self.state, ts, ws)

    def get_task_duration(self, ts: TaskState, default: float | None = None) -> float:
        return placement.get_task_duration(self.state, ts)

    def check_idle_saturated(self, ws: WorkerState, occ: float = -1.0) -> None:
        placement.check_idle_saturated(self.state, ws, occ)

    def reevaluate_occupancy(self) -> None:
        """Re-align occupancy with current duration estimates (when not busy)."""
        placement.realign_occupancy(self.state)

    def adaptive_target(self, target_duration: float | None = None) -> int:
        """Desired number of workers based on the current workload."""
        return policies.adaptive_target(self.state, target_duration)

    def workers_to_close(
        self,
        memory_ratio: float | None = None,
        n: int | None = None,
        key: Callable[[WorkerState], Hashable] | None = None,
        minimum: int | None = None,
        target: int | None = None,
        attribute: str = "address",
    ) -> list[Any]:
        """Workers that can be closed with low cost (dask's rule)."""
        return policies.workers_to_close(
            self.state,
            memory_ratio=memory_ratio,
            n=n,
            key=key,
            minimum=minimum,
            target=target,
            attribute=attribute,
        )

    def workers_list(self, workers: Iterable[Hashable] | None) -> list[str]:
        """Addresses of the workers named by address, name or host."""
        return self.state.workers_list(workers)

    def coerce_address(self, addr: str | Any, resolve: bool = True) -> str:
        """Canonical worker address for an address, a worker name or an alias."""
        if isinstance(addr, str) and addr in self.workers:
            return addr
        ws = self.state._workers_by_name.get(addr)
        if ws is not None:
            return ws.address
        if isinstance(addr, tuple) and len(addr) == 2:
            return f"{addr[0]}:{addr[1]}"
        return str(addr)

    # -- introspection -----------------------------------------------------------------

    def story(self, *keys_or_stimuli: Hashable) -> list[Transition]:
        """All transitions that touch one of the keys or stimulus ids."""
        keys = [k.key if isinstance(k, TaskState) else k for k in keys_or_stimuli]
        return self.state.story(*keys)

    def validate_state(self) -> None:
        self.state.validate_state()

    def identity(self) -> dict[str, Any]:
        """Basic information about the scheduler and its workers."""
        return {
            "type": type(self).__name__,
            "id": self.id,
            "address": self.address,
            "services": {},
            "started": self.started,
            "workers": {w: ws.identity() for w, ws in self.workers.items()},
        }

    def get_nbytes(
        self, keys: Collection[Key] | None = None, summary: bool = True
    ) -> dict[Any, int]:
        """Result sizes by key, or summed by key prefix when ``summary``."""
        tasks = self.tasks
        selected = (
            tasks.values() if keys is None else [tasks[k] for k in keys if k in tasks]
        )
        result = {ts.key: ts.nbytes for ts in selected if ts.nbytes >= 0}
        if not summary:
            return result
        out: dict[Any, int] = {}
        for key, nbytes in result.items():
            name = tasks[key].prefix.name
            out[name] = out.get(name, 0) + nbytes
        return out

    def set_metadata(self, keys: list[Any], value: Any = None) -> None:
        """Store ``value`` at the nested path ``keys`` (dask's ``set_metadata``)."""
        metadata: Any = self.state.task_metadata
        for key in keys[:-1]:
            if key not in metadata or not isinstance(metadata[key], dict | list):
                metadata[key] = {}
            metadata = metadata[key]
        metadata[keys[-1]] = value

    def get_metadata(self, keys: list[Any], default: Any = ...) -> Any:
        """Read the value at the nested path ``keys``; ``default`` if missing."""
        metadata: Any = self.state.task_metadata
        try:
            for key in keys:
                metadata = metadata[key]
        except (KeyError, IndexError, TypeError):
            if default is ...:
                raise
            return default
        return metadata

    def report(
        self,
        msg: dict[str, Any],
        ts: TaskState | None = None,
        client: str | None = None,
    ) -> list[str]:
        """Clients a message about a key goes to (those who want it, or ``client``).

        The runtime delivers; here we only resolve the audience, as dask does.
        """
        if ts is None and "key" in msg:
            ts = self.tasks.get(msg["key"])
        if client is not None:
            return [client]
        if ts is None:
            return list(self.clients)
        return [cs.client_key for cs in ts.who_wants]

    def run_function(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        wait: bool = True,
    ) -> Any:
        """Run ``function`` in the scheduler's thread (``Client.run_on_scheduler``).

        As in dask, a function with a ``dask_scheduler`` parameter receives this
        scheduler there.
        """
        kwargs = dict(kwargs or {})
        parameters: Mapping[str, inspect.Parameter]
        try:
            parameters = inspect.signature(function).parameters
        except (TypeError, ValueError):
            parameters = {}
        if "dask_scheduler" in parameters:
            kwargs["dask_scheduler"] = self
        return function(*args, **kwargs)

    def __repr__(self) -> str:
        return (
            f"<Scheduler {self.address!r}, workers: {len(self.workers)}, "
            f"threads: {self.total_nthreads}, tasks: {len(self.tasks)}>"
        )

    def _repr_html_(self) -> str:
        from localsched import reprs

        return reprs.cluster_html(reprs.scheduler_snapshot(self), "Scheduler")

    def __rich__(self) -> Any:
        from localsched import reprs

        return reprs.cluster_rich(reprs.scheduler_snapshot(self), "Scheduler")
