"""The transition engine: runs recommendations to a fixed point over the state.

``run_transitions(state, recommendations, stimulus_id)`` pops recommendations LIFO
(as dask's ``popitem`` does) and calls the function of ``TRANSITIONS_TABLE`` for
each ``(start, finish)`` edge; a pair without an edge goes through ``released``.
Every transition is counted in its group, appended to the bounded
``transition_log`` with its ``stimulus_id`` and reported, in order, to the
transition hook (plugins). Also here: creating a task (``new_task``), dropping a
group whose last task was forgotten, ``story`` and the plugin notifications that
are not transitions.

Everything is a plain function over ``SchedulerState``; the engine's fast path is
written out three times (``transition``, ``_run_chain`` and the
``TaskFinished`` handler in ``stimuli.py``) because a call per transition is a
measurable part of the cost per task. Keep the copies in step.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from localsched.errors import InvalidTransition
from localsched.scheduler.placement import decide_worker_rootish_queuing_enabled
from localsched.scheduler.tasks import (
    EMPTY_SET,
    Key,
    LinkSet,
    TaskGroup,
    TaskPrefix,
    TaskState,
    key_group_name,
    key_split,
)
from localsched.scheduler.transition_log import (
    Transition,
    as_transition,
    recommended_keys,
)
from localsched.scheduler.transitions import (
    TRANSITIONS_FROM,
    TRANSITIONS_TABLE,
    Recs,
    TransitionFunc,
    add_to_processing,
)

if TYPE_CHECKING:
    from localsched.scheduler.state import SchedulerState


def transition(
    state: SchedulerState, key: Key, finish: str, stimulus_id: str, **kwargs: Any
) -> Recs:
    """Move one key to ``finish``; return the follow-up recommendations."""
    ts = state.tasks.get(key)
    if ts is None:
        return {}
    start = ts.state
    if start == finish:
        return {}
    state.transition_counter += 1
    if state.transition_counter_max and (
        state.transition_counter > state.transition_counter_max
    ):
        raise RuntimeError(
            f"transition_counter_max={state.transition_counter_max} exceeded"
        )
    func = TRANSITIONS_TABLE.get((start, finish))
    if func is None or state.transition_hook is not None:
        return _transition_observed(state, ts, start, finish, func, stimulus_id, kwargs)
    recs = (
        func(state, ts, stimulus_id, **kwargs)
        if kwargs
        else func(state, ts, stimulus_id)
    )
    record_transition(state, ts, start, recs, stimulus_id)
    return recs


def record_transition(
    state: SchedulerState, ts: TaskState, start: str, recs: Recs, stimulus_id: str
) -> None:
    """The engine's bookkeeping once a transition function has run.

    Counts the move in the group and prefix, logs it, and drops a group whose
    last task was forgotten. ``run_transitions`` inlines the same steps.
    """
    actual = ts.state
    if actual != start:
        states = ts.group.states
        states[start] -= 1
        states[actual] += 1
    # TransitionLog.record, inlined (one flat tuple of atoms, built directly
    # for no or one follow-up, as in ``run_transitions``). One append per
    # call: a method call, without binding ``append`` to an object first.
    log = state.transition_log
    if not recs:
        log.append((ts.key, start, actual, stimulus_id, state.now))
    elif len(recs) == 1:
        # The one item, read after the loop (see run_transitions).
        for next_key, next_finish in recs.items():  # noqa: B007
            pass
        log.append(
            (ts.key, start, actual, stimulus_id, state.now, next_key, next_finish)
        )
    else:
        log.append(
            (ts.key, start, actual, stimulus_id, state.now, *recs, *recs.values())
        )
    if actual == "forgotten":
        forget_group_member(state, ts)


def _transition_observed(
    state: SchedulerState,
    ts: TaskState,
    start: str,
    finish: str,
    func: TransitionFunc | None,
    stimulus_id: str,
    kwargs: dict[str, Any],
) -> Recs:
    """``transition`` with a plugin hook or through released (slow path)."""
    key = ts.key
    hook = state.transition_hook
    dependents: LinkSet[TaskState] = EMPTY_SET
    dependencies: LinkSet[TaskState] = EMPTY_SET
    if hook is not None and (func is None or finish == "forgotten"):
        # Plugins may read a forgotten task's links, as in dask.
        dependents = set(ts.dependents)
        dependencies = set(ts.dependencies)
    if func is not None:
        recs = func(state, ts, stimulus_id, **kwargs)
        count_state_change(ts, start)
    elif "released" not in (start, finish):
        # No direct edge: go through released, then where that step points.
        first = transition(state, key, "released", stimulus_id)
        target = first.get(key, finish)
        second = TRANSITIONS_TABLE.get(("released", target))
        if second is None or ts.state != "released":
            return first
        recs = dict(first)
        recs.update(second(state, ts, stimulus_id, **kwargs))
        start = "released"
        count_state_change(ts, start)
    else:
        history: list[tuple[Any, ...]] = [*story(state, key)]
        raise InvalidTransition(key, start, finish, history)
    actual = ts.state
    state.transition_log.record(key, start, actual, recs, stimulus_id, state.now)
    if hook is not None:
        if actual == "forgotten":
            ts.dependents = dependents
            ts.dependencies = dependencies
            state.tasks[key] = ts
        hook(key, start, actual, stimulus_id, kwargs)
        if actual == "forgotten":
            del state.tasks[key]
            ts.dependents = EMPTY_SET
            ts.dependencies = EMPTY_SET
    if actual == "forgotten":
        forget_group_member(state, ts)
    return recs


def count_state_change(ts: TaskState, start: str) -> None:
    """Count a move from ``start`` to the task's state in its group."""
    finish = ts.state
    if finish != start:
        group_states = ts.group.states
        group_states[start] -= 1
        group_states[finish] += 1


