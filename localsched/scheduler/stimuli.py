"""Stimulus handlers: each turns one event into recommendations and runs them.

One ``_on_<event>`` per event class; ``state.py`` dispatches on the event type.
Handlers validate what they are told first and change nothing when it is wrong.
Graphs (``UpdateGraph``) are taken in by ``graphs.py``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from localsched.errors import KilledWorker, NoValidWorkerError
from localsched.scheduler import events as ev
from localsched.scheduler.commands import (
    AcquireReplicas,
    CloseWorker,
    FreeData,
    FreeKeys,
    KeyCancelled,
    KeyInMemory,
    RetirementFailed,
)
from localsched.scheduler.graphs import validate_key
from localsched.scheduler.tasks import (
    ClientState,
    Key,
    TaskState,
    WorkerState,
    link_client,
    without_link,
)
from localsched.scheduler.transitions import key_erred

if TYPE_CHECKING:
    from localsched.scheduler.state import SchedulerState

Recs = dict[Key, str]


class StimuliMixin:
    """Event handlers; mixed into ``SchedulerState``."""

    # -- data ------------------------------------------------------------------

    def _on_update_data(self: SchedulerState, event: ev.UpdateData) -> None:
        self.now = max(self.now, event.time)
        cs = self._ensure_client(event.client)
        for key in event.who_has:
            validate_key(key)
        stimulus_id = event.stimulus_id
        for key, address in event.who_has.items():
            ts = self.tasks.get(key)
            recs: Recs = {}
            if ts is not None and ts.state not in ("memory", "released"):
                # The scattered value replaces the computation: stop it, without
                # following the recommendation to compute it again.
                recs = dict(self._transition(key, "released", stimulus_id))
                recs.pop(key, None)
                ts = self.tasks.get(key)
            if ts is None:
                ts = self.new_task(key, None)
                ts.priority = (0, self.generation, self._next_order)
                self._next_order += 1
            if ts not in cs.wants_what:
                link_client(cs, ts)
            nbytes = event.nbytes.get(key, -1)
            if ts.state == "released":
                self._set_nbytes(ts, nbytes)
                ts.shared = event.shared
                ts.state = "memory"
                self._count_state_change(ts, "released")
                self.transition_log.record(
                    key, "released", "memory", {}, stimulus_id, self.now
                )
                ts.type = event.types.get(key)
                if ts.type:
                    ts.group.types.add(ts.type)
            ws = self.workers.get(address) if address is not None else None
            if ws is not None:
                self.add_replica(ts, ws)
            for waiter in list(ts.waiters):
                if ts in waiter.waiting_on:
                    waiter.waiting_on.discard(ts)
                    if not waiter.waiting_on:
                        recs[waiter.key] = "processing"
            self._commands.append(
                KeyInMemory(
                    stimulus_id=stimulus_id, client=cs.client_key, key=key, type=ts.type
                )
            )
            self._transitions(recs, stimulus_id)

    # -- results ------------------------------------------------------------------

    def _on_task_finished(self: SchedulerState, event: ev.TaskFinished) -> None:
        ts = self.tasks.get(event.key)
        ws = self.workers.get(event.worker)
        stimulus_id = event.stimulus_id
        if event.startstops:
            self.now = max(self.now, event.startstops[-1][2])
        stale = ts is not None and 0 <= event.run_id != ts.run_id
        if (
            ts is not None
            and ws is not None
            and ts.state == "processing"
            and ts.processing_on is ws
            and not stale
        ):
            if self.transition_hook is None and not self.transition_counter_max:
                # The engine's fast path without packing keyword arguments: the
                # checks above are exactly processing->memory's own.
                self.transition_counter += 1
                recs = self._processing_to_memory(
                    ts,
                    ws,
                    event.nbytes,
                    event.type,
                    event.startstops,
                    event.shared,
                    stimulus_id,
                )
                self._record_transition(ts, "processing", recs, stimulus_id)
            else:
                recs = self._transition(
                    event.key,
                    "memory",
                    stimulus_id,
                    worker=event.worker,
                    nbytes=event.nbytes,
                    type=event.type,
                    startstops=event.startstops,
                    shared=event.shared,
                )
            if recs:  # often empty: a wanted result with no waiting dependent
                self._transitions(recs, stimulus_id)
            if self._retiring:
                self._check_retirements(stimulus_id)
            return
        if ts is not None and ws is not None and ts.state == "memory" and not stale:
            # A second copy (e.g. a steal that raced): keep the first result.
            if event.shared:
                return
            self.add_replica(ts, ws)
            return
        # Stale: the task moved on. Tell the worker to drop it.
        if ts is not None and ws is not None and ts.processing_on is ws:
            # An older run's answer from the worker now running a newer one: a
            # FreeKeys would cancel the new run too (it names keys, not runs).
            # Place the task again, as dask does.
            self._transitions({event.key: "released"}, stimulus_id)
        elif ws is not None and (ts is None or ws not in ts.who_has):
            self._commands.append(
                FreeKeys(stimulus_id=stimulus_id, worker=ws.address, keys=(event.key,))
            )
        if event.shared and (ts is None or ts.state != "memory"):
            self._commands.append(FreeData(stimulus_id=stimulus_id, key=event.key))

    def _on_task_erred(self: SchedulerState, event: ev.TaskErred) -> None:
        ts = self.tasks.get(event.key)
        ws = self.workers.get(event.worker)
        if (
            ts is None
            or ws is None
            or ts.state != "processing"
            or ts.processing_on is not ws
            or (event.run_id >= 0 and event.run_id != ts.run_id)
        ):
            return
        stimulus_id = event.stimulus_id
        if ts.retries > 0:
            ts.retries -= 1
            recs = self._transition(event.key, "waiting", stimulus_id)
        else:
            recs = self._transition(
                event.key,
                "erred",
                stimulus_id,
                worker=event.worker,
                exception=event.exception,
                traceback=event.traceback,
                exception_text=event.exception_text,
                traceback_text=event.traceback_text,
                startstops=event.startstops,
            )
        self._transitions(recs, stimulus_id)
        if self._retiring:
            self._check_retirements(stimulus_id)

    # -- workers --------------------------------------------------------------------

    def _on_worker_added(self: SchedulerState, event: ev.WorkerAdded) -> None:
        self.now = max(self.now, event.time)
        if event.address in self.workers:
            return
        ws = WorkerState(
            event.address,
            event.nthreads,
            name=event.name,
            memory_limit=event.memory_limit,
            resources=dict(event.resources or {}),
            host=event.host,
            pid=event.pid,
        )
        ws.last_seen = event.time
        self.workers[ws.address] = ws
        self._workers_by_name[ws.name] = ws
        self.running.add(ws)
        self.total_nthreads += ws.nthreads
        info = self.host_info.setdefault(ws.host, {"addresses": set(), "nthreads": 0})
        info["addresses"].add(ws.address)
        info["nthreads"] += ws.nthreads
        for other in self.workers.values():
            self.check_idle_saturated(other)
        self._notify("add_worker", worker=ws.address)
        self._schedule_unrunnable(ws, event.stimulus_id)

    def _schedule_unrunnable(
        self: SchedulerState, ws: WorkerState, stimulus_id: str
    ) -> None:
        if not self.unrunnable:
            return
        recs: Recs = {}
        for ts in sorted(self.unrunnable, key=_priority, reverse=True):
            valid = self.valid_workers(ts)
            if valid is None or ws in valid or ts.loose_restrictions:
                recs[ts.key] = "processing"
        self._transitions(recs, stimulus_id)

    def _on_worker_removed(self: SchedulerState, event: ev.WorkerRemoved) -> None:
        self.now = max(self.now, event.time)
        ws = self.workers.get(event.address)
        if ws is None:
            return
        self._remove_worker(
            ws,
            event.stimulus_id,
            expected=event.expected,
            reason=event.reason,
            executing=event.executing,
        )

    def _remove_worker(
        self: SchedulerState,
        ws: WorkerState,
        stimulus_id: str,
        *,
        expected: bool,
        reason: str = "",
        executing: Collection[Key] | None = None,
    ) -> None:
        address = ws.address
        ws.status = "closed"
        self.running.discard(ws)
        self.idle.pop(address, None)
        self.idle_task_count.discard(ws)
        self.saturated.discard(ws)
        self.total_nthreads -= ws.nthreads
        self._retiring.pop(address, None)
        info = self.host_info.get(ws.host)
        if info is not None:
            info["addresses"].discard(address)
            info["nthreads"] -= ws.nthreads
            if not info["addresses"]:
                del self.host_info[ws.host]
        recs: Recs = {}
        killed: list[TaskState] = []
        executing_keys = None if executing is None else set(executing)
        for ts in sorted(ws.processing, key=_priority, reverse=True):
            recs[ts.key] = "released"
            if expected:
                continue
            if executing_keys is not None and ts.key not in executing_keys:
                continue
            ts.suspicious += 1
            ts.prefix.suspicious += 1
            if ts.suspicious > self.allowed_failures:
                del recs[ts.key]
                killed.append(ts)
        for ts in list(ws.has_what):
            self.remove_replica(ts, ws)
            if not ts.who_has and not ts.shared:
                recs[ts.key] = "released" if ts.run_spec is not None else "forgotten"
        for ts in killed:
            error = KilledWorker(ts.key, ws, self.allowed_failures, reason)
            self._transitions(
                self._transition(
                    ts.key,
                    "erred",
                    stimulus_id,
                    worker=address,
                    exception=error,
                    exception_text=str(error),
                    cause=ts.key,
                ),
                stimulus_id,
            )
        self._transitions(recs, stimulus_id)
        assert not ws.processing, ws.processing
        del self.workers[address]
        if self._workers_by_name.get(ws.name) is ws:
            del self._workers_by_name[ws.name]
        if self.total_nthreads:
            for other in self.workers.values():
                self.check_idle_saturated(other)
        self._notify("remove_worker", worker=address, stimulus_id=stimulus_id)

    def _on_worker_status_changed(
        self: SchedulerState, event: ev.WorkerStatusChanged
    ) -> None:
        ws = self.workers.get(event.address)
        if ws is None or ws.status == event.status or ws.status == "closing_gracefully":
            return
        if event.status == "paused":
            ws.status = "paused"
            self.running.discard(ws)
            self.idle.pop(ws.address, None)
            self.idle_task_count.discard(ws)
            self.saturated.discard(ws)
        elif event.status == "running":
            ws.status = "running"
            self.running.add(ws)
            self.check_idle_saturated(ws)
            self._schedule_unrunnable(ws, event.stimulus_id)
        else:
            raise ValueError(f"Unknown worker status {event.status!r}")

    def _on_worker_heartbeat(self: SchedulerState, event: ev.WorkerHeartbeat) -> None:
        self.now = max(self.now, event.time)
        ws = self.workers.get(event.address)
        if ws is None:
            return
        ws.last_seen = event.time
        ws.metrics = dict(event.metrics)
        ws.executing_count = len(event.executing)
        changed = False
        for key, elapsed in event.executing.items():
            ts = self.tasks.get(key)
            if ts is not None and ts.processing_on is ws:
                before = self._get_prefix_duration(ts.prefix)
                ts.prefix.add_exec_time(elapsed)
                changed |= self._get_prefix_duration(ts.prefix) != before
        if changed:
            # A task running longer than expected makes its worker busier than
            # the occupancy says; stealing and placement must see that now (dask
            # recomputes occupancy from its prefix counts on every read).
            self.realign_occupancy()

    def _on_task_seceded(self: SchedulerState, event: ev.TaskSeceded) -> None:
        self.handle_long_running(event.key, event.worker, event.compute_duration)

    def handle_long_running(
        self: SchedulerState,
        key: Key,
        worker: str,
        compute_duration: float | None = None,
    ) -> None:
        """A task seceded: it stops counting against its worker's threads."""
        ts = self.tasks.get(key)
        ws = self.workers.get(worker)
        if ts is None or ws is None or ts.processing_on is not ws:
            return
        if ts in ws.long_running:
            return
        if compute_duration is not None:
            old = ts.prefix.duration_average
            ts.prefix.duration_average = (
                compute_duration if old < 0 else (old + compute_duration) / 2
            )
        cost = ws.processing[ts]
        ws.occupancy -= cost
        self.total_occupancy -= cost
        counts = ws.task_prefix_count
        counts[ts.prefix] -= 1
        if not counts[ts.prefix]:
            del counts[ts.prefix]
        ws.long_running.add(ts)
        if self._stealing_enabled:
            self._steal_candidates_discard(ts, ws)
        self.check_idle_saturated(ws)

    # -- clients ----------------------------------------------------------------------

    def _ensure_client(self: SchedulerState, client: str) -> ClientState:
        cs = self.clients.get(client)
        if cs is None:
            cs = self.clients[client] = ClientState(client)
            cs.last_seen = self.now
            self._notify("add_client", client=client)
        return cs

    def _on_client_added(self: SchedulerState, event: ev.ClientAdded) -> None:
        self._ensure_client(event.client)

    def _on_client_removed(self: SchedulerState, event: ev.ClientRemoved) -> None:
        cs = self.clients.get(event.client)
        if cs is None or event.client == "fire-and-forget":
            return
        recs: Recs = {}
        self._client_releases_keys([ts.key for ts in cs.wants_what], cs, recs)
        del self.clients[event.client]
        self._transitions(recs, event.stimulus_id)
        self._notify("remove_client", client=event.client)

    def _client_releases_keys(
        self: SchedulerState, keys: Iterable[Key], cs: ClientState, recs: Recs
    ) -> None:
        wants_what = cs.wants_what
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            # One hash of the task, not two (``in`` then ``discard``).
            n = len(wants_what)
            wants_what.discard(ts)
            if len(wants_what) == n:
                continue
            ts.who_wants = without_link(ts.who_wants, cs)
            if not ts.who_wants:
                if not ts.dependents:
                    recs[key] = "forgotten"
                elif ts.state != "erred" and not ts.waiters:
                    recs[key] = "released"

    def _on_client_releases_keys(
        self: SchedulerState, event: ev.ClientReleasesKeys
    ) -> None:
        cs = self.clients.get(event.client)
        if cs is None:
            return
        recs: Recs = {}
        self._client_releases_keys(event.keys, cs, recs)
        self._transitions(recs, event.stimulus_id)

    def _on_client_desires_keys(
        self: SchedulerState, event: ev.ClientDesiresKeys
    ) -> None:
        cs = self._ensure_client(event.client)
        recs: Recs = {}
        for key in event.keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            if ts not in cs.wants_what:
                link_client(cs, ts)
            if ts.state in ("memory", "erred"):
                self._report_on_key(ts, cs, event.stimulus_id)
            elif ts.state == "released" and ts.run_spec is not None:
                # dask leaves this future pending forever; compute the key, as
                # submitting it again would.
                recs[key] = "waiting"
        self._transitions(recs, event.stimulus_id)

    def _report_on_key(
        self: SchedulerState, ts: TaskState, cs: ClientState, stimulus_id: str
    ) -> None:
        if ts.state == "memory":
            self._commands.append(
                KeyInMemory(
                    stimulus_id=stimulus_id,
                    client=cs.client_key,
                    key=ts.key,
                    type=ts.type,
                )
            )
        elif ts.state == "erred":
            failing = ts.exception_blame or ts
            self._commands.append(key_erred(ts, failing, cs.client_key, stimulus_id))

    def _on_cancel_requested(self: SchedulerState, event: ev.CancelRequested) -> None:
        cs = self.clients.get(event.client)
        if cs is None:
            return
        recs: Recs = {}
        for key in event.keys:
            self._cancel_key(key, cs, event.force, recs, event.stimulus_id, set())
        self._transitions(recs, event.stimulus_id)

    def _cancel_key(
        self: SchedulerState,
        key: Key,
        cs: ClientState,
        force: bool,
        recs: Recs,
        stimulus_id: str,
        seen: set[Key],
    ) -> None:
        if key in seen:
            return
        seen.add(key)
        ts = self.tasks.get(key)
        if ts is None or not ts.who_wants:
            return
        if not (force or ts.who_wants == {cs}):
            return
        for dts in list(ts.dependents):
            self._cancel_key(dts.key, cs, force, recs, stimulus_id, seen)
        for client in list(ts.who_wants):
            self._commands.append(
                KeyCancelled(
                    stimulus_id=stimulus_id,
                    client=client.client_key,
                    key=key,
                    reason="cancelled",
                )
            )
            self._client_releases_keys((key,), client, recs)

    def cancel_key(
        self: SchedulerState,
        key: Key,
        client: str,
        force: bool = False,
        *,
        stimulus_id: str = "cancel",
    ) -> None:
        """Cancel ``key`` and its dependents for ``client`` (dask's ``cancel_key``)."""
        self._on_cancel_requested(
            ev.CancelRequested(
                stimulus_id=stimulus_id, client=client, keys=(key,), force=force
            )
        )

    def _on_retry_requested(self: SchedulerState, event: ev.RetryRequested) -> None:
        stack = [k for k in event.keys if k in self.tasks]
        seen: set[Key] = set()
        roots: list[Key] = []
        while stack:
            key = stack.pop()
            if key in seen:
                continue
            seen.add(key)
            ts = self.tasks[key]
            erred_deps = [dts.key for dts in ts.dependencies if dts.state == "erred"]
            if erred_deps:
                stack.extend(erred_deps)
            elif ts.state == "erred":
                roots.append(key)
        self._transitions(dict.fromkeys(roots, "waiting"), event.stimulus_id)

    def _on_reschedule_requested(
        self: SchedulerState, event: ev.RescheduleRequested
    ) -> None:
        ts = self.tasks.get(event.key)
        if ts is None or ts.state != "processing":
            return
        assert ts.processing_on is not None
        if event.worker is not None and ts.processing_on.address != event.worker:
            return
        self._transitions({event.key: "released"}, event.stimulus_id)

    def _on_missing_data(self: SchedulerState, event: ev.MissingData) -> None:
        ts = self.tasks.get(event.key)
        if ts is None or ts.state != "memory":
            return
        if event.worker is None:
            # The shared store lost it: every copy is gone.
            for ws in list(ts.who_has):
                self.remove_replica(ts, ws)
            ts.shared = False
        else:
            ws = self.workers.get(event.worker)
            if ws is not None:
                self.remove_replica(ts, ws)
        if not ts.who_has and not ts.shared:
            target = "released" if ts.run_spec is not None else "forgotten"
            self._transitions({event.key: target}, event.stimulus_id)

    def _on_replicas_added(self: SchedulerState, event: ev.ReplicasAdded) -> None:
        ws = self.workers.get(event.worker)
        if ws is None:
            return
        stale: list[Key] = []
        for key in event.keys:
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "memory":
                self.add_replica(ts, ws)
            else:
                stale.append(key)
        if stale:
            self._commands.append(
                FreeKeys(
                    stimulus_id=event.stimulus_id, worker=ws.address, keys=tuple(stale)
                )
            )
        if self._retiring:
            self._check_retirements(event.stimulus_id)

    # -- retirement and restart -----------------------------------------------------

    def _on_retire_workers(self: SchedulerState, event: ev.RetireWorkers) -> None:
        addresses = self.workers_list(event.workers)
        retiring = [self.workers[a] for a in addresses if a in self.workers]
        staying = [
            ws
            for ws in self.workers.values()
            if ws not in retiring and ws.status == "running"
        ]
        needs_recipient = any(
            ts.who_has == {ws} and not ts.shared
            for ws in retiring
            for ts in ws.has_what
        )
        if needs_recipient and not staying:
            self._commands.append(
                RetirementFailed(
                    stimulus_id=event.stimulus_id,
                    workers=tuple(addresses),
                    reason="no other running worker can take their data",
                )
            )
            return
        for ws in retiring:
            ws.status = "closing_gracefully"
            self.running.discard(ws)
            self.idle.pop(ws.address, None)
            self.idle_task_count.discard(ws)
            self.saturated.discard(ws)
            self._retiring[ws.address] = event.close_workers
        for ws in retiring:
            self._hand_off_unstarted(ws, event.stimulus_id)
        self._check_retirements(event.stimulus_id)

    def _check_retirements(self: SchedulerState, stimulus_id: str) -> None:
        requested = self._requested_replicas
        for address, close in list(self._retiring.items()):
            ws = self.workers[address]
            if ws.processing:
                continue
            unique = [ts for ts in ws.has_what if ts.who_has == {ws} and not ts.shared]
            if unique:
                pending = requested.setdefault(address, {})
                for key, recipient_address in list(pending.items()):
                    if recipient_address not in self.workers:
                        del pending[key]  # it left before copying: ask another
                todo = [ts for ts in unique if ts.key not in pending]
                if todo:
                    recipients = sorted(
                        (w for w in self.running if w.address not in self._retiring),
                        key=lambda w: w.nbytes,
                    )
                    if not recipients:
                        continue
                    recipient = recipients[0]
                    keys = tuple(ts.key for ts in todo)
                    pending.update(dict.fromkeys(keys, recipient.address))
                    self._commands.append(
                        AcquireReplicas(
                            stimulus_id=stimulus_id,
                            worker=recipient.address,
                            keys=keys,
                            source=address,
                        )
                    )
                continue
            requested.pop(address, None)
            self._remove_worker(ws, stimulus_id, expected=True)
            if close:
                self._commands.append(
                    CloseWorker(
                        stimulus_id=stimulus_id, worker=address, reason="retired"
                    )
                )

    def _on_restart_requested(self: SchedulerState, event: ev.RestartRequested) -> None:
        stimulus_id = event.stimulus_id
        recs: Recs = {}
        for cs in list(self.clients.values()):
            for ts in list(cs.wants_what):
                self._commands.append(
                    KeyCancelled(
                        stimulus_id=stimulus_id,
                        client=cs.client_key,
                        key=ts.key,
                        reason="scheduler-restart",
                    )
                )
            self._client_releases_keys([ts.key for ts in cs.wants_what], cs, recs)
        self._transitions(recs, stimulus_id)
        leftover = dict.fromkeys(self.tasks, "forgotten")
        self._transitions(leftover, stimulus_id)
        self._notify("restart")

    # -- timers ------------------------------------------------------------------------

    def _on_tick(self: SchedulerState, event: ev.Tick) -> None:
        self.now = max(self.now, event.time)
        if self.no_workers_timeout is not None and self.unrunnable:
            self._check_no_workers(event.stimulus_id)
        if self._retiring:
            # Poll, as dask's retire loop does: a retiring worker's tasks may also
            # leave through release, cancel, reschedule or restart.
            self._check_retirements(event.stimulus_id)
        if self._stealing_enabled and self.idle and len(self.idle) < len(self.running):
            self.balance(event.stimulus_id)
        if event.is_idle:
            self.realign_occupancy()

    def _check_no_workers(self: SchedulerState, stimulus_id: str) -> None:
        timeout = self.no_workers_timeout
        assert timeout is not None
        recs: dict[Key, dict[str, Any]] = {}
        for ts, since in self.unrunnable.items():
            if self.now - since > timeout:
                error = NoValidWorkerError(
                    ts.key,
                    ts.host_restrictions,
                    ts.worker_restrictions,
                    ts.resource_restrictions,
                    timeout,
                )
                recs[ts.key] = {"exception": error, "exception_text": str(error)}
        for key, kwargs in recs.items():
            self._transitions(
                self._transition(key, "erred", stimulus_id, cause=key, **kwargs),
                stimulus_id,
            )


# C-level key function (sorting 100k tasks by a Python function costs ~1 us each).
_priority = attrgetter("priority")
