"""Small event factories for driving ``SchedulerState`` in tests.

Each factory builds one event with sensible defaults, feeds it to the state and
returns the commands. Stimulus ids are unique and readable (``"finish-a-7"``) so a
failing test's story says which call caused what.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from localsched.scheduler import events as ev
from localsched.scheduler.commands import Command, ComputeTask
from localsched.scheduler.state import SchedulerState
from localsched.scheduler.tasks import Key

_ids = itertools.count()


def sid(kind: str, *parts: object) -> str:
    """A fresh stimulus id such as ``"finish-a-3"``."""
    return "-".join([kind, *map(str, parts), str(next(_ids))])


def spec(key: Key) -> str:
    """The opaque run_spec factories give a task."""
    return f"run-{key}"


def add_worker(
    state: SchedulerState,
    address: str = "w1",
    nthreads: int = 1,
    *,
    stimulus_id: str | None = None,
    **kwargs: Any,
) -> list[Command]:
    return state.handle(
        ev.WorkerAdded(
            stimulus_id=stimulus_id or sid("add-worker", address),
            address=address,
            nthreads=nthreads,
            **kwargs,
        )
    )


def remove_worker(
    state: SchedulerState,
    address: str,
    *,
    expected: bool = False,
    stimulus_id: str | None = None,
    **kwargs: Any,
) -> list[Command]:
    return state.handle(
        ev.WorkerRemoved(
            stimulus_id=stimulus_id or sid("remove-worker", address),
            address=address,
            expected=expected,
            **kwargs,
        )
    )


def graph_event(
    state: SchedulerState,
    graph: Mapping[Key, Iterable[Key]] | Iterable[Key],
    *,
    keys: Collection[Key] | None = None,
    client: str = "c",
    stimulus_id: str | None = None,
    **kwargs: Any,
) -> ev.UpdateGraph:
    """An ``UpdateGraph`` for ``graph`` (key -> dependency keys, or bare keys).

    Dependencies that are neither graph keys nor known to ``state`` become new
    tasks without dependencies. ``keys`` defaults to every graph key.
    """
    if not isinstance(graph, Mapping):
        graph = dict.fromkeys(graph, ())
    dependencies = {key: list(deps) for key, deps in graph.items()}
    tasks: dict[Key, object] = {key: spec(key) for key in graph}
    for deps in dependencies.values():
        for dep in deps:
            if dep not in tasks and dep not in state.tasks:
                tasks[dep] = spec(dep)
    return ev.UpdateGraph(
        stimulus_id=stimulus_id or sid("update-graph", client),
        client=client,
        tasks=tasks,
        dependencies=dependencies,
        keys=list(graph) if keys is None else keys,
        **kwargs,
    )


def submit(
    state: SchedulerState,
    graph: Mapping[Key, Iterable[Key]] | Iterable[Key],
    *,
    keys: Collection[Key] | None = None,
    client: str = "c",
    **kwargs: Any,
) -> list[Command]:
    """Submit ``graph`` (see ``graph_event``) and return the commands."""
    return state.handle(graph_event(state, graph, keys=keys, client=client, **kwargs))


def scatter(
    state: SchedulerState,
    who_has: Mapping[Key, str | None],
    *,
    client: str = "c",
    nbytes: Mapping[Key, int] | None = None,
    shared: bool = False,
    stimulus_id: str | None = None,
) -> list[Command]:
    return state.handle(
        ev.UpdateData(
            stimulus_id=stimulus_id or sid("update-data", client),
            client=client,
            who_has=who_has,
            nbytes=dict(nbytes or {}),
            shared=shared,
        )
    )


def _processing_worker(state: SchedulerState, key: Key) -> str:
    ws = state.tasks[key].processing_on
    assert ws is not None, f"{key!r} is {state.tasks[key].state}, not processing"
    return ws.address


def finish(
    state: SchedulerState,
    key: Key,
    worker: str | None = None,
    *,
    nbytes: int = 100,
    duration: float | None = None,
    start: float = 0.0,
    run_id: int | None = None,
    stimulus_id: str | None = None,
    **kwargs: Any,
) -> list[Command]:
    """The worker running ``key`` reports success (``duration``: compute seconds)."""
    if worker is None:
        worker = _processing_worker(state, key)
    if run_id is None:
        run_id = state.tasks[key].run_id if key in state.tasks else -1
    startstops = () if duration is None else (("compute", start, start + duration),)
    return state.handle(
        ev.TaskFinished(
            stimulus_id=stimulus_id or sid("finish", key),
            key=key,
            worker=worker,
            run_id=run_id,
            nbytes=nbytes,
            startstops=startstops,
            **kwargs,
        )
    )


def err(
    state: SchedulerState,
    key: Key,
    worker: str | None = None,
    *,
    exception: object = None,
    run_id: int | None = None,
    stimulus_id: str | None = None,
    **kwargs: Any,
) -> list[Command]:
    """The worker running ``key`` reports that it raised ``exception``."""
    if worker is None:
        worker = _processing_worker(state, key)
    if run_id is None:
        run_id = state.tasks[key].run_id if key in state.tasks else -1
    if exception is None:
        exception = ValueError(f"{key} failed")
    return state.handle(
        ev.TaskErred(
            stimulus_id=stimulus_id or sid("err", key),
            key=key,
            worker=worker,
            run_id=run_id,
            exception=exception,
            traceback=f"tb-{key}",
            exception_text=str(exception),
            traceback_text=f"Traceback of {key}",
            **kwargs,
        )
    )


def release(
    state: SchedulerState,
    keys: Collection[Key],
    *,
    client: str = "c",
    stimulus_id: str | None = None,
) -> list[Command]:
    return state.handle(
        ev.ClientReleasesKeys(
            stimulus_id=stimulus_id or sid("release", client), client=client, keys=keys
        )
    )


def tick(
    state: SchedulerState,
    time: float,
    *,
    is_idle: bool = False,
    stimulus_id: str | None = None,
) -> list[Command]:
    return state.handle(
        ev.Tick(stimulus_id=stimulus_id or sid("tick"), time=time, is_idle=is_idle)
    )


def run_to_memory(
    state: SchedulerState, *keys: Key, nbytes: int = 100, duration: float = 1.0
) -> None:
    """Finish ``keys`` in order, each on the worker it is processing on."""
    for key in keys:
        finish(state, key, nbytes=nbytes, duration=duration)


# --- reading commands ---------------------------------------------------------


def of_type(commands: Iterable[Command], cls: type) -> list[Any]:
    return [c for c in commands if type(c) is cls]


def computed(commands: Iterable[Command]) -> dict[Key, str]:
    """key -> worker for every ``ComputeTask`` among ``commands``, in order."""
    return {c.key: c.worker for c in commands if isinstance(c, ComputeTask)}


def states(state: SchedulerState, *keys: Key) -> dict[Key, str]:
    """key -> state name (``"forgotten"`` for keys the state no longer knows)."""
    return {
        key: state.tasks[key].state if key in state.tasks else "forgotten"
        for key in keys
    }