def run_transitions(
    state: SchedulerState, recommendations: Recs, stimulus_id: str
) -> None:
    """Run recommendations to a fixed point (LIFO, as dask's ``popitem``).

    Empties ``recommendations``: every caller builds it for this call (a
    transition's result or its own), and a copy of a million-key dict is a
    measurable part of releasing a million tasks.
    """
    # Bound once for every transition of the run: the log is a Python deque
    # subclass, whose method compiled code looks up by name at each call.
    log_append = state.transition_log.append
    # Boxed once: the handlers set the time, transitions only read it.
    now: object = state.now
    # Transition functions run no plugin code: without a hook now, none
    # appears during this loop (a hook may add one: then check each time).
    observed = bool(state.transition_hook is not None or state.transition_counter_max)
    while recommendations:
        key, finish = recommendations.popitem()
        observed = _run_chain(
            state, key, finish, recommendations, stimulus_id, observed, log_append, now
        )


def submit_lone_tasks(
    state: SchedulerState, new: list[TaskState], stimulus_id: str
) -> None:
    """Send new tasks without dependencies or dependents to ``waiting`` and on.

    ``new`` is in reverse run order (the last runs first): exactly what
    ``run_transitions`` does with ``{ts.key: "waiting" for ts in new}``, without
    building, copying and popping that dict (a map's submission). Each task
    takes ``released -> waiting`` as ``_transition_released_waiting``'s lone
    branch does, then its follow-up chain as ``run_transitions`` would run it.
    """
    if state.transition_hook is not None or state.transition_counter_max:
        # Plugins see each transition through the general path.
        run_transitions(state, {ts.key: "waiting" for ts in new}, stimulus_id)
        return
    log_append = state.transition_log.append
    now: object = state.now
    for ts in reversed(new):
        key = ts.key
        # released -> waiting, lone: nothing to wait on, no one waiting.
        state.transition_counter += 1
        ts.state = "waiting"
        ts.waiters = EMPTY_SET
        states = ts.group.states
        states["released"] -= 1
        states["waiting"] += 1
        log_append((key, "released", "waiting", stimulus_id, now, key, "processing"))
        _run_lone_chain(state, ts, "processing", stimulus_id, log_append, now)


