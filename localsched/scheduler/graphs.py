"""Graph intake: ``on_update_graph`` and the checks before it changes state.

A graph is validated whole (key types, missing dependencies, cycles) and culled
to what the wanted keys need before any task is created, so a rejected graph
leaves no trace. New tasks are then wired to their dependencies, given dask's
priorities ``(-user_priority, generation, graph order)`` and recommended to
``waiting`` in priority order. Split from ``stimuli.py``, whose other handlers
react to workers and clients.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from operator import attrgetter
from typing import TYPE_CHECKING, TypeVar, cast

from localsched.errors import GraphError
from localsched.scheduler import events as ev
from localsched.scheduler.clients import ensure_client, report_on_key
from localsched.scheduler.commands import GraphRejected, KeyCancelled
from localsched.scheduler.engine import (
    new_task,
    notify,
    run_transitions,
    submit_lone_tasks,
)
from localsched.scheduler.events import validate_key
from localsched.scheduler.tasks import Key, TaskState, with_link

if TYPE_CHECKING:
    from localsched.scheduler.state import SchedulerState

Recs = dict[Key, str]
V = TypeVar("V")


class LostDependencyError(GraphError):
    """A graph refers to a key that is neither in it nor known (released data)."""


def on_update_graph(state: SchedulerState, event: ev.UpdateGraph) -> None:
    state.now = max(state.now, event.time)
    # A graph without an edge (a map): every new task is lone.
    edges = any(event.dependencies.values())
    keys = event.keys
    tasks = _as_dict(event.tasks)
    # A map as the client sends it: the wanted keys are the graph's own, in
    # its order (so each once, each in the graph). Its tasks are then read in
    # order, rather than looked up in it one by one.
    aligned = (
        not edges
        and type(keys) is list
        and len(keys) == len(tasks)
        and keys == list(tasks)
    )
    try:
        needed = _check_graph(state, event, edges, aligned)
    except LostDependencyError:
        # As dask's ``update_graph``: a computation on data that is gone is
        # cancelled ("lost dependencies"), not an error. The whole graph is
        # refused, so nothing changes; dask still runs the wanted keys that do
        # not depend on the lost data.
        state._commands.extend(
            KeyCancelled(
                stimulus_id=event.stimulus_id,
                client=event.client,
                key=key,
                reason="lost dependencies",
            )
            for key in event.keys
        )
        return
    except (GraphError, TypeError) as error:
        state._commands.append(
            GraphRejected(
                stimulus_id=event.stimulus_id,
                client=event.client,
                keys=tuple(event.keys),
                error=error,
            )
        )
        return
    cs = ensure_client(state, event.client)
    new: list[TaskState] = []
    touched: list[TaskState] = []
    if aligned:
        for key, spec in tasks.items():
            ts = state.tasks.get(key)
            if ts is None:
                ts = new_task(state, key, spec)
                new.append(ts)
            touched.append(ts)
    else:
        for key in needed:
            ts = state.tasks.get(key)
            if ts is None:
                ts = new_task(state, key, tasks[key])
                new.append(ts)
            touched.append(ts)
    _wire_new_tasks(state, new, event, edges)
    _set_priorities(state, new, event)
    for key in event.actors:
        ts = state.tasks.get(key)
        if ts is not None:
            ts.actor = True
    wants_what = cs.wants_what
    # Without edges the wanted tasks are exactly ``touched`` (``_check_graph``).
    wanted = touched if not edges else [state.tasks[key] for key in event.keys]
    for ts in wanted:
        # link_client, with one hash of the task (a Python-level call), not
        # two (``in`` then ``add``): the set grows iff the task is new to it.
        n = len(wants_what)
        wants_what.add(ts)
        if len(wants_what) != n:
            ts.who_wants = with_link(ts.who_wants, cs)
    if state.hooks is not None:
        # Built only when someone listens: it costs a set per new task.
        notify(
            state,
            "update_graph",
            client=event.client,
            keys=set(event.keys),
            tasks=[ts.key for ts in new],
            annotations=dict(event.annotations_by_type or {}),
            priority={ts.key: ts.priority for ts in new},
            dependencies={ts.key: {dts.key for dts in ts.dependencies} for ts in new},
            stimulus_id=event.stimulus_id,
        )
    if len(touched) > 1:
        touched.sort(key=_priority, reverse=True)
    if not edges and len(new) == len(touched):
        # A map of new tasks: none is in memory or erred yet, none waits on
        # another. Lone tasks without a run_spec stay released, as below.
        submit_lone_tasks(
            state, [ts for ts in touched if ts.run_spec is not None], event.stimulus_id
        )
        return
    recs: Recs = {}
    for ts in touched:
        if ts.state == "released" and ts.run_spec is not None:
            recs[ts.key] = "waiting"
    for key in event.keys:
        ts = state.tasks[key]
        if ts.state in ("memory", "erred"):
            report_on_key(state, ts, cs, event.stimulus_id)
    run_transitions(state, recs, event.stimulus_id)


def _check_graph(
    state: SchedulerState, event: ev.UpdateGraph, edges: bool, aligned: bool
) -> list[Key]:
    """Keys of the graph needed by the wanted keys; raise if the graph is bad.

    Unneeded tasks are culled, as dask's ``update_graph`` does. Runs before
    any state changes, so a rejected graph leaves no trace. ``edges``: whether
    any task of the graph has dependencies; ``aligned``: the wanted keys are
    the graph's keys, in order (``on_update_graph``).
    """
    tasks = _as_dict(event.tasks)
    deps = _as_dict(event.dependencies)
    known = state.tasks
    if aligned:
        # Each wanted key is in the graph, once, and a leaf: only its type
        # is left to check.
        for key in event.keys:
            if not _plain_key(key):
                validate_key(key)
        # A list (``on_update_graph`` checked): no copy of a million keys.
        return cast("list[Key]", event.keys)
    for key in event.keys:
        if not _plain_key(key):
            validate_key(key)
        if key not in tasks and key not in known:
            raise LostDependencyError(
                f"Wanted key {key!r} is neither in the graph nor known"
            )
    if not edges:
        # Every wanted key is a leaf: the walk below would give them in
        # order, once each, without a mark per key.
        return list(dict.fromkeys(event.keys))
    order: list[Key] = []
    # 0: unseen, 1: on the DFS stack, 2: done. Only new keys are walked:
    # known tasks keep their dependencies, so a cycle needs a new task.
    color: dict[Key, int] = {}
    for root in event.keys:
        if root in known or color.get(root):
            if root in known and root not in color:
                color[root] = 2
                order.append(root)
            continue
        # Roots were validated above.
        children = deps.get(root)
        if not children:
            # A root without dependencies (a map): nothing to walk.
            color[root] = 2
            order.append(root)
            continue
        stack: list[tuple[Key, Iterator[Key]]] = [(root, iter(children))]
        color[root] = 1
        while stack:
            key, pending = stack[-1]
            advanced = False
            for dep in pending:
                mark = color.get(dep, 0)
                if mark == 1:
                    raise GraphError(
                        f"Cycle in the graph: {dep!r} depends on itself through {key!r}"
                    )
                if mark == 2:
                    continue
                if dep in known:
                    color[dep] = 2
                    order.append(dep)
                    continue
                if dep not in tasks:
                    raise LostDependencyError(
                        f"Task {key!r} depends on {dep!r}, which is neither in "
                        "the graph nor known to the scheduler"
                    )
                if not _plain_key(dep):
                    validate_key(dep)
                grandchildren = deps.get(dep)
                if not grandchildren:
                    # A leaf: done at once, in the order its pop would give,
                    # without a stack entry and an iterator (most tasks).
                    color[dep] = 2
                    order.append(dep)
                    continue
                color[dep] = 1
                stack.append((dep, iter(grandchildren)))
                advanced = True
                break
            if not advanced:
                stack.pop()
                color[key] = 2
                order.append(key)
    return order


def _as_dict(mapping: Mapping[Key, V]) -> dict[Key, V]:
    """``mapping`` itself if it is a dict (events hold dicts), else a copy:
    compiled, a lookup in a value typed ``dict`` is a C call, in a ``Mapping``
    a method call by name."""
    if type(mapping) is dict:
        return cast("dict[Key, V]", mapping)
    return dict(mapping)


def _plain_key(key: object) -> bool:
    """Whether ``key`` is a str, an int or a tuple of those: a valid key
    known without calling ``validate_key`` (interpreted: it lives beside the
    events, which clients import without the core)."""
    kind = type(key)
    if kind is str or kind is int:
        return True
    if kind is not tuple:
        return False
    for part in cast("tuple[object, ...]", key):
        part_kind = type(part)
        if part_kind is not str and part_kind is not int:
            return False
    return True


def _wire_new_tasks(
    state: SchedulerState, new: list[TaskState], event: ev.UpdateGraph, edges: bool
) -> None:
    deps = _as_dict(event.dependencies)
    restrictions = event.restrictions or {}
    loose = set(event.loose_restrictions)
    resources = event.resources or {}
    retries = event.retries
    annotations = event.annotations or {}
    tasks = state.tasks
    # A graph without per-task options (the usual map or reduction) skips
    # their lookups altogether.
    plain = not (restrictions or resources or annotations) and retries is None
    for ts in new:
        key = ts.key
        dep_keys = deps.get(key, ()) if edges else ()
        if dep_keys:
            group = ts.group
            many = len(dep_keys) > 1
            if many:
                dependencies = ts.dependencies = set()  # not an ``alone``
            for dep_key in dep_keys:
                dts = tasks[dep_key]
                if many:
                    dependencies.add(dts)
                else:
                    ts.dependencies = with_link(ts.dependencies, dts)
                # with_link(dts.dependents, ts), inlined for the usual cases.
                dependents = dts.dependents
                if type(dependents) is set:
                    dependents.add(ts)
                elif dependents:
                    dts.dependents = with_link(dependents, ts)
                else:
                    alone = ts.alone
                    if alone is None:
                        alone = ts.alone = frozenset((ts,))
                    # A one-member link set is that member's ``alone``
                    # frozenset (``with_link``).
                    dts.dependents = alone
                dts_group = dts.group
                if dts_group is not group:
                    group.dependencies.add(dts_group)
                    dts_group.dependents.add(group)
        if plain:
            continue
        ann = annotations.get(key)
        if ann:
            ts.annotations = dict(ann)
        workers = restrictions.get(key, ann.get("workers") if ann else None)
        if workers:
            if isinstance(workers, str):
                workers = [workers]
            ts.worker_restrictions = set(workers)
            if key in loose or (ann and ann.get("allow_other_workers")):
                ts.loose_restrictions = True
        res = resources.get(key, ann.get("resources") if ann else None)
        if res:
            ts.resource_restrictions = dict(res)
        if isinstance(retries, int):
            ts.retries = retries
        elif retries and key in retries:
            ts.retries = retries[key]
        elif ann and "retries" in ann:
            ts.retries = int(ann["retries"] or 0)


def _set_priorities(
    state: SchedulerState, new: list[TaskState], event: ev.UpdateGraph
) -> None:
    """``(-user_priority, generation, graph order)`` for the new tasks."""
    parent = (
        state.tasks.get(event.submitting_task)
        if event.submitting_task is not None
        else None
    )
    if parent is not None:
        # Subtasks of a running task go ahead of that task's siblings. dask
        # takes priority[0] (-user_priority), which puts them ahead of every
        # generation; kept for compatibility. A float there, an int otherwise
        # (dask's priorities print as it does).
        generation: int | float = parent.priority[0] - 0.01
    elif event.submitting_task is not None:
        generation = state.generation  # the parent is gone: no new generation
    elif state._last_generation_time + event.fifo_timeout < event.time:
        state.generation += 1
        state._last_generation_time = event.time
        generation = state.generation
    else:
        generation = state.generation
    order = event.priority
    user = event.user_priority
    annotations = event.annotations or {}
    if order is None and type(user) is int and not annotations:
        # The usual graph: submission order, one user priority.
        user_priority = -user
        next_order = state._next_order
        for ts in new:
            ts.priority = (user_priority, generation, next_order)
            next_order += 1
        state._next_order = next_order
        return
    for ts in new:
        key = ts.key
        if order is not None and key in order:
            graph_order = order[key]
        else:
            graph_order = state._next_order
            state._next_order += 1
        if isinstance(user, int):
            user_priority = user
        else:
            user_priority = user.get(key, 0)
        ann = annotations.get(key)
        if ann and "priority" in ann:
            user_priority = ann["priority"]
        ts.priority = (-user_priority, generation, graph_order)


# C-level key function (sorting 100k tasks by a Python function costs ~1 us each).
_priority = attrgetter("priority")
