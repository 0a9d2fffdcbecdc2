"""The transition functions of the scheduler core and their table.

Each ``_transition_<start>_<finish>`` method moves one task between two states,
updates every structure that depends on that state, appends commands to
``self._commands`` and returns recommendations ``{key: next state}``. The engine in
``state.py`` runs them to a fixed point. Semantics follow dask.distributed's
scheduler (see ``shared/scheduler-notes.md`` §2.3); where localsched differs, a
comment says why.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from localsched.scheduler.commands import (
    ComputeTask,
    FreeData,
    FreeKeys,
    KeyCancelled,
    KeyErred,
    KeyInMemory,
    KeyLost,
    KeyRetried,
)
from localsched.scheduler.tasks import (
    EMPTY_SET,
    Key,
    TaskState,
    WorkerState,
    with_link,
    without_link,
)

if TYPE_CHECKING:
    from localsched.scheduler.state import SchedulerState

Recs = dict[Key, str]


class TransitionsMixin:
    """Transition functions; mixed into ``SchedulerState``."""

    # -- released -> waiting ----------------------------------------------------

    def _transition_released_waiting(
        self: SchedulerState, ts: TaskState, stimulus_id: str
    ) -> Recs:
        if ts.has_lost_dependencies:
            return {ts.key: "forgotten"}
        recs: Recs = {}
        for dts in ts.dependencies:
            if dts.exception_blame is not None:
                # A dependency already failed: fail without running.
                ts.exception_blame = dts.exception_blame
                return {ts.key: "erred"}
        ts.state = "waiting"
        waiting_on = ts.waiting_on
        if not waiting_on and ts.dependencies:
            waiting_on = ts.waiting_on = set()  # may be the shared EMPTY_SET
        for dts in ts.dependencies:
            if not dts.who_has and not (dts.state == "memory" and dts.shared):
                waiting_on.add(dts)
            if dts.state == "released":
                recs[dts.key] = "waiting"
            else:
                dts.waiters = with_link(dts.waiters, ts)
        # A loop, not a comprehension: most tasks have zero or one dependent.
        waiters = EMPTY_SET
        for dts in ts.dependents:
            if dts.state == "waiting":
                if waiters:
                    waiters = with_link(waiters, dts)
                else:
                    # with_link(EMPTY_SET, dts), inlined: the usual single waiter.
                    waiters = dts.alone
                    if waiters is None:
                        waiters = dts.alone = frozenset((dts,))
        ts.waiters = waiters
        if not waiting_on:
            recs[ts.key] = "processing"
        return recs

    # -- placement ----------------------------------------------------------------

    def _transition_waiting_processing(
        self: SchedulerState, ts: TaskState, stimulus_id: str
    ) -> Recs:
        if self.is_rootish(ts):
            if self.queuing_enabled:
                ws = self.decide_worker_rootish_queuing_enabled()
                if ws is None:
                    return {ts.key: "queued"}
            else:
                ws = self.decide_worker_rootish_queuing_disabled(ts)
                if ws is None:
                    return {ts.key: "no-worker"}
        else:
            ws = self.decide_worker_non_rootish(ts)
            if ws is None:
                return {ts.key: "no-worker"}
        return self._add_to_processing(ts, ws, stimulus_id)

    def _transition_waiting_queued(
        self: SchedulerState, ts: TaskState, stimulus_id: str
    ) -> Recs:
        ts.state = "queued"
        self.queued.add(ts)
        return {}

    def _transition_waiting_no_worker(
        self: SchedulerState, ts: TaskState, stimulus_id: str
    ) -> Recs:
        ts.state = "no-worker"
        self.unrunnable[ts] = self.now
        return {}

    def _transition_queued_processing(
        self: SchedulerState, ts: TaskState, stimulus_id: str
    ) -> Recs:
        ws = self.decide_worker_rootish_queuing_enabled()
        if ws is None:
            return {}
        self.queued.discard(ts)
        return self._add_to_processing(ts, ws, stimulus_id)

    def _transition_no_worker_processing(
        self: SchedulerState, ts: TaskState, stimulus_id: str
    ) -> Recs:
        ws = self.decide_worker_non_rootish(ts)
        if ws is None:
            return {}
        # Leave unrunnable only once placed: a task refused for oversized inputs
        # is still no-worker when its no-worker->erred runs.
        recs = self._add_to_processing(ts, ws, stimulus_id)
        if ts.state == "processing":
            del self.unrunnable[ts]
        return recs

    def _add_to_processing(
        self: SchedulerState, ts: TaskState, ws: WorkerState, stimulus_id: str
    ) -> Recs:
        prefix = ts.prefix
        duration = prefix.duration_average
        if duration < 0:
            duration = self._get_prefix_duration(prefix)
            unknown = self._unknown_durations.get(prefix)
            if unknown is None:
                unknown = self._unknown_durations[prefix] = set()
            unknown.add(ts)
        dependencies = ts.dependencies
        if dependencies:
            cost = duration + self.get_comm_cost(ts, ws)
            if ws.memory_limit and self._deps_nbytes(ts) > ws.memory_limit:
                return self._refuse_oversized(ts, ws)
        else:
            cost = duration + 0.0
        ws.processing[ts] = cost
        ws.occupancy += cost
        self.total_occupancy += cost
        counts = ws.task_prefix_count
        counts[prefix] = counts.get(prefix, 0) + 1
        ts.processing_on = ws
        ts.state = "processing"
        resource_restrictions = ts.resource_restrictions
        if resource_restrictions:
            used = ws.used_resources
            for name, amount in resource_restrictions.items():
                used[name] = used.get(name, 0.0) + amount
        self.check_idle_saturated(ws)
        self.n_tasks += 1
        run_id = self._run_id = self._run_id + 1
        ts.run_id = run_id
        if self._stealing_enabled:
            self._steal_candidates_add(ts, ws)
        self._commands.append(
            ComputeTask(
                stimulus_id=stimulus_id,
                worker=ws.address,
                key=ts.key,
                run_spec=ts.run_spec,
                priority=ts.priority,
                dependencies=(
                    tuple([dts.key for dts in dependencies]) if dependencies else ()
                ),
                resource_restrictions=resource_restrictions,
                annotations=ts.annotations,
                run_id=run_id,
            )
        )
        return {}

    def _refuse_oversized(self: SchedulerState, ts: TaskState, ws: WorkerState) -> Recs:
        """dask's safety valve: fail a task whose inputs cannot fit the worker."""
        nbytes = self._deps_nbytes(ts)
        ts.exception = MemoryError(
            f"Task {ts.key!r} has {nbytes} bytes of dependencies, more than the "
            f"{ws.memory_limit} bytes of memory of worker {ws.address}"
        )
        ts.exception_text = str(ts.exception)
        ts.exception_blame = ts
        return {ts.key: "erred"}

    def _exit_processing_common(
        self: SchedulerState, ts: TaskState
    ) -> WorkerState | None:
        ws = ts.processing_on
        assert ws is not None
        ts.processing_on = None
        processing = ws.processing
        cost = processing.pop(ts)
        # Guards on emptiness before membership tests: hashing a task or a
        # worker is a Python-level call, and these are usually empty.
        long_running = ws.long_running
        if long_running and ts in long_running:
            long_running.discard(ts)
        else:
            ws.occupancy -= cost
            self.total_occupancy -= cost
            counts = ws.task_prefix_count
            prefix = ts.prefix
            n = counts[prefix] - 1
            if n:
                counts[prefix] = n
            else:
                del counts[prefix]
        if not processing:
            # Drop float residue so an idle worker reads exactly zero.
            self.total_occupancy -= ws.occupancy
            ws.occupancy = 0.0
        if ts.resource_restrictions:
            used = ws.used_resources
            for name, amount in ts.resource_restrictions.items():
                used[name] -= amount
        if self._unknown_durations:
            unknown = self._unknown_durations.get(ts.prefix)
            if unknown is not None:
                unknown.discard(ts)
        if self._stealing_enabled and (self.stealable or self.in_flight):
            self._steal_candidates_discard(ts, ws)
        if ws.status == "closed":
            return None
        self.check_idle_saturated(ws)
        return ws

    # -- finishing ----------------------------------------------------------------

    def _transition_processing_memory(
        self: SchedulerState,
        ts: TaskState,
        stimulus_id: str,
        *,
        worker: str,
        nbytes: int = -1,
        type: str | None = None,
        startstops: tuple[tuple[str, float, float], ...] = (),
        shared: bool = False,
        **kwargs: Any,
    ) -> Recs:
        ws = self.workers.get(worker)
        if ws is None or ts.processing_on is not ws:
            # A stale answer from a worker we no longer trust with this task.
            return {ts.key: "released"}
        return self._processing_to_memory(
            ts, ws, nbytes, type, startstops, shared, stimulus_id
        )

    def _processing_to_memory(
        self: SchedulerState,
        ts: TaskState,
        ws: WorkerState,
        nbytes: int,
        typename: str | None,
        startstops: tuple[tuple[str, float, float], ...],
        shared: bool,
        stimulus_id: str,
    ) -> Recs:
        """processing -> memory on ``ws``, which is ``ts.processing_on``.

        Positional, so that ``TaskFinished``'s fast path in ``stimuli.py`` calls it
        without packing keyword arguments (this runs once per task).
        """
        group = ts.group
        for action, start, stop in startstops:
            if action == "compute":
                # TaskGroup.add_duration and TaskPrefix.add_duration, inlined
                # for the one action every result reports.
                duration = stop - start
                group.duration += duration
                if not group.start or start < group.start:
                    group.start = start
                if stop > group.stop:
                    group.stop = stop
                prefix = group.prefix
                all_durations = prefix.all_durations
                all_durations["compute"] = all_durations.get("compute", 0.0) + duration
                old = prefix.duration_average
                prefix.duration_average = (
                    duration if old < 0 else 0.5 * duration + 0.5 * old
                )
            else:
                group.add_duration(action, start, stop)
        self._exit_processing_common(ts)
        if startstops:
            if self.fast_task_slots:
                self._update_extra_slots(ts.prefix)
            if self._unknown_durations and ts.prefix in self._unknown_durations:
                self._realign_unknown(ts.prefix)
        recs: Recs = {}
        self._add_to_memory(ts, ws, recs, nbytes, typename, shared, stimulus_id)
        return recs

    def _add_to_memory(
        self: SchedulerState,
        ts: TaskState,
        ws: WorkerState | None,
        recs: Recs,
        nbytes: int,
        typename: str | None,
        shared: bool,
        stimulus_id: str,
    ) -> None:
        ts.shared = shared
        if ws is not None and not ts.who_has:
            # _set_nbytes then add_replica, inlined for the usual first result.
            if nbytes >= 0:
                diff = nbytes - ts.nbytes if ts.nbytes >= 0 else nbytes
                ts.group.nbytes_total += diff
                ts.prefix.nbytes_total += diff
                ts.nbytes = nbytes
            ts.who_has = ws.alone
            ws.has_what[ts] = None
            ws.nbytes += ts.get_nbytes()
        else:
            if nbytes >= 0:
                self._set_nbytes(ts, nbytes)
            if ws is not None:
                self.add_replica(ts, ws)
        dependents = ts.dependents
        if dependents:
            if len(dependents) > 1:
                ordered = sorted(dependents, key=_priority_of, reverse=True)
            else:
                ordered = dependents  # type: ignore[assignment]
            for dts in ordered:
                waiting_on = dts.waiting_on
                if waiting_on and ts in waiting_on:
                    waiting_on.discard(ts)
                    if not waiting_on:
                        recs[dts.key] = "processing"
        for dts in ts.dependencies:
            waiters = dts.waiters
            if waiters:
                waiters = dts.waiters = without_link(waiters, ts)
            if not waiters and not dts.who_wants:
                recs[dts.key] = "released"
        ts.state = "memory"
        ts.type = typename
        if typename is not None:
            ts.group.types.add(typename)
            ts.prefix.types.add(typename)
        who_wants = ts.who_wants
        if not ts.waiters and not who_wants:
            recs[ts.key] = "released"
        else:
            commands = self._commands
            for cs in who_wants:
                commands.append(
                    KeyInMemory(
                        stimulus_id=stimulus_id,
                        client=cs.client_key,
                        key=ts.key,
                        type=typename,
                    )
                )
        faf = self.clients.get("fire-and-forget")
        if faf is not None and faf.wants_what and ts in faf.wants_what:
            self._client_releases_keys((ts.key,), faf, recs)

    def _transition_waiting_memory(
        self: SchedulerState, ts: TaskState, stimulus_id: str, **kwargs: Any
    ) -> Recs:
        # A benign race: a result arrived for a task we had sent back to waiting.
        # The data is dropped; the task will run again where we place it.
        return {}

    # -- errors -------------------------------------------------------------------

    def _transition_processing_erred(
        self: SchedulerState,
        ts: TaskState,
        stimulus_id: str,
        *,
        worker: str | None = None,
        cause: Key | None = None,
        exception: object = None,
        traceback: object = None,
        exception_text: str = "",
        traceback_text: str = "",
        startstops: tuple[tuple[str, float, float], ...] = (),
        **kwargs: Any,
    ) -> Recs:
        for action, start, stop in startstops:
            ts.group.add_duration(action, start, stop)
        self._exit_processing_common(ts)
        return self._propagate_erred(
            ts,
            stimulus_id,
            worker=worker,
            cause=cause,
            exception=exception,
            traceback=traceback,
            exception_text=exception_text,
            traceback_text=traceback_text,
        )

    def _transition_no_worker_erred(
        self: SchedulerState, ts: TaskState, stimulus_id: str, **kwargs: Any
    ) -> Recs:
        del self.unrunnable[ts]
        return self._propagate_erred(ts, stimulus_id, **kwargs)

    def _transition_queued_erred(
        self: SchedulerState, ts: TaskState, stimulus_id: str, **kwargs: Any
    ) -> Recs:
        self.queued.discard(ts)
        return self._propagate_erred(ts, stimulus_id, **kwargs)

    def _propagate_erred(
        self: SchedulerState,
        ts: TaskState,
        stimulus_id: str,
        *,
        worker: str | None = None,
        cause: Key | None = None,
        exception: object = None,
        traceback: object = None,
        exception_text: str = "",
        traceback_text: str = "",
    ) -> Recs:
        ts.state = "erred"
        if worker is not None:
            if ts.erred_on is None:
                ts.erred_on = set()
            ts.erred_on.add(worker)
        if exception is not None:
            ts.exception = exception
            ts.exception_text = exception_text or ts.exception_text
        if traceback is not None:
            ts.traceback = traceback
        if traceback_text:
            ts.traceback_text = traceback_text
        if cause is not None:
            failing = self.tasks[cause]
            ts.exception_blame = failing
        else:
            failing = ts.exception_blame or ts
            ts.exception_blame = failing
        self.erred_tasks.appendleft(
            (ts.key, self.now, tuple(ts.erred_on or ()), ts.exception_text)
        )
        recs: Recs = {}
        for dts in ts.waiters:
            dts.exception_blame = failing
            recs[dts.key] = "erred"
        for dts in ts.dependencies:
            waiters = dts.waiters
            if waiters:
                waiters = dts.waiters = without_link(waiters, ts)
            if not waiters and not dts.who_wants:
                recs[dts.key] = "released"
        ts.waiters = EMPTY_SET
        self._report_erred(ts, failing, stimulus_id)
        faf = self.clients.get("fire-and-forget")
        if faf is not None and ts in faf.wants_what:
            self._client_releases_keys((ts.key,), faf, recs)
        return recs

    def _report_erred(
        self: SchedulerState, ts: TaskState, failing: TaskState, stimulus_id: str
    ) -> None:
        for cs in ts.who_wants:
            self._commands.append(key_erred(ts, failing, cs.client_key, stimulus_id))

    def _transition_released_erred(
        self: SchedulerState, ts: TaskState, stimulus_id: str, **kwargs: Any
    ) -> Recs:
        failing = ts.exception_blame
        if failing is None:
            # Erred from released without a cause: the task itself is to blame
            # (exception passed in, e.g. KilledWorker or a refused placement).
            failing = ts
            ts.exception_blame = ts
            if kwargs.get("exception") is not None:
                ts.exception = kwargs["exception"]
                ts.exception_text = kwargs.get("exception_text", "")
        recs: Recs = {}
        for dts in ts.dependents:
            if not dts.who_has and dts.state not in ("erred", "memory"):
                dts.exception_blame = failing
                recs[dts.key] = "erred"
        ts.state = "erred"
        self._report_erred(ts, failing, stimulus_id)
        return recs

    def _transition_erred_released(
        self: SchedulerState, ts: TaskState, stimulus_id: str
    ) -> Recs:
        ts.exception = None
        ts.exception_blame = None
        ts.traceback = None
        ts.exception_text = ts.traceback_text = ""
        recs: Recs = {}
        for dts in ts.dependents:
            if dts.state == "erred":
                recs[dts.key] = "waiting"
        for address in ts.erred_on or ():
            ws = self.workers.get(address)
            if ws is not None and ws.status != "closed":  # not one being removed
                self._commands.append(
                    FreeKeys(stimulus_id=stimulus_id, worker=address, keys=(ts.key,))
                )
        ts.erred_on = None
        for cs in ts.who_wants:
            self._commands.append(
                KeyRetried(stimulus_id=stimulus_id, client=cs.client_key, key=ts.key)
            )
        ts.state = "released"
        return recs

    # -- releasing ----------------------------------------------------------------

    def _transition_waiting_released(
        self: SchedulerState, ts: TaskState, stimulus_id: str
    ) -> Recs:
        recs: Recs = {}
        for dts in ts.dependencies:
            waiters = dts.waiters
            if ts in waiters:
                waiters = dts.waiters = without_link(waiters, ts)
                if not waiters and not dts.who_wants:
                    recs[dts.key] = "released"
        ts.waiting_on = EMPTY_SET
        ts.state = "released"
        if ts.has_lost_dependencies:
            recs[ts.key] = "forgotten"
        elif ts.exception_blame is None and (ts.who_wants or ts.waiters):
            recs[ts.key] = "waiting"
        else:
            ts.waiters = EMPTY_SET
        return recs

    def _transition_queued_released(
        self: SchedulerState, ts: TaskState, stimulus_id: str
    ) -> Recs:
        self.queued.discard(ts)
        recs: Recs = {}
        self._propagate_released(ts, recs)
        return recs

    def _transition_no_worker_released(
        self: SchedulerState, ts: TaskState, stimulus_id: str
    ) -> Recs:
        del self.unrunnable[ts]
        recs: Recs = {}
        self._propagate_released(ts, recs)
        return recs

    def _transition_processing_released(
        self: SchedulerState, ts: TaskState, stimulus_id: str
    ) -> Recs:
        ws = self._exit_processing_common(ts)
        if ws is not None:
            self._commands.append(
                FreeKeys(stimulus_id=stimulus_id, worker=ws.address, keys=(ts.key,))
            )
        recs: Recs = {}
        self._propagate_released(ts, recs)
        return recs

    def _propagate_released(self: SchedulerState, ts: TaskState, recs: Recs) -> None:
        ts.state = "released"
        ts.waiting_on = EMPTY_SET
        key = ts.key
        if ts.has_lost_dependencies:
            recs[key] = "forgotten"
        elif ts.waiters or ts.who_wants:
            recs[key] = "waiting"
        if recs.get(key) != "waiting":
            for dts in ts.dependencies:
                if dts.state != "released":
                    waiters = dts.waiters
                    if waiters:
                        waiters = dts.waiters = without_link(waiters, ts)
                    if not waiters and not dts.who_wants:
                        recs[dts.key] = "released"
            ts.waiters = EMPTY_SET

    def _transition_memory_released(
        self: SchedulerState, ts: TaskState, stimulus_id: str
    ) -> Recs:
        key = ts.key
        who_has = ts.who_has
        if who_has:
            commands = self._commands
            nbytes = ts.get_nbytes()
            for ws in who_has:
                commands.append(
                    FreeKeys(stimulus_id=stimulus_id, worker=ws.address, keys=(key,))
                )
                # remove_all_replicas, inlined
                del ws.has_what[ts]
                ws.nbytes -= nbytes
            ts.who_has = EMPTY_SET
        if ts.shared:
            self._free_data(ts, stimulus_id)
        ts.state = "released"
        for cs in ts.who_wants:
            self._commands.append(
                KeyLost(stimulus_id=stimulus_id, client=cs.client_key, key=key)
            )
        recs: Recs = {}
        if ts.run_spec is None or ts.has_lost_dependencies:
            recs[key] = "forgotten"
        elif ts.who_wants or ts.waiters:
            # released->waiting errs at once if a dependency erred. dask keeps the
            # key released then, and a future that heard "lost" waits forever.
            recs[key] = "waiting"
        for dts in ts.waiters:
            if dts.state in ("no-worker", "processing", "queued"):
                recs[dts.key] = "waiting"
            elif dts.state == "waiting":
                if not dts.waiting_on:
                    dts.waiting_on = set()  # may be the shared EMPTY_SET
                dts.waiting_on.add(ts)
        return recs

    def _free_data(self: SchedulerState, ts: TaskState, stimulus_id: str) -> None:
        if ts.shared:
            ts.shared = False
            self._commands.append(FreeData(stimulus_id=stimulus_id, key=ts.key))

    # -- forgetting ---------------------------------------------------------------

    def _transition_released_forgotten(
        self: SchedulerState, ts: TaskState, stimulus_id: str
    ) -> Recs:
        recs: Recs = {}
        self._propagate_forgotten(ts, recs, stimulus_id)
        self._remove_key(ts, stimulus_id)
        return recs

    def _transition_memory_forgotten(
        self: SchedulerState, ts: TaskState, stimulus_id: str
    ) -> Recs:
        recs: Recs = {}
        self._propagate_forgotten(ts, recs, stimulus_id)
        self._remove_key(ts, stimulus_id)
        return recs

    def _propagate_forgotten(
        self: SchedulerState, ts: TaskState, recs: Recs, stimulus_id: str
    ) -> None:
        ts.state = "forgotten"
        for dts in ts.dependents:
            dts.has_lost_dependencies = True
            dts.dependencies = without_link(dts.dependencies, ts)
            if dts.waiting_on:
                dts.waiting_on.discard(ts)
            if dts.state not in ("memory", "erred"):
                recs[dts.key] = "forgotten"
        ts.dependents = EMPTY_SET
        ts.waiters = EMPTY_SET
        for dts in ts.dependencies:
            dts.dependents = without_link(dts.dependents, ts)
            if dts.waiters:
                dts.waiters = without_link(dts.waiters, ts)
            if not dts.dependents and not dts.who_wants:
                recs[dts.key] = "forgotten"
        ts.dependencies = EMPTY_SET
        ts.waiting_on = EMPTY_SET
        who_has = ts.who_has
        if who_has:
            nbytes = ts.get_nbytes()
            for ws in who_has:
                if ws.status != "closed":
                    self._commands.append(
                        FreeKeys(
                            stimulus_id=stimulus_id, worker=ws.address, keys=(ts.key,)
                        )
                    )
                # remove_all_replicas, inlined (this runs once per task)
                del ws.has_what[ts]
                ws.nbytes -= nbytes
            ts.who_has = EMPTY_SET
        if ts.shared:
            self._free_data(ts, stimulus_id)

    def _remove_key(self: SchedulerState, ts: TaskState, stimulus_id: str) -> None:
        del self.tasks[ts.key]
        if self.unrunnable:
            self.unrunnable.pop(ts, None)
        for cs in ts.who_wants:
            cs.wants_what.discard(ts)
            self._commands.append(
                KeyCancelled(
                    stimulus_id=stimulus_id,
                    client=cs.client_key,
                    key=ts.key,
                    reason="forgotten",
                )
            )
        ts.who_wants = EMPTY_SET
        # Nothing holds its ``alone`` any more: break the reference cycle, so
        # the record is freed now rather than by a full collection.
        ts.alone = None
        ts.processing_on = None
        ts.exception_blame = ts.exception = ts.traceback = None
        if self.task_metadata:
            self.task_metadata.pop(ts.key, None)