def run_lone_transitions(
    state: SchedulerState, tasks: list[TaskState], finish: str, stimulus_id: str
) -> None:
    """``run_transitions(state, {ts.key: finish for ts in tasks}, stimulus_id)``
    for tasks none of which links to another (no dependencies, no dependents).

    No transition of such a task recommends another's, so each runs with its
    chain in the dict's pop order (the last first) without building the dict
    and looking each task up again (a client releasing a map's results).
    Empties ``tasks`` as it goes: a forgotten task is freed at once, not
    when the list is (its memory is then reused by the next allocations).
    """
    if state.transition_hook is not None or state.transition_counter_max:
        recommendations = {ts.key: finish for ts in tasks}
        tasks.clear()
        run_transitions(state, recommendations, stimulus_id)
        return
    log_append = state.transition_log.append
    now: object = state.now
    while tasks:
        _run_lone_chain(state, tasks.pop(), finish, stimulus_id, log_append, now)


def _run_lone_chain(
    state: SchedulerState,
    ts: TaskState,
    finish: str,
    stimulus_id: str,
    log_append: Callable[[tuple[Any, ...]], None],
    now: object,
) -> None:
    """``ts`` to ``finish`` with its chain, then whatever that recommended, as
    ``run_transitions`` would (no hook or counter limit: checked by the
    callers)."""
    recommendations: Recs = {}
    _run_chain(
        state, ts.key, finish, recommendations, stimulus_id, False, log_append, now, ts
    )
    if recommendations:
        run_transitions(state, recommendations, stimulus_id)


def _run_chain(
    state: SchedulerState,
    key: Key,
    finish: str,
    recommendations: Recs,
    stimulus_id: str,
    observed: bool,
    log_append: Callable[[tuple[Any, ...]], None],
    now: object,
    hint: TaskState | None = None,
) -> bool:
    """Move ``key`` to ``finish`` and follow its chain of single follow-ups.

    A transition's single follow-up for a key not already recommended runs next
    without a trip through the dict, exactly as ``update()`` then ``popitem()``
    would order it; other follow-ups go into ``recommendations``. Returns
    whether a transition hook or counter limit is now set (``observed``).
    ``hint``: the task of ``key`` if the caller has it (one lookup fewer in a
    table of every task).
    """
    tasks = state.tasks
    table = TRANSITIONS_FROM
    # ``ts`` is typed TaskState, never None: compiled, each read of an
    # optional variable's attribute would check it again.
    ts: TaskState
    while True:
        if hint is not None:
            ts = hint
            hint = None
        else:
            found = tasks.get(key)
            if found is None:
                return observed
            ts = found
        start = ts.state
        if start == finish:
            return observed
        func = table[start].get(finish)
        if func is None or observed:
            new = transition(state, key, finish, stimulus_id)
            observed = bool(
                state.transition_hook is not None or state.transition_counter_max
            )
            if not new:
                return observed
            if len(new) == 1:
                # The one item, read after the loop (see below).
                for key, finish in new.items():  # noqa: B007
                    pass
                if key not in recommendations:
                    if key is ts.key and ts.state != "forgotten":
                        hint = ts  # its own follow-up: no lookup
                    continue
            recommendations.update(new)
            return observed
        # ``transition``'s fast path and ``record_transition``, inlined: a
        # call per transition is a measurable part of the engine's cost.
        # Keep the three in step.
        state.transition_counter += 1
        new = func(state, ts, stimulus_id)
        actual = ts.state
        if actual != start:
            states = ts.group.states
            states[start] -= 1
            states[actual] += 1
            if actual == "forgotten":
                group = ts.group
                if group.states["forgotten"] == group.n_tasks:
                    forget_group_member(state, ts)
        # The log entry is a flat tuple (``TransitionLog``), built directly
        # for no or one follow-up (the usual cases): star-unpacking goes
        # through a list.
        if not new:
            log_append((key, start, actual, stimulus_id, now))
            return observed
        if len(new) == 1:
            done = key
            # The one item. A loop, not ``((key, finish),) = new.items()``:
            # compiled, a loop walks the dict in place, while unpacking
            # builds an items view and an iterator per transition.
            for key, finish in new.items():  # noqa: B007 (read after it)
                pass
            log_append((done, start, actual, stimulus_id, now, key, finish))
            if key not in recommendations:
                if key is ts.key and ts.state != "forgotten":
                    hint = ts  # its own follow-up: no lookup
                continue
            recommendations[key] = finish
            return observed
        log_append((key, start, actual, stimulus_id, now, *new, *new.values()))
        recommendations.update(new)
        return observed


