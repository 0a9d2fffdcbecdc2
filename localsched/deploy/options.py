"""``LocalCluster``'s options as dask takes them: keyword arguments, then config.

dask's ``LocalCluster`` passes keyword arguments it does not know to its
``Worker``/``Nanny``, whose constructors reject unknown ones with a
``TypeError``: ``LocalCluster(n_worker=2)`` fails instead of starting the
default cluster. :func:`check_keywords` does the same here, accepting the names
dask accepts (most of them mean nothing on one machine and are ignored).

dask's config (``distributed.scheduler.allowed-failures``,
``worker-saturation``, ``work-stealing``,
``distributed.diagnostics.computations.max-history``,
``distributed.admin.low-level-log-length``) is read once, here, when
a cluster is built, and only if the program imported dask already: the
scheduler core never reads global config, it gets the values as arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["check_keywords", "scheduler_options"]

#: Keyword arguments of dask's ``LocalCluster``, ``SpecCluster``, ``Worker``
#: and ``Nanny`` that localsched accepts and ignores (network, dashboard,
#: process management: nothing to set on one machine).
DASK_IGNORED = frozenset(
    {
        "loop", "start", "host", "ip", "scheduler_port", "silence_logs",
        "dashboard_address", "worker_dashboard_address", "services",
        "worker_services", "service_kwargs", "asynchronous", "security",
        "protocol", "blocked_handlers", "interface", "worker_class",
        "scheduler_sync_interval", "shutdown_on_close", "shutdown_scheduler",
        "scheduler_ip", "scheduler_file", "nthreads", "executor",
        "death_timeout", "contact_address", "heartbeat_interval", "extensions",
        "metrics", "startup_information", "port", "dashboard", "http_prefix",
        "nanny", "low_level_profiler", "profile_cycle_interval", "lifetime",
        "lifetime_stagger", "lifetime_restart", "transition_counter_max", "data",
        "scheduler_sni", "WorkerStateClass", "worker_port", "reconnect", "quiet",
        "preload_nanny", "preload_nanny_argv", "listen_address", "env", "config",
        "workers", "scheduler", "worker",
        # dask's Client options, which reach LocalCluster through Client(**kw).
        "serializers", "deserializers", "direct_to_workers", "connection_limit",
    }
)  # fmt: skip

#: dask's config keys read at cluster construction -> ``Scheduler`` argument.
_CONFIG_KEYS = {
    "allowed_failures": "distributed.scheduler.allowed-failures",
    "worker_saturation": "distributed.scheduler.worker-saturation",
    "work_stealing": "distributed.scheduler.work-stealing",
    "computations_max_history": "distributed.diagnostics.computations.max-history",
    "transition_log_length": "distributed.admin.low-level-log-length",
}
_DEFAULTS: dict[str, Any] = {
    "allowed_failures": 3,
    "worker_saturation": 1.1,
    "work_stealing": True,
    "computations_max_history": 100,
    "transition_log_length": 1000,
}


def check_keywords(owner: str, names: Iterable[str]) -> None:
    """Raise ``TypeError`` for a keyword argument dask would reject too.

    Parameters
    ----------
    owner
        Who was called, for the message (``"LocalCluster"``).
    names
        The keyword arguments left once the known ones were taken.
    """
    unknown = sorted(set(names) - DASK_IGNORED)
    if unknown:
        raise TypeError(
            f"{owner}.__init__() got an unexpected keyword argument {unknown[0]!r}"
        )


def scheduler_options(**given: Any) -> dict[str, Any]:
    """The scheduler's options: each given value, else dask's config when the
    program imported dask, else dask's default.

    ``allowed_failures=0`` (no retry after a worker death) is a value, not a
    missing one; ``worker_saturation`` may be ``"inf"`` (no queuing), as in
    dask's config.
    """
    config = sys.modules.get("dask.config")
    options: dict[str, Any] = {}
    for name, key in _CONFIG_KEYS.items():
        value = given.get(name)
        if value is None and config is not None:
            value = config.get(key, None)
        if value is None:
            value = _DEFAULTS[name]
        options[name] = value
    options["allowed_failures"] = int(options["allowed_failures"])
    if options["allowed_failures"] < 0:
        raise ValueError("allowed_failures must be 0 or more")
    options["worker_saturation"] = float(options["worker_saturation"])
    if not options["worker_saturation"] > 0:
        raise ValueError("worker_saturation must be a positive number (or inf)")
    options["work_stealing"] = bool(options["work_stealing"])
    options["computations_max_history"] = int(options["computations_max_history"])
    options["transition_log_length"] = int(options["transition_log_length"])
    if options["transition_log_length"] < 0:
        raise ValueError("distributed.admin.low-level-log-length must be 0 or more")
    return options
