"""Handlers of the cluster-tool requests (scheduler thread).

``TaskRunSpecs`` (recreating a task in the client), ``ClusterDump``
(``dump_cluster_state``), ``Replicate`` and ``RestartWorkers``: registered in
``request_handler``'s table like every other request, so they answer a client
in the user's process and the client of a task alike.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from localsched.runtime import restarting
from localsched.runtime.handles import ClientHandle, WorkerClientHandle
from localsched.transport import requests as rq

if TYPE_CHECKING:
    from localsched.runtime.scheduler_thread import SchedulerRuntime

Key = Hashable

__all__ = ["HANDLERS"]


def _task_run_specs(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.TaskRunSpecs
) -> dict[Key, tuple[Any, Key | None]]:
    tasks = runtime.scheduler.tasks
    out: dict[Key, tuple[Any, Key | None]] = {}
    for key in r.keys:
        ts = tasks.get(key)
        if ts is None:
            continue
        blame = ts.exception_blame
        out[key] = (ts.run_spec, None if blame is None else blame.key)
    return out


def _plain(value: Any) -> Any:
    """``value`` as data msgpack and yaml's safe dumper both take."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)


def _task_dump(ts: Any, exclude: tuple[str, ...]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "key": ts.key,
        "state": ts.state,
        "priority": ts.priority,
        "dependencies": [dts.key for dts in ts.dependencies],
        "dependents": [dts.key for dts in ts.dependents],
        "who_wants": [cs.client_key for cs in ts.who_wants],
        "who_has": [ws.address for ws in ts.who_has],
        "processing_on": None if ts.processing_on is None else ts.processing_on.address,
        "nbytes": ts.nbytes,
        "retries": ts.retries,
        "suspicious": ts.suspicious,
        "exception": None if ts.exception is None else repr(ts.exception),
        "exception_blame": None
        if ts.exception_blame is None
        else ts.exception_blame.key,
    }
    return {k: _plain(v) for k, v in fields.items() if k not in exclude}


def _cluster_dump(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.ClusterDump
) -> dict[str, Any]:
    scheduler = runtime.scheduler
    exclude = tuple(r.exclude)
    workers = {}
    for address, ws in scheduler.workers.items():
        workers[address] = _plain(
            {
                **ws.identity(),
                "address": address,
                "name": ws.name,
                "processing": [ts.key for ts in ws.processing],
                "has_what": [ts.key for ts in ws.has_what],
                "nbytes": ws.nbytes,
            }
        )
    info = scheduler.identity()
    info.pop("workers", None)
    state = {
        **_plain(info),
        "status": str(scheduler.status),
        "tasks": {str(k): _task_dump(ts, exclude) for k, ts in scheduler.tasks.items()},
        "clients": sorted(str(c) for c in scheduler.clients),
        "transition_log": [_plain(list(t)) for t in list(scheduler.transition_log)],
    }
    return {"scheduler": state, "workers": workers}


def _replicate(runtime: SchedulerRuntime, asker: ClientHandle, r: rq.Replicate) -> None:
    scheduler = runtime.scheduler
    candidates = (
        list(scheduler.workers)
        if r.workers is None
        else scheduler.workers_list(list(r.workers))
    )
    if not candidates:
        return
    n = len(candidates) if r.n is None else min(r.n, len(candidates))
    tasks = scheduler.tasks
    by_worker: dict[str, list[Key]] = {}
    for key in r.keys:
        ts = tasks.get(key)
        if ts is None or ts.state != "memory":
            continue
        holders = [ws.address for ws in ts.who_has if ws.address in candidates]
        # Keep the holders there are, add others until n hold it.
        for address in candidates:
            if len(holders) >= n:
                break
            if address not in holders:
                holders.append(address)
                by_worker.setdefault(address, []).append(key)
    for address, keys in by_worker.items():
        scheduler.add_keys(address, keys)


def _restart_workers(
    runtime: SchedulerRuntime, asker: ClientHandle, r: rq.RestartWorkers
) -> dict[Any, str | None]:
    scheduler = runtime.scheduler
    out: dict[Any, str | None] = {}
    for name in r.workers:
        address: str | None = scheduler.coerce_address(name)
        if address is None or address not in runtime.workers:
            out[name] = None
            continue
        if isinstance(asker, WorkerClientHandle) and asker.worker.address == address:
            raise RuntimeError(
                "A task cannot restart its own worker: restart_workers would kill "
                "the process running this task"
            )
        out[name] = address
    for address in out.values():
        if address is not None:
            restarting.restart_worker(runtime, address)
    return out


HANDLERS: dict[type[rq.Request], Callable[[Any, Any, Any], Any]] = {
    rq.TaskRunSpecs: _task_run_specs,
    rq.ClusterDump: _cluster_dump,
    rq.Replicate: _replicate,
    rq.RestartWorkers: _restart_workers,
}