def queue_slots_maybe_opened(state: SchedulerState, stimulus_id: str) -> None:
    """Send queued root-ish tasks into the worker slots that opened."""
    saturation = state.worker_saturation
    if math.isinf(saturation):
        # Queuing disabled: every running worker has room (never here, as
        # nothing is queued then, unless the setting changed).
        slots = sys.maxsize if state.idle_task_count else 0
    else:
        # ``task_slots_available`` summed, inlined (this runs per event).
        slots = 0
        extra = state.extra_slots_per_thread
        for ws in state.idle_task_count:
            nthreads = ws.nthreads
            base = math.ceil(saturation * nthreads)
            if base < 1:
                base = 1
            running = len(ws.processing)
            if ws.long_running:
                running -= len(ws.long_running)
            slots += base + extra * nthreads - running
    if slots <= 0:
        return
    if slots == 1:
        # The common case: one task finished, one slot opened. What
        # ``run_transitions`` would do with this one recommendation.
        if state.transition_hook is not None or state.transition_counter_max:
            recs = transition(state, state.queued.peek().key, "processing", stimulus_id)
        else:
            # queued->processing through ``transition``'s fast path, inlined:
            # a worker has a free slot (``idle_task_count`` is not empty), so
            # the placement cannot fail, and the top task leaves the queue at
            # once (``pop``: no tombstone left for the next peek to skip).
            target = decide_worker_rootish_queuing_enabled(state)
            assert target is not None
            ts = state.queued.pop()
            state.transition_counter += 1
            recs = add_to_processing(state, ts, target, stimulus_id)
            record_transition(state, ts, "queued", recs, stimulus_id)
        if recs:
            run_transitions(state, recs, stimulus_id)
        return
    recs = {ts.key: "processing" for ts in reversed(state.queued.peekn(slots))}
    run_transitions(state, recs, stimulus_id)


# -- creating and forgetting tasks ------------------------------------------------


def new_task(state: SchedulerState, key: Key, spec: object) -> TaskState:
    """Create a task in ``released`` and count it in its group and prefix."""
    group_name = key_group_name(key)
    tg = state.task_groups.get(group_name)
    if tg is None:
        prefix_name = key_split(key)
        tp = state.task_prefixes.get(prefix_name)
        if tp is None:
            tp = state.task_prefixes[prefix_name] = TaskPrefix(
                prefix_name, state.default_task_durations.get(prefix_name, -1.0)
            )
        tg = state.task_groups[group_name] = TaskGroup(group_name, tp)
        tp.groups[tg] = None
        if state.created_groups is not None:
            state.created_groups.append(tg)
    serial = state._next_task_serial
    state._next_task_serial = serial + 1
    ts = TaskState(key, spec, tg, serial)
    tg.n_tasks += 1
    tg.states["released"] += 1
    state.tasks[key] = ts
    return ts


def forget_group_member(state: SchedulerState, ts: TaskState) -> None:
    """Drop ``ts``'s group once its last task is forgotten."""
    tg = ts.group
    if tg.states["forgotten"] == tg.n_tasks and state.task_groups.get(tg.name) is tg:
        del state.task_groups[tg.name]
        del tg.prefix.groups[tg]
        for other in tg.dependents:
            other.dependencies.discard(tg)
        for other in tg.dependencies:
            other.dependents.discard(tg)
        tg.dependents = set()
        tg.dependencies = set()


# -- observability ------------------------------------------------------------------


def story(state: SchedulerState, *keys_or_stimuli: Hashable) -> list[Transition]:
    """Every logged transition that touches one of the keys or stimulus ids."""
    wanted = set(keys_or_stimuli)
    return [
        as_transition(entry)
        for entry in state.transition_log.entries()
        if entry[0] in wanted
        or entry[3] in wanted
        or any(key in wanted for key in recommended_keys(entry))
    ]


def notify(state: SchedulerState, hook: str, **kwargs: Any) -> None:
    """Report a lifecycle event other than a transition to the plugins."""
    if state.hooks is not None:
        state.hooks.notify(hook, **kwargs)