# C-level key function: much cheaper than a Python one per sorted task.
_priority_of = attrgetter("priority")


def key_erred(
    ts: TaskState, failing: TaskState, client: str, stimulus_id: str
) -> KeyErred:
    """Tell ``client`` that ``ts`` erred, with the error of the task to blame."""
    return KeyErred(
        stimulus_id=stimulus_id,
        client=client,
        key=ts.key,
        exception=failing.exception,
        traceback=failing.traceback,
        exception_text=failing.exception_text,
        traceback_text=failing.traceback_text,
    )


TransitionFunc = Callable[..., Recs]

TRANSITIONS_TABLE: dict[tuple[str, str], TransitionFunc] = {
    ("released", "waiting"): TransitionsMixin._transition_released_waiting,
    ("waiting", "released"): TransitionsMixin._transition_waiting_released,
    ("waiting", "processing"): TransitionsMixin._transition_waiting_processing,
    ("waiting", "no-worker"): TransitionsMixin._transition_waiting_no_worker,
    ("waiting", "queued"): TransitionsMixin._transition_waiting_queued,
    ("waiting", "memory"): TransitionsMixin._transition_waiting_memory,
    ("queued", "released"): TransitionsMixin._transition_queued_released,
    ("queued", "processing"): TransitionsMixin._transition_queued_processing,
    ("queued", "erred"): TransitionsMixin._transition_queued_erred,
    ("processing", "released"): TransitionsMixin._transition_processing_released,
    ("processing", "memory"): TransitionsMixin._transition_processing_memory,
    ("processing", "erred"): TransitionsMixin._transition_processing_erred,
    ("no-worker", "released"): TransitionsMixin._transition_no_worker_released,
    ("no-worker", "processing"): TransitionsMixin._transition_no_worker_processing,
    ("no-worker", "erred"): TransitionsMixin._transition_no_worker_erred,
    ("released", "forgotten"): TransitionsMixin._transition_released_forgotten,
    ("memory", "forgotten"): TransitionsMixin._transition_memory_forgotten,
    ("erred", "released"): TransitionsMixin._transition_erred_released,
    ("memory", "released"): TransitionsMixin._transition_memory_released,
    ("released", "erred"): TransitionsMixin._transition_released_erred,
}
