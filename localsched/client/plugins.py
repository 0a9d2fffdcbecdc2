"""``Client.register_plugin`` and friends (a mixin of ``Client``).

- A :class:`~localsched.plugins.SchedulerPlugin` is added on the scheduler
  thread with ``Scheduler.add_plugin`` (an ``AddSchedulerPlugin`` request); its
  ``start`` hook runs there.
- A :class:`~localsched.plugins.WorkerPlugin` is cloudpickled once here and set
  up on every worker (an ``AddWorkerPlugin`` request; the keeper on the
  scheduler's side, ``localsched.runtime.plugin_keeper``, also sets it up on workers
  that join later).

The names, defaults, return values and warnings are dask's: ``register_plugin``
returns None for a scheduler plugin and ``{address: {"status": "OK"}}`` for a
worker plugin (``{}`` when an idempotent plugin of that name exists); a setup
that raises in a worker raises in the caller. ``register_scheduler_plugin``
(FutureWarning) and ``register_worker_plugin`` (DeprecationWarning) are dask's
older spellings.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import cloudpickle

from localsched.client.dual import dual
from localsched.plugins import SchedulerPlugin, WorkerPlugin, registration_name
from localsched.transport import pickling
from localsched.transport import requests as rq

__all__ = ["PluginsMixin"]


def _responses(answers: dict[str, tuple[bool, Any, str]]) -> dict[str, Any]:
    """Workers' answers as dask's responses; raise the first error as dask does."""
    responses: dict[str, Any] = {}
    for address in sorted(answers):
        ok, payload, traceback_text = answers[address]
        if ok:
            responses[address] = {"status": "OK"}
            continue
        error = cloudpickle.loads(payload) if isinstance(payload, bytes) else payload
        if traceback_text and error.__cause__ is None:
            from localsched.client.future import RemoteTraceback

            error.__cause__ = RemoteTraceback(traceback_text)
        raise error
    return responses


class PluginsMixin:
    """Plugin registration methods of ``Client``."""

    _link: Any

    @dual
    def register_plugin(
        self,
        plugin: SchedulerPlugin | WorkerPlugin,
        name: str | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Register a scheduler or worker plugin.

        See https://distributed.readthedocs.io/en/latest/plugins.html

        Parameters
        ----------
        plugin
            A ``SchedulerPlugin`` (added to the scheduler, its ``start`` hook
            run) or a ``WorkerPlugin`` (set up on every current and future
            worker).
        name
            Name for the plugin; default: the plugin's ``name`` attribute, else
            a generated one. A plugin of the same name is replaced.
        idempotent
            Do nothing if a plugin of that name exists (default: the plugin's
            ``idempotent`` attribute).

        Returns
        -------
        None for a scheduler plugin; for a worker plugin, address ->
        ``{"status": "OK"}`` of the workers that set it up.

        Raises
        ------
        TypeError
            A plugin class instead of an instance, or an object that is neither
            plugin type.
        Exception
            The exception the plugin's ``setup`` raised in a worker.
        """
        if isinstance(plugin, type):
            raise TypeError("Please provide an instance of a plugin, not a type.")
        if name is None:
            name = registration_name(plugin)
        assert name
        if idempotent is None:
            idempotent = getattr(plugin, "idempotent", False)
        assert isinstance(idempotent, bool)
        if isinstance(plugin, SchedulerPlugin):
            return self._register_scheduler_plugin(plugin, name, idempotent)
        if isinstance(plugin, WorkerPlugin):
            return self._register_worker_plugin(plugin, name, idempotent)
        raise TypeError(
            "Registering duck-typed plugins is not allowed. Please inherit from "
            "NannyPlugin, WorkerPlugin, or SchedulerPlugin to create a plugin."
        )

    @dual
    def register_scheduler_plugin(
        self,
        plugin: SchedulerPlugin,
        name: str | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Register a scheduler plugin (deprecated: use :meth:`register_plugin`)."""
        warnings.warn(
            "register_scheduler_plugin is deprecated; use register_plugin instead",
            FutureWarning,
            stacklevel=2,
        )
        return self.register_plugin(plugin, name=name, idempotent=idempotent)

    @dual
    def register_worker_plugin(
        self,
        plugin: WorkerPlugin | None = None,
        name: str | None = None,
        nanny: bool | None = None,
    ) -> Any:
        """Register a worker plugin (deprecated: use :meth:`register_plugin`)."""
        warnings.warn(
            "`Client.register_worker_plugin` has been deprecated; "
            "please `Client.register_plugin` instead",
            DeprecationWarning,
            stacklevel=2,
        )
        if nanny:
            raise ValueError(
                "localsched has no nanny processes; register a WorkerPlugin instead"
            )
        if plugin is None:
            raise ValueError("register_worker_plugin needs a plugin")
        return self.register_plugin(plugin, name=name)

    @dual
    def register_worker_callbacks(
        self, setup: Callable[..., Any] | None = None
    ) -> dict[str, Any]:
        """Run ``setup`` on every current and future worker (dask's older API).

        A ``setup`` with a ``dask_worker`` parameter gets the worker object
        there. Registered as a worker plugin of its own (each call adds one).

        Returns
        -------
        dict
            address -> ``{"status": "OK"}``, as :meth:`register_plugin`.
        """
        return self.register_plugin(_WorkerSetupPlugin(setup))

    @dual
    def unregister_worker_plugin(self, name: str, nanny: bool | None = None) -> Any:
        """Tear down and remove the worker plugin ``name`` on every worker.

        Returns
        -------
        dict
            address -> ``{"status": "OK"}``.

        Raises
        ------
        ValueError
            No worker plugin of that name is registered.
        """
        if nanny:
            raise ValueError("localsched has no nanny processes")
        answers = self._link.request(rq.RemoveWorkerPlugin(name=name)).result()
        return _responses(answers)

    @dual
    def unregister_scheduler_plugin(self, name: str) -> None:
        """Remove the scheduler plugin ``name``."""
        self._link.request(rq.RemoveSchedulerPlugin(name=name)).result()

    def _register_scheduler_plugin(
        self, plugin: SchedulerPlugin, name: str, idempotent: bool
    ) -> None:
        request = rq.AddSchedulerPlugin(plugin=plugin, name=name, idempotent=idempotent)
        self._link.request(request).result()

    def _register_worker_plugin(
        self, plugin: WorkerPlugin, name: str, idempotent: bool
    ) -> dict[str, Any]:
        data = pickling.dumps(plugin, protocol=5)
        request = rq.AddWorkerPlugin(plugin=data, name=name, idempotent=idempotent)
        answers = self._link.request(request).result()
        if answers is None:
            return {}
        return _responses(answers)


class _WorkerSetupPlugin(WorkerPlugin):
    """Runs a ``register_worker_callbacks`` function at setup (dask's class)."""

    def __init__(self, setup: Callable[..., Any] | None) -> None:
        self._setup = setup

    def setup(self, worker: Any) -> Any:
        if self._setup is None:
            return None
        try:
            parameters = inspect.signature(self._setup).parameters
        except (TypeError, ValueError):
            parameters = {}  # type: ignore[assignment]
        if "dask_worker" in parameters:
            return self._setup(dask_worker=worker)
        return self._setup()
