"""``Client``: dask.distributed's client API over a local cluster.

Client methods build task specs in the calling thread (functions pickled once,
arguments once), post one event per call to the scheduler thread and return
futures at once. They never touch scheduler state: waiting happens on the
futures' states, which the scheduler thread resolves, and everything else is a
typed request (``localsched.transport.requests``) answered on the scheduler thread.

Its only way to the scheduler is its link (``client/link.py``): a ``LocalLink``
in the cluster's process, a ``PipeLink`` in a task, so every method works in
both places but the few listed in docs/api.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import uuid
import weakref
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from numbers import Number
from typing import TYPE_CHECKING, Any

from localsched.client.actor import Actor
from localsched.client.asynchronous import (
    AsyncMixin,
    attach_when_started,
    bind_loop,
    start_client,
)
from localsched.client.cluster_tools import ClusterToolsMixin
from localsched.client.control import ControlMixin
from localsched.client.dask_collections import (
    CollectionsMixin,
    current_client_var,
    stop_using_localsched_for_dask,
    use_localsched_for_dask,
)
from localsched.client.datasets import DatasetsMixin
from localsched.client.defaults import default_client as default_client
from localsched.client.defaults import register_default, unregister_default
from localsched.client.display import DisplayMixin
from localsched.client.dual import dual, twin_call
from localsched.client.future import (
    Future,
    FutureState,
    counted_futures,
    futures_of,
    loading_client,
    wait,
    wait_until_failure,
)
from localsched.client.future import fire_and_forget as fire_and_forget
from localsched.client.graph import (
    IN_PROCESS_TOKEN,
    CannotSerialize,
    FunctionCache,
    PlainCalls,
    TaskSpec,
    call_key,
    collector_paused,
    funcname,
    gathered,
    graph_event,
    prepare_scatter,
    replace_futures,
)
from localsched.client.observing import DEFAULT_EVENT_HANDLERS, ObservingMixin
from localsched.client.plugins import PluginsMixin
from localsched.client.result_types import remember_type
from localsched.errors import ClosedClientError
from localsched.scheduler import events as ev
from localsched.scheduler.events import validate_key
from localsched.transport import inproc
from localsched.transport import requests as rq
from localsched.transport.protocol import TaskRef
from localsched.units import parse_timedelta

if TYPE_CHECKING:
    from localsched.client.link import SchedulerLink
    from localsched.deploy.local import LocalCluster

Key = Hashable

#: dask's ``distributed.client`` messages, on localsched's logger.
logger = logging.getLogger("localsched.client")

#: dask's ``Client.submit`` default: calls within 100 ms share a FIFO generation.
FIFO_TIMEOUT = 0.1


def _is_future(obj: object) -> bool:
    return type(obj) is Future


class Client(
    AsyncMixin,
    ControlMixin,
    ClusterToolsMixin,
    ObservingMixin,
    PluginsMixin,
    DatasetsMixin,
    CollectionsMixin,
    DisplayMixin,
):
    """Connect to a local cluster and submit work to it (``distributed.Client``).

    With no ``address``, starts a ``LocalCluster`` (``**kwargs`` go to it) and
    closes it on ``close()``. With a ``LocalCluster``, attaches to it.

    With a scheduler address (``"tcp://host:8786"``) or ``scheduler_file``,
    hands over: returns a ``distributed.Client`` connected there (see
    ``docs/outgrowing.md``); without distributed installed, an ``ImportError``
    names the extra to install.

    Parameters
    ----------
    address
        None, a ``LocalCluster`` to attach to, or a dask scheduler address.
    set_as_default
        Make this the client used by ``get_client`` and by dask collections
        (``dask.compute``, ``x.compute()``) until it closes.
    name
        Prefix of the client id.
    link
        Not in dask: talk to the scheduler through this
        :class:`~localsched.client.link.SchedulerLink` instead of a cluster's (the
        client of a task is a ``Client`` on the worker's pipe link; tests use
        a fake one).
    **kwargs
        Passed to ``LocalCluster`` when the client starts one (``n_workers``,
        ``threads_per_worker``, ``memory_limit``, ...).

    Examples
    --------
    >>> with Client() as client:  # doctest: +SKIP
    ...     future = client.submit(pow, 2, 10)
    ...     future.result()
    1024
    """

    def __new__(
        cls, address: LocalCluster | str | None = None, *args: Any, **kwargs: Any
    ) -> Any:
        if isinstance(address, str) and address.startswith("local://"):
            return super().__new__(cls)  # a LocalCluster of this process
        if isinstance(address, str) or kwargs.get("scheduler_file") is not None:
            from localsched.client.handover import distributed_client

            where = address if isinstance(address, str) else None
            return distributed_client(where, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        address: LocalCluster | str | None = None,
        loop: Any = None,
        timeout: str | float | None = None,
        set_as_default: bool = True,
        scheduler_file: str | None = None,
        security: Any = None,
        asynchronous: bool = False,
        name: str | None = None,
        direct_to_workers: bool | None = None,
        *,
        link: SchedulerLink | None = None,
        **kwargs: Any,
    ) -> None:
        #: The event loop this client belongs to (None: synchronous, no loop).
        self._aio = None
        self._bind(bind_loop(asynchronous, loop))
        self._started: Any = None
        self._owns_cluster = address is None and link is None
        #: key -> state of this client's futures (resolved by the scheduler).
        self._states: dict[Key, FutureState] = {}
        self._lock = threading.Lock()
        self._refcount: dict[Key, int] = {}
        #: Keys of futures unpickled here (``_adopt``) that this client never
        #: asked the scheduler for; asked for when first waited on.
        self._adopted: set[Key] = set()
        #: Bumped by ``restart``: futures of older generations release nothing.
        self.generation = 0
        self._functions: FunctionCache = FunctionCache()
        self._callbacks: ThreadPoolExecutor | None = None
        # A task's client prints nothing of its own: the print happened there.
        shared = link is not None and link.is_shared
        self._init_events({} if shared else DEFAULT_EVENT_HANDLERS)
        self.id = f"{name or 'Client'}-{uuid.uuid4()}"
        self.status = "newly-created"
        self.cluster: LocalCluster | None = None
        self._direct_to_workers = direct_to_workers
        self._set_as_default = set_as_default
        self._previous_as_current = None
        #: This client made dask's collections run on localsched (until close).
        self._drives_dask = False
        if asynchronous and self._owns_cluster:
            # As dask: the cluster starts in a task; ``await client`` waits.
            self._started = asyncio.ensure_future(start_client(self, kwargs, timeout))
            return
        if link is None:
            from localsched.deploy.template import template_ahead

            # The new cluster's template process boots while this process
            # imports the cluster's modules (deploy/template.py).
            with template_ahead(kwargs if address is None else None):
                from localsched.client.local_link import LocalLink
                from localsched.deploy.local import LocalCluster, cluster_at

                if isinstance(address, str):
                    address = cluster_at(address)
                cluster = LocalCluster(**kwargs) if address is None else address
            if not isinstance(cluster, LocalCluster):
                raise TypeError(
                    "Scheduler address must be a string or a Cluster instance, "
                    f"got {type(address)}"
                )
            if cluster.status in ("closing", "closed"):
                # dask's words; a RuntimeError as dask's, and ClosedClientError
                # as every call that needs the closed cluster.
                raise ClosedClientError(
                    "Trying to connect to an already closed or closing "
                    f"Cluster {cluster!r}."
                )
            if asynchronous and cluster.status in ("created", "starting"):
                # As dask's: ``await client`` starts the cluster first.
                self._started = asyncio.ensure_future(
                    attach_when_started(self, cluster, timeout)
                )
                return
            link = LocalLink(cluster)
        self._attach(link, timeout)

    def _attach(self, link: SchedulerLink, timeout: str | float | None) -> None:
        """Connect through ``link``: the client runs from now on."""
        self._link = link
        #: The ``LocalCluster`` in this process; None for a task's client.
        self.cluster = link.cluster
        # Weakly: the scheduler keeps the hooks, and a dropped client must go away.
        self.id = link.connect(
            self.id,
            self._states,
            weakref.WeakMethod(self._on_restart),
            parse_timedelta(timeout),
            on_event=weakref.WeakMethod(self._deliver_event),
        )
        self.status = "running"
        #: As dask: a task's client talks to workers directly; here every
        #: client shares memory with the workers, so this only reports it.
        direct = self._direct_to_workers
        self.direct_to_workers = self.cluster is None if direct is None else direct
        if self._set_as_default:
            register_default(self)
            self._drives_dask = use_localsched_for_dask()

    @property
    def scheduler(self) -> Any:
        """The cluster's ``Scheduler`` object (same process).

        Raises
        ------
        AttributeError
            Inside a task: the scheduler lives in another process (ask it with
            ``scheduler_info``, ``run_on_scheduler`` and the like instead).
        """
        if self.cluster is None:
            raise AttributeError(
                "A task's client has no in-process Scheduler object: the "
                "scheduler runs in the cluster's process. Use scheduler_info(), "
                "who_has(), run_on_scheduler() and the like instead"
            )
        return self.cluster.scheduler

    @classmethod
    def current(cls, allow_global: bool = True) -> Client:
        """The client of the innermost ``as_current`` (or ``with``) block here,
        else (``allow_global``) the default client.

        Raises
        ------
        ValueError
            No such client.
        """
        out = current_client_var.get()
        if out is not None:
            return out
        if allow_global:
            return default_client()
        raise ValueError("Not running inside the `as_current` context manager")

    @property
    def futures(self) -> dict[Key, FutureState]:
        """key -> state of every key this client holds futures for (dask's)."""
        return self._states

    def start(self, **kwargs: Any) -> None:
        """Nothing to do: a client is connected once constructed (dask's
        ``start`` is idempotent too)."""

    # -- futures bookkeeping ------------------------------------------------------

    def _state_for(self, key: Key) -> FutureState:
        states = self._states
        state = states.get(key)
        if state is None:
            made = FutureState(key)  # not under the lock: see _futures_for
            with self._lock:  # against _dec_ref clearing an empty table
                state = states.setdefault(key, made)
            link = self._link
            if not link.is_running:
                # The loop is gone and failed the states it saw (it stops
                # before it fails them): nobody else will resolve this one.
                state.set_error(link.stopped_error(), "")
        return state

    def _futures_for(self, keys: list[Key]) -> list[Future]:
        """``[Future(key, self) for key in keys]`` counted in one go (``map``);
        no allocation under the lock: a collection could run ``_dec_ref``."""
        known, refcount = self._states, self._refcount
        fresh = {key: FutureState(key) for key in keys if key not in known}
        made: list[FutureState] = []
        with self._lock:  # appends, ints and dict slots: no tracked allocation
            for key, state in fresh.items():
                if known.setdefault(key, state) is state:
                    made.append(state)
            for key in keys:
                refcount[key] = refcount.get(key, 0) + 1
        link = self._link
        if made and not link.is_running:  # as in _state_for
            for state in made:
                state.set_error(link.stopped_error(), "")
        # A key released meanwhile by another future of it gets a new state.
        states = [known.get(key) or self._state_for(key) for key in keys]
        return counted_futures(self, keys, states)

    def _inc_ref(self, key: Key) -> None:
        with self._lock:
            self._refcount[key] = self._refcount.get(key, 0) + 1

    def _adopt(self, key: Key) -> Future:
        """A future of ``key`` unpickled here (inside a persisted collection or
        another object). As in dask it does not claim the key: the scheduler
        keeps it for whoever submitted it. Waiting on it asks the scheduler for
        its news (``_claim_adopted``), so a wait never hangs on a key only
        another client hears about."""
        with self._lock:
            if key not in self._refcount:
                self._adopted.add(key)
        return Future(key, self)

    def _claim_adopted(self, keys: Iterable[Key]) -> None:
        with self._lock:
            claimed = tuple(k for k in keys if k in self._adopted)
            self._adopted.difference_update(claimed)
        if claimed and self.status == "running":
            self._link.post(
                ev.ClientDesiresKeys(
                    stimulus_id=self._link.stimulus_id("client-desires-keys"),
                    client=self.id,
                    keys=claimed,
                )
            )

    def _on_restart(self) -> None:
        """The scheduler restarted (scheduler thread): forget every key, as dask's
        client does, so old futures released later cannot release new tasks."""
        with self._lock:
            self.generation += 1
            self._refcount.clear()
            self._adopted.clear()
            self._states.clear()

    def _dec_ref(self, key: Key) -> None:
        with self._lock:
            count = self._refcount.get(key, 0) - 1
            if count > 0:
                self._refcount[key] = count
                return
            self._refcount.pop(key, None)
            self._states.pop(key, None)
            if not self._refcount:  # a dict keeps its largest table until cleared
                self._refcount.clear()
                if not self._states:
                    self._states.clear()
            if key in self._adopted:
                self._adopted.discard(key)
                return  # never asked for: nothing to release
        if self.status == "running":
            self._link.post(
                ev.ClientReleasesKeys(
                    stimulus_id=self._link.stimulus_id("client-releases-keys"),
                    client=self.id,
                    keys=(key,),
                )
            )

    def _load_result(self, key: Key) -> Any:
        token = loading_client.set(self)  # futures inside the value are ours
        try:
            return self._bound(self._link.load_result(key))
        finally:
            loading_client.reset(token)

    def _bound(self, value: Any) -> Any:
        """A result as the caller gets it: an actor handle holds its key."""
        if type(value) is Actor:
            value._bind(self)
        return value

    def _callback_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._callbacks is None:
                self._callbacks = ThreadPoolExecutor(
                    1, thread_name_prefix="localsched-callbacks"
                )
            return self._callbacks

    # -- building tasks -------------------------------------------------------------

    def _spec(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        actor: bool = False,
    ) -> tuple[TaskSpec, tuple[Any, dict[str, Any]]]:
        """The task spec, and the arguments with futures replaced by ``TaskRef``."""
        found: dict[Key, Future] = {}
        args = replace_futures(args, _is_future, found)
        kwargs = replace_futures(kwargs, _is_future, found)
        if self._link.in_process:  # the workers are threads here: no pickling
            ref = inproc.keep((func, args, kwargs))
            spec = TaskSpec(IN_PROCESS_TOKEN, b"", ref, tuple(found), actor)
            return spec, (args, kwargs)
        try:
            token, function_bytes = self._functions.get(func)
        except Exception as exc:
            raise CannotSerialize(
                f"Could not serialize the function {funcname(func)!r}: {exc}"
            ) from exc
        try:
            payload = self._link.serialize((args, kwargs))
        except Exception as exc:
            raise CannotSerialize(
                f"Could not serialize the arguments of {funcname(func)!r}: {exc}"
            ) from exc
        spec = TaskSpec(token, function_bytes, payload, tuple(found), actor)
        return spec, (args, kwargs)

    def _check_running(self) -> None:
        """Raise ``ClosedClientError`` if futures made now could never resolve."""
        if self.status != "running":
            raise ClosedClientError(f"Client {self.id} is {self.status}")
        if not self._link.is_running:
            raise self._link.stopped_error()

    def submit(
        self,
        func: Callable[..., Any],
        *args: Any,
        key: Key | None = None,
        workers: str | Iterable[str] | None = None,
        resources: Mapping[str, float] | None = None,
        retries: int | None = None,
        priority: int = 0,
        fifo_timeout: str | float = "100 ms",
        allow_other_workers: bool = False,
        actor: bool = False,
        actors: bool = False,
        pure: bool = True,
        **kwargs: Any,
    ) -> Future:
        """Submit ``func(*args, **kwargs)`` for execution; return a ``Future``.

        Parameters
        ----------
        func
            The function to run.
        *args, **kwargs
            Its arguments; futures among them (also nested in lists, tuples, sets
            and dicts) are replaced by their results on the worker.
        key
            The task's key (default: ``<funcname>-<token>``).
        workers
            Worker addresses or names the task may run on.
        resources
            Abstract resources the task needs, e.g. ``{"GPU": 1}``.
        retries
            Times to re-run the task if it raises.
        priority
            Higher runs first when the cluster is busy.
        allow_other_workers
            ``workers`` is a preference, not a requirement.
        actor, actors
            The result is an actor: the object stays in its worker, and
            ``result()`` returns an :class:`~localsched.client.actor.Actor`
            handle to it (implies ``pure=False``).
        pure
            Identical calls share one key (and one computation).

        Returns
        -------
        Future
        """
        return self._submit_call(
            func,
            args,
            kwargs,
            key=key,
            workers=workers,
            resources=resources,
            retries=retries,
            priority=priority,
            fifo_timeout=fifo_timeout,
            allow_other_workers=allow_other_workers,
            actor=actor or actors,
            pure=pure,
        )

    def _submit_call(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        key: Key | None = None,
        workers: str | Iterable[str] | None = None,
        resources: Mapping[str, float] | None = None,
        retries: int | None = None,
        priority: int = 0,
        fifo_timeout: str | float = "100 ms",
        allow_other_workers: bool = False,
        actor: bool = False,
        pure: bool = True,
    ) -> Future:
        """``submit`` with the call's arguments apart from the options, so that
        every keyword argument (``key``, ``pure``, ``self``...) can be the
        function's (``client.get_executor().submit``)."""
        self._check_running()
        if not callable(func):
            raise TypeError("First input to submit must be a callable function")
        if actor:
            pure = False  # an actor is stateful, as in dask
        spec, (ref_args, ref_kwargs) = self._spec(func, args, kwargs, actor)
        # Arguments in shared memory are this client's until the graph is posted
        # (then the scheduler frees them with the task): any way out before that
        # frees them here.
        try:
            if key is None:
                key = call_key(self._functions, func, spec, pure, ref_args, ref_kwargs)
            else:
                validate_key(key)
            with self._lock:
                already = key in self._refcount
            event = None
            if not already:
                event = graph_event(
                    self._link,
                    self.id,
                    {key: spec},
                    {key: spec.dependencies},
                    [key],
                    workers=workers,
                    resources=resources,
                    retries=retries,
                    priority=priority,
                    allow_other_workers=allow_other_workers,
                    fifo_timeout=fifo_timeout,
                    actors=(key,) if actor else (),
                )
        except BaseException:
            self._link.release(spec.args)
            raise
        future = Future(key, self)
        if event is None:
            self._link.release(spec.args)
        else:
            self._link.post(event)
        return future

    def map(
        self,
        func: Callable[..., Any],
        *iterables: Collection[Any],
        key: str | list[Key] | None = None,
        workers: str | Iterable[str] | None = None,
        retries: int | None = None,
        resources: Mapping[str, float] | None = None,
        priority: int = 0,
        allow_other_workers: bool = False,
        fifo_timeout: str | float = "100 ms",
        actor: bool = False,
        actors: bool = False,
        pure: bool = True,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> list[Future]:
        """Map ``func`` over sequences of arguments; one future per element.

        Takes the options of ``submit`` (``actor=True``: one actor per
        element). The whole map is one event for the scheduler, and the
        function is pickled once.
        """
        self._check_running()
        if not callable(func):
            raise TypeError("First input to map must be a callable function")
        actor = actor or actors
        if actor:
            pure = False
        if iterables and all(isinstance(it, Mapping) for it in iterables):
            raise TypeError("Dictionaries are not supported by map; pass lists")
        calls = list(zip(*iterables, strict=False))
        if isinstance(key, list | tuple):
            if len(key) != len(calls):
                raise ValueError("map got a different number of keys and arguments")
            keys: list[Key] | None = list(key)
        else:
            keys = None
        prefix = key if isinstance(key, str) else None
        tasks: dict[Key, TaskSpec] = {}
        dependencies: dict[Key, tuple[Key, ...]] = {}
        out_keys: list[Key] = []
        spec: TaskSpec | None = None
        plain = (
            None
            if self._link.in_process
            else PlainCalls.of(self._functions, func, kwargs, actor)
        )
        # As in submit: arguments in shared memory are freed here unless posted.
        k: Key  # from the fast path, call_key or keys; None only with keys
        with collector_paused(len(calls)):
            try:
                for i, call_args in enumerate(calls):
                    made = plain and plain.spec(call_args, pure, keyed=keys is None)
                    if made:
                        spec, k = made
                    else:
                        spec, (ref_args, ref_kwargs) = self._spec(
                            func, call_args, kwargs, actor
                        )
                        if keys is None:
                            k = call_key(
                                self._functions, func, spec, pure, ref_args, ref_kwargs
                            )
                    if keys is not None:
                        k = keys[i]
                        validate_key(k)
                    elif prefix is not None:
                        k = f"{prefix}-{str(k).rsplit('-', 1)[-1]}"
                    if k in tasks:
                        self._link.release(spec.args)
                    else:
                        tasks[k] = spec
                        dependencies[k] = spec.dependencies
                    spec = None
                    out_keys.append(k)
                with self._lock:
                    # Keys this client already holds futures for are running already.
                    held = tasks.keys() & self._refcount.keys()
                new = (
                    {k: s for k, s in tasks.items() if k not in held} if held else tasks
                )
                event = None
                if new:
                    event = graph_event(
                        self._link,
                        self.id,
                        new,
                        {k: dependencies[k] for k in new} if held else dependencies,
                        list(new),
                        workers=workers,
                        resources=resources,
                        retries=retries,
                        priority=priority,
                        allow_other_workers=allow_other_workers,
                        fifo_timeout=fifo_timeout,
                        actors=tuple(new) if actor else (),
                    )
            except BaseException:
                for unposted in [*tasks.values(), *([spec] if spec else [])]:
                    self._link.release(unposted.args)
                raise
            for k, unposted in tasks.items():
                if k not in new:
                    self._link.release(unposted.args)
            futures = self._futures_for(out_keys)
        if event is not None:
            self._link.post(event)
        return futures

    # -- results ---------------------------------------------------------------------

    @dual
    def gather(
        self,
        futures: Any,
        errors: str = "raise",
        direct: bool | None = None,
        asynchronous: bool | None = None,
    ) -> Any:
        """Results of futures, in the same (nested) structure.

        Parameters
        ----------
        futures
            A future, or lists, tuples, sets and dicts holding futures.
        errors
            ``"raise"`` re-raises the first task error; ``"skip"`` leaves erred
            futures out of the result.
        """
        if asynchronous:  # a client without a loop, asked for an awaitable
            return twin_call("Client.gather", Client.gather, self, futures, errors)
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        found: dict[Key, Future] = {}
        replace_futures(futures, _is_future, found)
        if errors == "raise":
            # As dask: the first error raises at once, even while other
            # futures still run (a blocked task must not hold the caller).
            wait_until_failure(list(found.values()))
            for future in found.values():
                if future.status in ("error", "cancelled"):
                    # Raised here: the traceback is this call, then the task's
                    # frames (dask's short tracebacks).
                    raise future._error()
        else:
            wait(list(found.values()))
        # One load for every finished key: a single round trip from a task.
        finished = [k for k, f in found.items() if f.status == "finished"]
        values = {}
        if finished:
            token = loading_client.set(self)
            try:
                values = self._link.load_results(finished)
            finally:
                loading_client.reset(token)

        def value_of(future: Future) -> Any:
            if future.status == "finished" and future.key in values:
                return self._bound(values[future.key])
            return future._result_now()

        return gathered(futures, _is_future, value_of, errors)

    @dual
    def scatter(
        self,
        data: Any,
        workers: str | Iterable[str] | None = None,
        broadcast: bool = False,
        direct: bool | None = None,
        hash: bool = True,
        timeout: str | float | None = None,
        asynchronous: bool | None = None,
    ) -> Any:
        """Move data into the cluster; return futures in the same structure.

        Large values go straight into shared memory; every worker reads them from
        there, so ``broadcast`` needs no copies. (From inside a task values
        travel inline over the worker's pipe: scatter small ones there.)
        """
        if asynchronous:  # a client without a loop, asked for an awaitable
            return twin_call("Client.scatter", Client.scatter, self, data, workers)
        futures, request, rebuild = self._scatter_request(
            data, workers, broadcast, hash
        )
        self._link.request(request).result(timeout=parse_timedelta(timeout))
        return rebuild(futures)

    def _scatter_request(
        self, data: Any, workers: Any, broadcast: bool, hash: bool
    ) -> tuple[dict[Key, Future], rq.Scatter, Callable[[Any], Any]]:
        self._check_running()
        # As dask: exact types, so a dict or list subclass is one opaque value;
        # a namedtuple is unpacked and comes back as its own type.
        plan = prepare_scatter(data, self._link.serialize, hash)
        states = {key: self._state_for(key) for key, _ in plan.pairs}
        for key, state in states.items():
            remember_type(state, plan.types[key])  # as dask: the type object
        futures = {key: Future(key, self, state) for key, state in states.items()}
        names = (
            None
            if workers is None
            else (workers,)
            if isinstance(workers, str | Number)
            else tuple(workers)
        )
        request = rq.Scatter(
            data=tuple(plan.pairs),
            workers=names,
            broadcast=broadcast,
            nbytes=plan.nbytes,
            types={key: state.type for key, state in states.items() if state.type},
        )
        return futures, request, plan.rebuild

    # -- control -----------------------------------------------------------------------

    @dual
    def cancel(
        self,
        futures: Any,
        asynchronous: bool | None = None,
        force: bool = False,
        reason: str | None = None,
        msg: str | None = None,
    ) -> None:
        """Cancel futures (and everything that depends on them).

        ``force=True`` cancels them even if other clients want them (as dask), and
        also stops a task that is already running, which dask cannot: the worker
        process running it is restarted. That worker's other tasks are placed
        again (not counted suspicious), results already computed survive, and a
        replacement worker starts. Without ``force``, a running task is released
        (its future cancelled) but runs to its end on the worker, as in dask.
        """
        if asynchronous:  # a client without a loop, asked for an awaitable
            return twin_call("Client.cancel", Client.cancel, self, futures, force)
        self._cancel_now(futures, force=force)

    def _cancel_now(self, futures: Any, force: bool = False, **kwargs: Any) -> None:
        request = self._post_cancel(futures, force)
        if request is not None:
            self._link.request(request).result()

    def _post_cancel(self, futures: Any, force: bool) -> rq.Request | None:
        """Post the cancel; the request to wait on (None: nothing to cancel)."""
        found = {f.key: f for f in futures_of(futures)}
        if not found:
            return None
        link = self._link
        if force:
            return rq.ForceCancel(keys=tuple(found))
        link.post(
            ev.CancelRequested(
                stimulus_id=link.stimulus_id("cancel"),
                client=self.id,
                keys=list(found),
                force=False,
            )
        )
        return rq.Ping()

    @dual
    def retry(self, futures: Any, asynchronous: bool | None = None) -> None:
        """Run erred futures again (and the erred tasks they depend on)."""
        if asynchronous:  # a client without a loop, asked for an awaitable
            return twin_call("Client.retry", Client.retry, self, futures)
        self._link.request(self._post_retry(futures)).result()

    def _post_retry(self, futures: Any) -> rq.Request:
        found = {f.key: f for f in futures_of(futures)}
        link = self._link
        link.post(
            ev.RetryRequested(
                stimulus_id=link.stimulus_id("retry"),
                client=self.id,
                keys=list(found),
            )
        )
        return rq.Ping()

    def futures_of(self, obj: Any) -> list[Future]:
        """Futures held in ``obj`` (see ``localsched.futures_of``)."""
        return futures_of(obj)

    def nbytes(
        self, keys: Collection[Key] | None = None, summary: bool = True
    ) -> dict[Any, int]:
        """Result sizes in bytes by key, or summed by key prefix if ``summary``."""
        selected = None if keys is None else tuple(keys)
        return self._link.request(rq.NBytes(keys=selected, summary=summary)).result()

    @dual
    def shutdown(self) -> None:
        """Close the client and its cluster, even one it did not start (dask).

        Raises
        ------
        RuntimeError
            Inside a task: the cluster belongs to the process that started it.
        """
        if self.cluster is None:
            raise RuntimeError(
                "A task cannot shut its cluster down: the cluster belongs to the "
                "process that started it"
            )
        logger.info("Shutting down scheduler from Client")
        self._close_now()
        self.cluster.close()

    @dual
    def close(self, timeout: str | float | None = None) -> None:
        """Release every future of this client; close the cluster it started.

        A task's client (``get_client()`` in a task) is shared by the worker's
        tasks and closes with its worker: closing it does nothing.
        """
        self._close_now(timeout)

    def _close_now(self, timeout: str | float | None = None) -> None:
        cluster = self._close_client(timeout)
        if cluster is not None:
            cluster.close()
        if self.status == "closing":
            self.status = "closed"

    def _close_client(self, timeout: str | float | None) -> LocalCluster | None:
        """Close all but the cluster; the cluster to close (it started it)."""
        if self.status == "newly-created":  # an asynchronous start never awaited
            self.status = "closed"
            return None
        if self.status in ("closing", "closed") or self._link.is_shared:
            return None
        self.status = "closing"
        bars = sys.modules.get("localsched.diagnostics.progressbar")
        if bars is not None:  # loaded only if a progress bar was ever shown
            bars.finish_drawing(self)
        if self._owns_cluster and self.cluster is not None:
            # Live views draw their last frame now, while the results this
            # client holds are still there (the cluster closes with it).
            self.cluster._stop_live_views()
        unregister_default(self)
        if getattr(self, "_drives_dask", False):
            self._drives_dask = False
            stop_using_localsched_for_dask()
        if self._link.is_running:
            with contextlib.suppress(Exception):
                # Runs the client's removal through the runtime like every
                # event, so the commands the core returns are carried out:
                # queued tasks no other client wants are dropped on the
                # workers, and their results freed.
                self._link.disconnect(parse_timedelta(timeout) or 10)
        # As dask: the futures of a closed client are cancelled, so no thread
        # waits for a result that can no longer come. After a failure of the
        # scheduler thread they keep the error that says so.
        # After the disconnect: events logged before it (a task's print) are
        # queued here already, and are handled before close returns.
        self._stop_events()
        has_failed = self._link.has_failed
        for state in list(self._states.values()):
            if not has_failed or not state.done():
                state.cancel("client-closed")
        if self._callbacks is not None:
            self._callbacks.shutdown(wait=True)
        if self._aio is not None:
            self._aio.stop()  # a synchronous client's loop thread
        return self.cluster if self._owns_cluster else None

    def __enter__(self) -> Client:
        if self._set_as_default:
            # As dask: the block's client is current in this context.
            self._previous_as_current = current_client_var.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        token, self._previous_as_current = self._previous_as_current, None
        try:
            if token is not None:
                # ValueError "was created in a different Context" if the
                # block is left from another thread, as dask.
                current_client_var.reset(token)
        finally:
            self._close_now()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self.status == "running" and self._owns_cluster:
                self._close_now()
            elif self._drives_dask:
                # Dropped without close: dask must not keep pointing at it.
                self._drives_dask = False
                stop_using_localsched_for_dask()


__all__ = [
    "Client",
    "ClosedClientError",
    "TaskRef",
    "default_client",
    "fire_and_forget",
]
