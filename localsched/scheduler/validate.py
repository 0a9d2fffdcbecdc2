"""``validate_state``: every invariant stated on the state records, checked.

Slow (it walks everything); tests turn it on with ``validate=True`` so that it
runs after each ``handle`` call.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from localsched.errors import InvalidTaskState
from localsched.scheduler.tasks import ALL_TASK_STATES, EMPTY_SET, TaskState

if TYPE_CHECKING:
    from localsched.scheduler.state import SchedulerState

_IN_FLIGHT_STATES = ("waiting", "queued", "no-worker", "processing")
_LINK_SETS = (
    "dependencies",
    "dependents",
    "waiting_on",
    "waiters",
    "who_has",
    "who_wants",
)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


class ValidateMixin:
    """Invariant checks; mixed into ``SchedulerState``."""

    def _fail(self: SchedulerState, ts: TaskState | None, message: str) -> None:
        story = self.story(ts.key) if ts is not None else []
        lines = "\n".join(f"  {entry}" for entry in story[-20:])
        raise InvalidTaskState(f"{message}\nStory:\n{lines}")

    def validate_task(self: SchedulerState, ts: TaskState) -> None:
        """Check one task against the invariants of its state."""
        state = ts.state
        check = self._check
        check(self.tasks.get(ts.key) is ts, ts, "task not registered under its key")
        check(state in ALL_TASK_STATES and state != "forgotten", ts, "bad state")
        check(
            (state == "processing") == (ts.processing_on is not None),
            ts,
            "processing_on set iff processing",
        )
        if ts.processing_on is not None:
            check(ts in ts.processing_on.processing, ts, "not in worker.processing")
        check((state == "queued") == (ts in self.queued), ts, "queued iff in queued")
        check(
            (state == "no-worker") == (ts in self.unrunnable),
            ts,
            "no-worker iff in unrunnable",
        )
        if state == "memory":
            check(bool(ts.who_has) or ts.shared, ts, "memory without a holder")
        else:
            check(not ts.who_has, ts, f"who_has set in state {state}")
        if state != "waiting":
            check(not ts.waiting_on, ts, f"waiting_on set in state {state}")
        if state == "waiting":
            for dts in ts.waiting_on:
                check(
                    dts.state != "memory" or (not dts.who_has and not dts.shared),
                    ts,
                    f"waiting on {dts.key!r} which is in memory",
                )
            for dts in ts.dependencies:
                if dts not in ts.waiting_on:
                    check(
                        dts.state == "memory",
                        ts,
                        f"not waiting on {dts.key!r} which is {dts.state}",
                    )
        if state in ("processing", "queued", "no-worker"):
            for dts in ts.dependencies:
                check(
                    dts.state == "memory",
                    ts,
                    f"{state} with dependency {dts.key!r} in {dts.state}",
                )
                check(ts in dts.waiters, ts, f"not among {dts.key!r}'s waiters")
        if state == "erred":
            check(ts.exception_blame is not None, ts, "erred without blame")
        if state in ("released", "memory", "erred"):
            for dts in ts.waiters:
                check(
                    dts.state in _IN_FLIGHT_STATES,
                    ts,
                    f"waiter {dts.key!r} in state {dts.state}",
                )
        for dts in ts.dependencies:
            check(ts in dts.dependents, ts, f"asymmetric dependency {dts.key!r}")
            check(self.tasks.get(dts.key) is dts, ts, f"dependency {dts.key!r} gone")
        for dts in ts.dependents:
            check(ts in dts.dependencies, ts, f"asymmetric dependent {dts.key!r}")
        for dts in ts.waiters:
            check(dts in ts.dependents, ts, f"waiter {dts.key!r} is not a dependent")
        for ws in ts.who_has:
            check(ts in ws.has_what, ts, f"asymmetric who_has {ws.address}")
            check(self.workers.get(ws.address) is ws, ts, "holder not registered")
        for cs in ts.who_wants:
            check(ts in cs.wants_what, ts, f"asymmetric who_wants {cs.client_key}")
        for name in _LINK_SETS:
            # A link set is a real set, the shared empty one, or (except
            # waiting_on) its one member's ``alone``: writers rely on it.
            links = getattr(ts, name)
            check(
                type(links) is set
                or links is EMPTY_SET
                or (
                    name != "waiting_on"
                    and len(links) == 1
                    and links is next(iter(links)).alone
                ),
                ts,
                f"{name} not a set",
            )

    def _check(
        self: SchedulerState, condition: bool, ts: TaskState | None, msg: str
    ) -> None:
        if not condition:
            key = ts.key if ts is not None else None
            self._fail(ts, f"{key!r}: {msg}")

    def validate_state(self: SchedulerState) -> None:
        """Check every invariant of the whole state; raise ``InvalidTaskState``."""
        check = self._check
        for ts in self.tasks.values():
            self.validate_task(ts)
        for ts in self.queued:
            check(
                self.tasks.get(ts.key) is ts and ts.state == "queued",
                ts,
                "stale entry in queued",
            )
        for ts in self.unrunnable:
            check(
                self.tasks.get(ts.key) is ts and ts.state == "no-worker",
                ts,
                "stale entry in unrunnable",
            )
        total_occupancy = 0.0
        total_nthreads = 0
        for address, ws in self.workers.items():
            check(ws.address == address, None, f"worker registered as {address}")
            check(ws.status != "closed", None, f"closed worker {address} registered")
            check(
                (ws in self.running) == (ws.status == "running"),
                None,
                f"{address}: running set vs status {ws.status}",
            )
            if ws.address in self.idle:
                check(ws.status == "running", None, f"{address} idle but {ws.status}")
            check(
                (ws in self.idle_task_count)
                == (ws.status == "running" and self._task_slots_available(ws) > 0),
                None,
                f"{address}: idle_task_count",
            )
            occ = 0.0
            prefix_counts: dict[object, int] = {}
            used: dict[str, float] = dict.fromkeys(ws.resources, 0.0)
            for ts, cost in ws.processing.items():
                check(
                    ts.processing_on is ws and ts.state == "processing",
                    ts,
                    f"in {address}.processing but {ts.state}",
                )
                if ts not in ws.long_running:
                    occ += cost
                    prefix_counts[ts.prefix] = prefix_counts.get(ts.prefix, 0) + 1
                for name, amount in (ts.resource_restrictions or {}).items():
                    used[name] = used.get(name, 0.0) + amount
            for ts in ws.long_running:
                check(ts in ws.processing, ts, "long-running but not processing")
            check(
                _close(occ, ws.occupancy),
                None,
                f"{address}: occupancy {ws.occupancy} != {occ}",
            )
            check(
                prefix_counts == ws.task_prefix_count,
                None,
                f"{address}: task_prefix_count",
            )
            for name, amount in used.items():
                check(
                    _close(ws.used_resources.get(name, 0.0), amount),
                    None,
                    f"{address}: used resource {name}",
                )
            nbytes = 0
            for ts in ws.has_what:
                check(ws in ts.who_has, ts, f"asymmetric has_what on {address}")
                nbytes += ts.get_nbytes()
            check(
                nbytes == ws.nbytes, None, f"{address}: nbytes {ws.nbytes} != {nbytes}"
            )
            total_occupancy += ws.occupancy
            total_nthreads += ws.nthreads
        for ws in self.running:
            check(self.workers.get(ws.address) is ws, None, "stale running worker")
        for ws in self.idle_task_count:
            check(self.workers.get(ws.address) is ws, None, "stale idle_task_count")
        check(
            _close(total_occupancy, self.total_occupancy),
            None,
            f"total_occupancy {self.total_occupancy} != {total_occupancy}",
        )
        check(total_nthreads == self.total_nthreads, None, "total_nthreads")
        for client, cs in self.clients.items():
            check(cs.client_key == client, None, "client key")
            for ts in cs.wants_what:
                check(cs in ts.who_wants, ts, f"asymmetric wants_what {client}")
                check(self.tasks.get(ts.key) is ts, ts, f"{client} wants a gone task")
        self._validate_counters()

    def _validate_counters(self: SchedulerState) -> None:
        check = self._check
        recount: dict[str, dict[str, int]] = {}
        for ts in self.tasks.values():
            states = recount.setdefault(
                ts.group.name, dict.fromkeys(ALL_TASK_STATES, 0)
            )
            states[ts.state] += 1
            check(self.task_groups.get(ts.group.name) is ts.group, ts, "group gone")
        for name, tg in self.task_groups.items():
            live = {s: n for s, n in tg.states.items() if s != "forgotten"}
            expected = {
                s: n
                for s, n in recount.get(name, dict.fromkeys(ALL_TASK_STATES, 0)).items()
                if s != "forgotten"
            }
            check(live == expected, None, f"group {name} counts {live} != {expected}")
            check(sum(tg.states.values()) == tg.n_tasks, None, f"group {name} n_tasks")
            check(tg in tg.prefix.groups, None, f"group {name} not in its prefix")
        for name, tp in self.task_prefixes.items():
            # ``tp.states`` sums its groups: they must be exactly the live ones.
            for tg in tp.groups:
                check(
                    self.task_groups.get(tg.name) is tg,
                    None,
                    f"prefix {name} holds the dead group {tg.name}",
                )
