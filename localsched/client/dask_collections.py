"""``CollectionsMixin``: the ``Client`` methods for dask graphs and collections.

``get``, ``compute``, ``persist``, ``as_current`` and ``get_executor``, with
``distributed.Client``'s signatures. dask is imported only when one of them is
called (or a client becomes current after the program imported dask).

While a client is current, dask's ``scheduler`` setting holds
:data:`DASK_SCHEDULER`, a client-like object whose ``get`` is the bound ``get``
of the current client: ``dask.base.get_scheduler()`` equals ``client.get``,
``dask.compute(x)``/``x.compute()`` call it and ``dask.persist`` calls that
client's ``persist`` (dask looks for a ``persist`` method on the scheduler's
``__self__``). dask's ``dataframe.shuffle.method`` holds ``"tasks"`` then,
and ``array.rechunk.method`` ``"tasks"``, unless set before (see
:data:`LOCAL_METHODS`). When the last current
client closes, in whatever order the clients close, the settings dask had
before are put back.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Hashable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

from localsched.client.dask_graphs import (
    GraphOptions,
    actor_keys,
    flatten_keys,
    pack_results,
)
from localsched.client.dual import is_async_call
from localsched.client.post_import import when_imported
from localsched.units import parse_timedelta

if TYPE_CHECKING:
    from localsched.client.client import Client

Key = Hashable

__all__ = ["DASK_SCHEDULER", "CollectionsMixin", "current_client"]

#: The client of the innermost ``as_current`` block in this context, if any.
current_client_var: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "localsched_as_current", default=None
)


def current_client() -> Any:
    """The client dask collections run on: ``as_current``'s, else the worker's
    client in a task (as dask's ``get_client``), else the default."""
    client = current_client_var.get()
    if client is not None and client.status == "running":
        return client
    from localsched.client.task_client import client_of
    from localsched.worker.context import thread_state

    worker = getattr(thread_state, "worker", None)
    if worker is not None:
        return client_of(worker)
    from localsched.client.client import default_client

    return default_client()


class _CurrentClient:
    """What dask's ``scheduler`` setting holds while a client is current.

    dask treats an object whose type name holds "Client" as a client: its
    ``get_scheduler()`` returns ``obj.get``, and ``dask.persist`` calls the
    ``persist`` of that method's ``__self__``. Here ``get`` is the bound ``get``
    of the client current *now* (``as_current`` in this context, the worker's
    client in a task, else the default), so ``dask.base.get_scheduler()``
    equals ``client.get`` as under dask.distributed, per thread.
    """

    #: Read by dask's ``get_scheduler``; localsched's client is synchronous.
    asynchronous = False

    @property
    def get(self) -> Any:
        return current_client().get

    def __repr__(self) -> str:
        return "<localsched: the current Client>"


DASK_SCHEDULER = _CurrentClient()

#: dask's settings while a client is current, unless the program chose: with
#: ``distributed`` imported, dask finds the localsched client through
#: ``distributed.default_client()`` (``client/defaults.py``) and would choose its
#: "p2p" methods, which need distributed's shuffle extension on the workers.
#: The task shuffle's pieces move through shared memory instead: one sorted
#: frame per input partition, unpickled once per worker, and the steps around
#: the shuffle fused into its two task layers (``client/dask_shuffle.py``).
LOCAL_METHODS = {"dataframe.shuffle.method": "tasks", "array.rechunk.method": "tasks"}

_config_lock = threading.Lock()
#: How many clients (and ``as_current`` blocks) want dask to use localsched.
_config_users = 0
#: dask's ``config.set`` object that restores the previous setting on exit.
_config_restore: Any = None


def _dask_installed() -> bool:
    import importlib.util
    import sys

    return "dask" in sys.modules or importlib.util.find_spec("dask") is not None


def register_future_token() -> None:
    """Teach ``dask.tokenize`` localsched futures: a future stands for its key
    (graphs holding futures, as persisted collections do, get stable names)."""
    from dask.tokenize import normalize_token

    from localsched.client.future import Future

    if Future not in normalize_token._lookup:
        normalize_token.register(Future)(_future_token)


def _future_token(future: Any) -> tuple[str, Any]:
    return ("localsched.Future", future.key)


def use_localsched_for_dask() -> bool:
    """Point dask's scheduler at the current client; False without dask.

    If dask is installed but not imported yet, this does not import it (about
    0.2 s of a client's start-up): the setting is made when the program first
    imports dask (``post_import.when_imported``), before that import returns.
    """
    global _config_users
    if not _dask_installed():
        return False
    with _config_lock:
        _config_users += 1
        is_first = _config_users == 1
    if is_first:
        when_imported("dask", _on_dask_imported)
    return True


def _on_dask_imported(_module: Any) -> None:
    """Make the setting if a client still wants it and it is not made yet."""
    global _config_restore
    import dask.config

    register_future_token()
    with _config_lock:
        if _config_users > 0 and _config_restore is None:
            settings: dict[str, Any] = {
                key: value
                for key, value in LOCAL_METHODS.items()
                if dask.config.get(key, None) is None
            }
            settings["scheduler"] = DASK_SCHEDULER
            _config_restore = dask.config.set(settings)


def stop_using_localsched_for_dask() -> None:
    """Undo one :func:`use_localsched_for_dask`; the last one restores dask's."""
    global _config_users, _config_restore
    with _config_lock:
        _config_users -= 1
        if _config_users == 0 and _config_restore is not None:
            restore, _config_restore = _config_restore, None
            restore.__exit__(None, None, None)


# The mixin is only ever part of ``Client``: ``cast("Client", self)`` says so.
class CollectionsMixin:
    # ``asynchronous`` (read by dask on ``dask.compute(..., scheduler=client)``)
    # is ``AsyncMixin``'s.

    """dask graphs, collections and ``concurrent.futures`` on this client."""

    def get(
        self,
        dsk: Any,
        keys: Any,
        workers: Any = None,
        allow_other_workers: bool | None = None,
        resources: Mapping[str, float] | None = None,
        sync: bool = True,
        asynchronous: bool | None = None,
        direct: bool | None = None,
        retries: int | None = None,
        priority: int = 0,
        fifo_timeout: str | float = "60s",
        actors: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Compute a dask graph (``distributed.Client.get``).

        Parameters
        ----------
        dsk
            A dict graph (classic tuple tasks or dask's task-spec nodes), a
            ``HighLevelGraph`` or a dask expression.
        keys
            A key, or (nested) lists of keys.
        workers, allow_other_workers, resources, retries, priority
            As ``submit``, for every task of the graph.
        sync
            Return results (True) or futures (False), in the shape of ``keys``.

        Examples
        --------
        >>> from operator import add
        >>> client.get({"x": 1, "y": (add, "x", 2)}, "y")  # doctest: +SKIP
        3
        """
        from localsched.client.dask_graphs import submit_graph

        self._check_running()  # type: ignore[attr-defined]
        options = self._graph_options(
            workers,
            allow_other_workers,
            resources,
            retries,
            priority,
            fifo_timeout,
            actors,
        )
        futures = submit_graph(
            cast("Client", self),
            dsk,
            flatten_keys(keys),
            options,
            cull=isinstance(dsk, dict),
        )
        if not sync:
            return pack_results(keys, futures)
        if is_async_call(self, asynchronous):
            from localsched.client.asynchronous import gather_graph

            return gather_graph(cast("Client", self), futures, keys)
        try:
            results = self.gather(futures, asynchronous=False)  # type: ignore[attr-defined]
        finally:
            for future in futures.values():
                future.release()
        return pack_results(keys, results)

    def compute(
        self,
        collections: Any,
        sync: bool = False,
        optimize_graph: bool = True,
        workers: Any = None,
        allow_other_workers: bool = False,
        resources: Mapping[str, float] | None = None,
        retries: int = 0,
        priority: int = 0,
        fifo_timeout: str | float = "60s",
        actors: Any = None,
        traverse: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Compute dask collections; a future per collection (``Client.compute``).

        Parameters
        ----------
        collections
            A collection, or an iterable of them (other items pass through).
        sync
            Return results instead of futures.
        optimize_graph
            Optimize the graphs first, as ``dask.compute`` does.

        Returns
        -------
        Future, or a list of futures (and the non-collection items).
        """
        import dask
        from dask._expr import FinalizeCompute
        from dask.base import collections_to_expr

        from localsched.client.dask_graphs import submit_graph

        self._check_running()  # type: ignore[attr-defined]
        singleton = not isinstance(collections, list | tuple | set | Iterator)
        items = [collections] if singleton else list(collections)
        if traverse:
            items = [_maybe_delayed(item) for item in items]
        variables = [item for item in items if dask.is_dask_collection(item)]
        names: list[Key] = []
        futures_by_key: dict[Key, Any] = {}
        if variables:
            expr = FinalizeCompute(
                collections_to_expr(variables, optimize_graph, **kwargs)
            ).optimize()
            names = flatten_keys(expr.__dask_keys__())
            options = self._graph_options(
                workers,
                allow_other_workers,
                resources,
                retries,
                priority,
                fifo_timeout,
                actors,
            )
            futures_by_key = submit_graph(cast("Client", self), expr, names, options)
        results: list[Any] = []
        position = iter(names)
        for item in items:
            if dask.is_dask_collection(item):
                results.append(futures_by_key[next(position)])
            else:
                results.append(item)
        if sync:
            results = self.gather(results, asynchronous=False)  # type: ignore[attr-defined]
        return results[0] if singleton else results

    def persist(
        self,
        collections: Any,
        optimize_graph: bool = True,
        workers: Any = None,
        allow_other_workers: bool | None = None,
        resources: Mapping[str, float] | None = None,
        retries: int | None = None,
        priority: int = 0,
        fifo_timeout: str | float = "60s",
        actors: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Start computing collections; the same collections backed by futures.

        Returns
        -------
        A collection, or a list of them, matching the input.
        """
        from dask.base import collections_to_expr

        from localsched.client.dask_graphs import submit_graph

        self._check_running()  # type: ignore[attr-defined]
        singleton = not isinstance(collections, list | tuple | set)
        items = [collections] if singleton else list(collections)
        expr = collections_to_expr(items, optimize_graph).optimize()
        keys = expr.__dask_keys__()
        options = self._graph_options(
            workers,
            allow_other_workers,
            resources,
            retries,
            priority,
            fifo_timeout,
            actors,
        )
        futures = submit_graph(cast("Client", self), expr, flatten_keys(keys), options)
        persisted = []
        for item, item_keys in zip(items, keys, strict=True):
            rebuild, state = item.__dask_postpersist__()
            persisted.append(
                rebuild({k: futures[k] for k in flatten_keys(item_keys)}, *state)
            )
        return persisted[0] if singleton else persisted

    def _graph_options(
        self,
        workers: Any,
        allow_other_workers: bool | None,
        resources: Mapping[str, float] | None,
        retries: int | None,
        priority: int,
        fifo_timeout: str | float,
        actors: Any = None,
    ) -> GraphOptions:
        if allow_other_workers not in (True, False, None):
            raise TypeError("allow_other_workers= must be True, False, or None")
        import dask

        return GraphOptions(
            workers=workers,
            allow_other_workers=allow_other_workers,
            resources=resources,
            retries=retries or None,
            priority=priority,
            fifo_timeout=parse_timedelta(fifo_timeout),
            annotations=dict(dask.get_annotations()),
            actors=actor_keys(actors),
        )

    @contextlib.contextmanager
    def as_current(self) -> Iterator[None]:
        """Make this client the one dask collections run on, in this block."""
        token = current_client_var.set(self)
        uses_dask = use_localsched_for_dask()
        try:
            yield
        finally:
            if uses_dask:
                stop_using_localsched_for_dask()
            current_client_var.reset(token)

    def get_executor(self, **kwargs: Any) -> Any:
        """A ``concurrent.futures.Executor`` running on this client.

        ``kwargs`` go to every ``submit`` (``workers``, ``resources``,
        ``retries``, ``priority``, ``pure``, ...). See
        :class:`localsched.client.executor.ClientExecutor`.
        """
        from localsched.client.executor import ClientExecutor

        return ClientExecutor(self, **kwargs)


def _maybe_delayed(item: Any) -> Any:
    """dask's ``traverse``: a list or dict holding collections becomes one
    ``delayed`` object, as ``distributed.Client.compute`` does."""
    if isinstance(item, list | tuple | set | dict):
        import dask
        from dask.delayed import delayed

        found = (
            item.values() if isinstance(item, dict) else item
        )  # only look one level down, as dask does
        if any(dask.is_dask_collection(x) for x in found):
            return delayed(item)
    return item
