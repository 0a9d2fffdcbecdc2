"""Plugins: ``SchedulerPlugin`` and ``WorkerPlugin`` with dask's hooks, and the
registry that calls them.

The registry indexes, for each hook, only the plugins that override it, so a hook
nobody implements costs nothing; with no ``transition`` plugin the core does not
even make the call. A hook that raises is logged and scheduling goes on, as in
dask. Async hooks (``async def``) are awaited on a small private event loop after
the synchronous ones have run, as dask documents for ``add_worker``.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Awaitable, Hashable
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from localsched.scheduler.scheduler import Scheduler

logger = logging.getLogger("localsched.plugins")

Key = Hashable


class SchedulerPlugin:
    """Interface to extend the Scheduler (same hooks as dask.distributed's).

    The scheduler calls each hook a plugin overrides when the corresponding event
    happens, on the scheduler thread, in step with the scheduler itself. Register
    a plugin with ``Client.register_plugin`` or ``Scheduler.add_plugin``.

    The ``idempotent`` attribute decides what happens when a plugin with the same
    ``name`` exists: ``True`` keeps the existing one, ``False`` replaces it.

    Examples
    --------
    >>> class Counter(SchedulerPlugin):
    ...     def __init__(self):
    ...         self.counter = 0
    ...
    ...     def transition(self, key, start, finish, *args, **kwargs):
    ...         if start == 'processing' and finish == 'memory':
    ...             self.counter += 1
    ...
    ...     def restart(self, scheduler):
    ...         self.counter = 0

    >>> plugin = Counter()
    >>> scheduler.add_plugin(plugin)  # doctest: +SKIP
    """

    idempotent: bool = False

    async def start(self, scheduler: Scheduler) -> None:
        """Run when the scheduler starts up (at the end of start-up)."""

    async def before_close(self) -> None:
        """Run before any scheduler shutdown logic."""

    async def close(self) -> None:
        """Run when the scheduler closes down, after workers were asked to stop."""

    def update_graph(
        self,
        scheduler: Scheduler,
        *,
        client: str,
        keys: set[Key],
        tasks: list[Key],
        annotations: dict[str, dict[Key, Any]],
        priority: dict[Key, tuple[float, ...]],
        stimulus_id: str,
        **kwargs: Any,
    ) -> None:
        """Run when a new graph or new tasks enter the scheduler."""

    def restart(self, scheduler: Scheduler) -> None:
        """Run when the scheduler restarts itself."""

    def transition(
        self,
        key: Key,
        start: str,
        finish: str,
        *args: Any,
        stimulus_id: str,
        **kwargs: Any,
    ) -> None:
        """Run whenever a task changes state.

        Parameters
        ----------
        key
            The task's key.
        start
            State before the transition.
        finish
            State after the transition.
        stimulus_id
            ID of the stimulus causing the transition.
        *args, **kwargs
            More options passed when transitioning (worker, nbytes, startstops...).
        """

    def add_worker(self, scheduler: Scheduler, worker: str) -> Awaitable[None] | None:
        """Run when a new worker enters the cluster."""

    def remove_worker(
        self, scheduler: Scheduler, worker: str, *, stimulus_id: str, **kwargs: Any
    ) -> Awaitable[None] | None:
        """Run when a worker leaves the cluster."""

    def add_client(self, scheduler: Scheduler, client: str) -> None:
        """Run when a new client connects."""

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        """Run when a client disconnects."""

    def valid_workers_downscaling(
        self, scheduler: Scheduler, workers: list[Any]
    ) -> list[Any]:
        """Filter the workers ``workers_to_close`` may suggest."""
        return workers

    def log_event(self, topic: str, msg: Any) -> None:
        """Run when an event is logged."""


class WorkerPlugin:
    """Interface to extend the Worker (same hooks as dask.distributed's).

    Register with ``Client.register_plugin``; the plugin is pickled and set up
    on every current and future worker.

    Examples
    --------
    >>> class ErrorLogger(WorkerPlugin):
    ...     def __init__(self, logger):
    ...         self.logger = logger
    ...
    ...     def setup(self, worker):
    ...         self.worker = worker
    ...
    ...     def transition(self, key, start, finish, *args, **kwargs):
    ...         if finish == 'error':
    ...             ts = self.worker.state.tasks[key]
    ...             exc_info = (type(ts.exception), ts.exception, ts.traceback)
    ...             self.logger.error(
    ...                 "Error during computation of '%s'.", key, exc_info=exc_info
    ...             )
    """

    idempotent: bool = False

    def setup(self, worker: Any) -> Awaitable[None] | None:
        """Run when the plugin is attached to a worker."""

    def teardown(self, worker: Any) -> Awaitable[None] | None:
        """Run when the worker to which the plugin is attached is closed."""

    def transition(self, key: Key, start: str, finish: str, **kwargs: Any) -> None:
        """Run whenever a task changes state on the worker."""


class ForwardLoggingPlugin(WorkerPlugin):
    """Forward a logger's records from the workers to the client (dask's
    plugin of the same name; ``Client.forward_logging`` registers it).

    Parameters
    ----------
    logger_name
        The logger whose records (and those of the loggers below it) are sent;
        None: the root logger.
    level
        Only records of this level or higher.
    topic
        The topic the records are logged under, as dicts of their attributes.
    """

    def __init__(self, logger_name: str | None, level: int | str, topic: str) -> None:
        self.logger_name = logger_name
        self.level = level
        self.topic = topic
        self.handler: logging.Handler | None = None

    def setup(self, worker: Any) -> None:
        self.handler = _ForwardingLogHandler(worker, self.topic, level=self.level)
        logging.getLogger(self.logger_name).addHandler(self.handler)

    def teardown(self, worker: Any) -> None:
        if self.handler is not None:
            logging.getLogger(self.logger_name).removeHandler(self.handler)


class _ForwardingLogHandler(logging.Handler):
    """Sends each record it handles to the scheduler's event log."""

    def __init__(self, worker: Any, topic: str, level: int | str) -> None:
        super().__init__(level)
        self.worker = worker
        self.topic = topic

    def emit(self, record: logging.LogRecord) -> None:
        # As dask (after logging.handlers.SocketHandler.makePickle): the message
        # is formatted here, since its arguments may not exist on the client.
        if record.exc_info:
            self.format(record)  # fills record.exc_text
        attributes = dict(record.__dict__)
        attributes["msg"] = record.getMessage()
        attributes["args"] = None
        attributes["exc_info"] = None
        attributes.pop("message", None)
        attributes["worker"] = getattr(self.worker, "address", None)
        try:
            self.worker.log_event(self.topic, attributes)
        except Exception:
            self.handleError(record)


_SCHEDULER_HOOKS = (
    "start",
    "before_close",
    "close",
    "update_graph",
    "restart",
    "transition",
    "add_worker",
    "remove_worker",
    "add_client",
    "remove_client",
    "valid_workers_downscaling",
    "log_event",
)


def plugin_name(plugin: object) -> str:
    """dask's default name: the ``name`` attribute, else class name and id."""
    name = getattr(plugin, "name", None)
    if name is None:
        name = f"{type(plugin).__name__}-{id(plugin):x}"
    return str(name)


def registration_name(plugin: object) -> str:
    """dask's ``_get_plugin_name``: the ``name`` attribute, else a unique name
    (the name ``Client.register_plugin`` registers a plugin under)."""
    if hasattr(plugin, "name"):
        return str(plugin.name)
    import uuid

    return f"{type(plugin).__name__}-{uuid.uuid4()}"


def _overrides(plugin: object, hook: str) -> bool:
    method = getattr(type(plugin), hook, None)
    if method is None:
        return callable(getattr(plugin, hook, None))
    if method is getattr(SchedulerPlugin, hook, None):
        return False
    # A subclass of distributed's own SchedulerPlugin (its Progress, say) that
    # keeps that base's no-op hook does not implement it either.
    dask_plugins = sys.modules.get("distributed.diagnostics.plugin")
    dask_base = getattr(dask_plugins, "SchedulerPlugin", None)
    return method is not getattr(dask_base, hook, None)


class PluginRegistry:
    """Holds scheduler plugins by name and calls the hooks they implement."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        #: name -> plugin, in registration order (dask's ``Scheduler.plugins``).
        self.plugins: dict[str, Any] = {}
        self._by_hook: dict[str, list[Any]] = {hook: [] for hook in _SCHEDULER_HOOKS}
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(
        self, plugin: Any, name: str | None = None, idempotent: bool | None = None
    ) -> bool:
        """Register ``plugin``; return False if an idempotent one was kept."""
        if name is None:
            name = plugin_name(plugin)
        if idempotent is None:
            idempotent = bool(getattr(plugin, "idempotent", False))
        if name in self.plugins:
            if idempotent:
                return False
            self.remove(name)
        self.plugins[name] = plugin
        self._reindex()
        return True

    def remove(self, name: str) -> Any:
        try:
            plugin = self.plugins.pop(name)
        except KeyError:
            raise ValueError(
                f"Could not find plugin {name!r} among the current scheduler "
                f"plugins: {sorted(self.plugins)}"
            ) from None
        self._reindex()
        return plugin

    def _reindex(self) -> None:
        self._by_hook = {
            hook: [p for p in self.plugins.values() if _overrides(p, hook)]
            for hook in _SCHEDULER_HOOKS
        }

    def has(self, hook: str) -> bool:
        return bool(self._by_hook[hook])

    # -- the core's callbacks --------------------------------------------------

    def transition(
        self,
        key: Key,
        start: str,
        finish: str,
        stimulus_id: str,
        kwargs: dict[str, Any],
    ) -> None:
        for plugin in self._by_hook["transition"]:
            try:
                plugin.transition(key, start, finish, stimulus_id=stimulus_id, **kwargs)
            except Exception:
                logger.exception("Plugin %s failed in transition", plugin_name(plugin))

    def notify(self, hook: str, **kwargs: Any) -> None:
        scheduler = self.scheduler
        if hook == "update_graph":
            self.call("update_graph", scheduler, **kwargs)
        elif hook in ("add_worker", "remove_worker", "add_client", "remove_client"):
            self.call(hook, scheduler=scheduler, **kwargs)
        elif hook == "restart":
            self.call("restart", scheduler)
        else:
            self.call(hook, **kwargs)

    def filter_downscaling(self, workers: list[Any]) -> list[Any]:
        for plugin in self._by_hook["valid_workers_downscaling"]:
            try:
                workers = plugin.valid_workers_downscaling(self.scheduler, workers)
            except Exception:
                logger.exception(
                    "Plugin %s failed in valid_workers_downscaling", plugin_name(plugin)
                )
        return workers

    # -- calling hooks -------------------------------------------------------------

    def call(self, hook: str, *args: Any, **kwargs: Any) -> None:
        """Call ``hook`` on every plugin implementing it; await async results."""
        pending: list[tuple[Any, Awaitable[Any]]] = []
        for plugin in self._by_hook[hook]:
            try:
                result = getattr(plugin, hook)(*args, **kwargs)
            except Exception:
                logger.exception("Plugin %s failed in %s", plugin_name(plugin), hook)
                continue
            if inspect.isawaitable(result):
                pending.append((plugin, result))
        for plugin, awaitable in pending:
            self._await(plugin, hook, awaitable)

    def call_plugin(self, plugin: Any, hook: str, *args: Any) -> None:
        """Call one plugin's hook (``start`` for a plugin added later)."""
        if not _overrides(plugin, hook):
            return
        try:
            result = getattr(plugin, hook)(*args)
        except Exception:
            logger.exception("Plugin %s failed in %s", plugin_name(plugin), hook)
            return
        if inspect.isawaitable(result):
            self._await(plugin, hook, result)

    def _await(self, plugin: Any, hook: str, awaitable: Awaitable[Any]) -> None:
        import asyncio  # only plugins with async hooks pay for it

        running = asyncio._get_running_loop()
        if running is not None:
            # Called from a coroutine turning on this thread (a feed's setup, a
            # coroutine given to run_on_scheduler): the hook runs on that loop,
            # as dask's run on the scheduler's, after the caller's step.
            task = running.create_task(_as_coroutine(awaitable))
            task.add_done_callback(partial(_log_failure, plugin, hook))
            return
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(_as_coroutine(awaitable))
        except Exception:
            logger.exception("Plugin %s failed in %s", plugin_name(plugin), hook)

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.close()
        self._loop = None


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _log_failure(plugin: Any, hook: str, task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "Plugin %s failed in %s",
            plugin_name(plugin),
            hook,
            exc_info=task.exception(),
        )
