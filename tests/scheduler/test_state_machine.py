"""Model-based test of the scheduler core, with faithfully simulated workers.

Deep run (2000 examples of up to 100 steps, about 10 minutes on 2 cores):

    LOCALSCHED_HYPOTHESIS_PROFILE=deep python -m pytest \
        tests/scheduler/test_state_machine.py -q -p no:cacheprovider

Profiles live in ``tests/conftest.py`` (``dev`` by default, ``ci`` when ``CI`` is
set). The machine plays the world around ``SchedulerState``: clients submit graphs
(sometimes invalid ones), release, desire, cancel and retry keys; workers join,
pause, retire and die. Each simulated worker does only what the commands told it:
it computes the tasks it was sent (remembering their ``run_id``), holds the
results it produced or copied, forgets what ``FreeKeys`` names, answers steal
requests with its own view of the task and copies replicas when asked. Results
that were freed while their message was in flight come back as stale answers.

After every step:

- the core's ``validate_state()`` passes;
- the core's view equals what it told the world: each worker computes exactly the
  tasks processing on it, with the same ``run_id``, and holds exactly its
  ``has_what``; the shared store holds exactly the shared results in memory;
  every client's futures agree with the states of the keys it wants;
- every command names known workers and keys, and no task goes to a worker that
  may not run it.

``settle()`` (a rule, and at teardown) checks liveness: with a running worker,
finishing every task the workers are given ends every wanted key in memory or
erred; nothing is left processing, queued, or in no-worker while a worker that
may run it is up; retirements complete; no result is kept that nobody needs.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from localsched.scheduler import events as ev
from localsched.scheduler.commands import (
    AcquireReplicas,
    CloseWorker,
    Command,
    ComputeTask,
    FreeData,
    FreeKeys,
    GraphRejected,
    KeyCancelled,
    KeyErred,
    KeyInMemory,
    KeyLost,
    KeyRetried,
    RetirementFailed,
    StealRequest,
)
from localsched.scheduler.state import SchedulerState
from localsched.scheduler.tasks import Key, TaskState

CLIENTS = ("alice", "bob", "fire-and-forget")
PREFIXES = ("load", "inc", "sum")
MAX_WORKERS = 5
#: What workers offer ("GPU" is common, "FPGA" rare) and tasks ask for ("TPU": never).
WORKER_RESOURCES = ({}, {}, {"GPU": 1}, {"GPU": 2}, {"GPU": 1, "FPGA": 1})
TASK_RESOURCES = ({"GPU": 1}, {"GPU": 2}, {"FPGA": 1}, {"TPU": 1})
NOWHERE = "tcp://nowhere"


@dataclass
class SimWorker:
    """A worker that does exactly what the scheduler's commands say."""

    address: str
    name: object
    nthreads: int
    resources: dict[str, float]
    #: key -> run_id of the tasks it was told to compute and has not answered.
    computing: dict[Key, int] = field(default_factory=dict)
    #: The subset of ``computing`` that seceded.
    seceded: set[Key] = field(default_factory=set)
    #: Keys whose results it holds.
    data: set[Key] = field(default_factory=set)


def _by_repr(items: Any) -> list[Any]:
    """A deterministic order to draw from, whatever the order of a set."""
    return sorted(items, key=repr)


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = SchedulerState(validate=True)
        self.sim: dict[str, SimWorker] = {}
        #: Keys whose results live in the shared store.
        self.store: set[Key] = set()
        #: (worker, key, run_id) of runs freed while their answer may be on its way:
        #: the answer left before the worker obeyed the FreeKeys, so it arrives
        #: before anything else that worker says afterwards (pipes are FIFO).
        self.stale_runs: list[tuple[str, Key, int]] = []
        self.steal_requests: list[StealRequest] = []
        self.acquire_requests: list[AcquireReplicas] = []
        #: client -> key -> what its future says: pending, memory or erred.
        self.futures: dict[str, dict[Key, str]] = {c: {} for c in CLIENTS}
        #: address -> close_workers of the retirement in progress.
        self.retiring: dict[str, bool] = {}
        self.rejections: list[GraphRejected] = []
        self.time = 0.0
        self.counter = 0

    # -- plumbing ---------------------------------------------------------------

    def _sid(self, what: str) -> str:
        self.counter += 1
        return f"{what}-{self.counter}"

    def handle(self, event: ev.StateEvent) -> list[Command]:
        commands = self.state.handle(event)
        self.apply(commands)
        self.check_world()
        return commands

    def apply(self, commands: Sequence[Command]) -> None:
        """Carry out the commands as the workers, the store and the clients would."""
        for cmd in commands:
            if isinstance(cmd, ComputeTask):
                self._apply_compute(cmd)
            elif isinstance(cmd, FreeKeys):
                sim = self.sim.get(cmd.worker)
                assert sim is not None, f"{cmd} names an unknown worker"
                for key in cmd.keys:
                    run_id = sim.computing.pop(key, None)
                    if run_id is not None:
                        self.stale_runs.append((cmd.worker, key, run_id))
                    sim.seceded.discard(key)
                    sim.data.discard(key)
            elif isinstance(cmd, StealRequest):
                victim = self.sim.get(cmd.worker)
                assert victim is not None, f"{cmd} names an unknown victim"
                assert cmd.key in victim.computing, f"{cmd}: victim does not run it"
                thief = self.state.workers.get(cmd.thief)
                assert thief is not None, f"{cmd} names an unknown thief"
                assert thief.status == "running", f"{cmd}: thief is {thief.status}"
                self.steal_requests.append(cmd)
            elif isinstance(cmd, AcquireReplicas):
                assert cmd.worker != cmd.source, cmd
                assert cmd.worker in self.sim, f"{cmd} names an unknown recipient"
                source = self.sim.get(cmd.source)
                assert source is not None, f"{cmd} names an unknown source"
                assert set(cmd.keys) <= source.data, f"{cmd}: source lacks keys"
                self.acquire_requests.append(cmd)
            elif isinstance(cmd, CloseWorker):
                assert cmd.worker in self.sim, f"{cmd} names an unknown worker"
                assert cmd.worker not in self.state.workers, f"{cmd}: still registered"
                assert self.retiring.pop(cmd.worker, None) is True, cmd
                del self.sim[cmd.worker]
            elif isinstance(cmd, FreeData):
                self.store.discard(cmd.key)
            elif isinstance(cmd, KeyInMemory):
                self._tell(cmd.client, cmd.key, "memory")
            elif isinstance(cmd, KeyErred):
                self._tell(cmd.client, cmd.key, "erred")
            elif isinstance(cmd, KeyLost | KeyRetried):
                self._tell(cmd.client, cmd.key, "pending")
            elif isinstance(cmd, KeyCancelled):
                self.futures.setdefault(cmd.client, {}).pop(cmd.key, None)
            elif isinstance(cmd, GraphRejected):
                self.rejections.append(cmd)
            elif isinstance(cmd, RetirementFailed):
                pass
            else:
                raise AssertionError(f"unexpected command {cmd!r}")
        # A worker retired without being closed is no longer the scheduler's.
        for address, close in list(self.retiring.items()):
            if address not in self.state.workers:
                assert not close, f"{address} retired but never closed"
                del self.retiring[address]
                self.sim.pop(address, None)

    def _apply_compute(self, cmd: ComputeTask) -> None:
        sim = self.sim.get(cmd.worker)
        assert sim is not None, f"{cmd} names an unknown worker"
        ws = self.state.workers.get(cmd.worker)
        assert ws is not None, f"{cmd} names an unregistered worker"
        assert ws.status == "running", f"{cmd}: worker is {ws.status}"
        assert cmd.key not in sim.computing, f"{cmd}: worker already computes it"
        for dep in cmd.dependencies:
            assert dep in self.store or any(dep in w.data for w in self.sim.values()), (
                f"{cmd}: dependency {dep!r} is held nowhere"
            )
        ts = self.state.tasks.get(cmd.key)
        if ts is not None and not ts.loose_restrictions:
            assert self._may_run(ts, sim), f"{cmd}: worker may not run it"
        sim.computing[cmd.key] = cmd.run_id

    def _heard_from(self, address: str) -> None:
        """``address`` sent a message: answers of runs it had freed are behind us."""
        self.stale_runs = [r for r in self.stale_runs if r[0] != address]

    def _tell(self, client: str, key: Key, what: str) -> None:
        self.futures.setdefault(client, {})[key] = what

    @staticmethod
    def _may_run(ts: TaskState, sim: SimWorker) -> bool:
        if ts.loose_restrictions:
            return True
        restrictions = ts.worker_restrictions
        if restrictions and not ({sim.address, sim.name} & restrictions):
            return False
        return all(
            sim.resources.get(name, 0) >= amount
            for name, amount in (ts.resource_restrictions or {}).items()
        )

    def _runs(self) -> list[tuple[str, Key, int]]:
        return [
            (address, key, run_id)
            for address, sim in self.sim.items()
            for key, run_id in sim.computing.items()
        ]

    def _held(self) -> list[tuple[str, Key]]:
        return [
            (address, key)
            for address, sim in self.sim.items()
            for key in _by_repr(sim.data)
        ]

    def _snapshot(self) -> Any:
        state = self.state
        return (
            {key: ts.state for key, ts in state.tasks.items()},
            {
                key: ({d.key for d in ts.dependencies}, {d.key for d in ts.dependents})
                for key, ts in state.tasks.items()
            },
            {c: {ts.key for ts in cs.wants_what} for c, cs in state.clients.items()},
            set(state.workers),
        )

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def core_is_valid(self) -> None:
        self.state.validate_state()
        self.check_world()

    def check_world(self) -> None:
        """The core's view equals what it told the simulated world."""
        state = self.state
        assert set(self.sim) == set(state.workers)
        for address, ws in state.workers.items():
            sim = self.sim[address]
            processing = {ts.key: ts.run_id for ts in ws.processing}
            assert sim.computing == processing, (address, sim.computing, processing)
            holds = {ts.key for ts in ws.has_what}
            assert sim.data == holds, (address, sim.data, holds)
            assert sim.seceded == {ts.key for ts in ws.long_running}, address
        shared = {
            ts.key for ts in state.tasks.values() if ts.state == "memory" and ts.shared
        }
        assert self.store == shared, (self.store, shared)
        for client, cs in state.clients.items():
            told = self.futures.get(client, {})
            for ts in cs.wants_what:
                expected = ts.state if ts.state in ("memory", "erred") else "pending"
                assert told.get(ts.key) == expected, (
                    f"{client}'s future for {ts.key!r} says {told.get(ts.key)}, "
                    f"the task is {ts.state}"
                )

    # -- configuration ---------------------------------------------------------------

    @initialize(
        worker_saturation=st.sampled_from([1.1, 2.0, math.inf]),
        allowed_failures=st.integers(0, 3),
        work_stealing=st.booleans(),
        no_workers_timeout=st.sampled_from([None, 5.0]),
        fast_task_slots=st.sampled_from([0, 0, 4]),
    )
    def configure(
        self,
        worker_saturation: float,
        allowed_failures: int,
        work_stealing: bool,
        no_workers_timeout: float | None,
        fast_task_slots: int,
    ) -> None:
        self.state = SchedulerState(
            validate=True,
            worker_saturation=worker_saturation,
            allowed_failures=allowed_failures,
            work_stealing=work_stealing,
            no_workers_timeout=no_workers_timeout,
            fast_task_slots=fast_task_slots,
            transition_counter_max=1_000_000,
        )

    # -- graphs ----------------------------------------------------------------------

    def _draw_graph(self, data: st.DataObject, client: str) -> ev.UpdateGraph:
        state = self.state
        gid = self._sid("g")
        known = _by_repr(state.tasks)
        targets = [*_by_repr(self.sim), *(s.name for s in self.sim.values()), NOWHERE]
        n = data.draw(st.integers(1, 6), label="n_tasks")
        keys: list[Key] = []
        deps: dict[Key, list[Key]] = {}
        restrictions: dict[Key, list[str]] = {}
        loose: list[Key] = []
        resources: dict[Key, dict[str, float]] = {}
        annotations: dict[Key, dict[str, Any]] = {}
        for i in range(n):
            key = (f"{data.draw(st.sampled_from(PREFIXES))}-{gid}", i)
            dep_keys: list[Key] = []
            if keys:
                dep_keys += data.draw(
                    st.lists(st.sampled_from(keys), max_size=2, unique=True)
                )
            if known:
                dep_keys += data.draw(
                    st.lists(st.sampled_from(known), max_size=2, unique=True)
                )
            deps[key] = dep_keys
            keys.append(key)
            extra = data.draw(
                st.sampled_from(["plain"] * 4 + ["workers", "resources", "annotated"])
            )
            if extra == "workers":
                restrictions[key] = data.draw(
                    st.lists(st.sampled_from(targets), min_size=1, max_size=2)
                )
                if data.draw(st.booleans()):
                    loose.append(key)
            elif extra == "resources":
                resources[key] = data.draw(st.sampled_from(TASK_RESOURCES))
            elif extra == "annotated":
                annotations[key] = data.draw(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "priority": st.integers(-2, 2),
                            "retries": st.integers(0, 2),
                            "workers": st.lists(
                                st.sampled_from(targets), min_size=1, max_size=2
                            ),
                            "allow_other_workers": st.booleans(),
                            "resources": st.sampled_from(TASK_RESOURCES),
                            "custom": st.just("value"),
                        },
                    )
                )
        wanted = data.draw(st.lists(st.sampled_from(keys), min_size=1, unique=True))
        if known and data.draw(st.integers(0, 3)) == 0:
            wanted.append(data.draw(st.sampled_from(known)))
        processing = _by_repr(
            ts.key for ts in state.tasks.values() if ts.state == "processing"
        )
        submitting = None
        if processing and data.draw(st.integers(0, 4)) == 0:
            submitting = data.draw(st.sampled_from(processing))
        return ev.UpdateGraph(
            stimulus_id=self._sid("update-graph"),
            client=client,
            tasks={key: f"spec-{key}" for key in keys},
            dependencies=deps,
            keys=wanted,
            priority=data.draw(
                st.none() | st.just({key: -i for i, key in enumerate(keys)})
            ),
            user_priority=data.draw(
                st.integers(-1, 1)
                | st.dictionaries(st.sampled_from(keys), st.integers(-2, 2))
            ),
            fifo_timeout=data.draw(st.sampled_from([0.0, 1.0])),
            restrictions=restrictions,
            loose_restrictions=loose,
            resources=resources,
            retries=data.draw(
                st.none()
                | st.integers(0, 2)
                | st.dictionaries(st.sampled_from(keys), st.integers(0, 2))
            ),
            annotations=annotations,
            submitting_task=submitting,
            time=self.time,
        )

    def _submit(self, event: ev.UpdateGraph) -> None:
        for key in event.keys:
            self._tell(event.client, key, "pending")
        self.handle(event)
        assert not self.rejections, self.rejections

    @rule(data=st.data(), client=st.sampled_from(CLIENTS))
    def submit_graph(self, data: st.DataObject, client: str) -> None:
        self._submit(self._draw_graph(data, client))

    @rule(
        data=st.data(),
        client=st.sampled_from(CLIENTS),
        width=st.integers(3, 14),
        reduce=st.booleans(),
    )
    def submit_map(
        self, data: st.DataObject, client: str, width: int, reduce: bool
    ) -> None:
        """Many siblings of one group: root-ish, so queued or co-assigned."""
        gid = self._sid("map")
        known = _by_repr(state_key for state_key in self.state.tasks)
        shared_dep = data.draw(st.none() | st.sampled_from(known)) if known else None
        keys = [(f"load-{gid}", i) for i in range(width)]
        deps: dict[Key, list[Key]] = {
            key: [shared_dep] if shared_dep is not None else [] for key in keys
        }
        wanted: list[Key] = list(keys)
        if reduce:
            total = (f"sum-{gid}", 0)
            deps[total] = list(keys)
            wanted = [total]
        self._submit(
            ev.UpdateGraph(
                stimulus_id=self._sid("update-graph"),
                client=client,
                tasks={key: f"spec-{key}" for key in deps},
                dependencies=deps,
                keys=wanted,
                time=self.time,
            )
        )

    @rule(
        data=st.data(),
        client=st.sampled_from(CLIENTS),
        flaw=st.sampled_from(
            ["cycle", "missing-dependency", "unknown-key", "bad-key", "bad-dependency"]
        ),
    )
    def submit_invalid_graph(self, data: st.DataObject, client: str, flaw: str) -> None:
        event = self._draw_graph(data, client)
        tasks = dict(event.tasks)
        deps = {key: list(value) for key, value in event.dependencies.items()}
        keys = list(event.keys)
        root = keys[0]
        new_keys = list(tasks)
        if flaw == "cycle":
            other = data.draw(st.sampled_from(new_keys))
            deps[root].append(other)
            deps[other].append(root)
        elif flaw == "missing-dependency":
            deps[root].append(("missing", self._sid("m")))
        elif flaw == "unknown-key":
            keys.append(("unknown", self._sid("u")))
        elif flaw == "bad-key":
            tasks[True] = "spec"
            keys.append(True)
        else:
            tasks[None] = "spec"
            deps[root].append(None)
        event = dataclasses.replace(event, tasks=tasks, dependencies=deps, keys=keys)
        before = self._snapshot()
        commands = self.state.handle(event)
        if flaw in ("missing-dependency", "unknown-key"):
            # As dask: a graph on data that is gone is cancelled, every
            # wanted key with "lost dependencies".
            assert [type(c) for c in commands] == [KeyCancelled] * len(keys)
            assert [c.key for c in commands] == keys  # type: ignore[attr-defined]
            assert {c.reason for c in commands} == {"lost dependencies"}  # type: ignore[attr-defined]
        else:
            assert len(commands) == 1, commands
            assert isinstance(commands[0], GraphRejected), commands
        assert self._snapshot() == before
        self.check_world()

    # -- clients ---------------------------------------------------------------------

    def _wanted(self, client: str) -> list[Key]:
        cs = self.state.clients.get(client)
        return _by_repr(ts.key for ts in cs.wants_what) if cs is not None else []

    @rule(data=st.data(), client=st.sampled_from(CLIENTS))
    def release_keys(self, data: st.DataObject, client: str) -> None:
        wanted = self._wanted(client)
        keys = (
            data.draw(st.lists(st.sampled_from(wanted), unique=True)) if wanted else []
        )
        for key in keys:
            self.futures[client].pop(key, None)
        self.handle(
            ev.ClientReleasesKeys(
                stimulus_id=self._sid("release"), client=client, keys=keys
            )
        )

    @precondition(lambda self: self.state.tasks)
    @rule(data=st.data(), client=st.sampled_from(CLIENTS))
    def desire_keys(self, data: st.DataObject, client: str) -> None:
        known = _by_repr(self.state.tasks)
        keys = data.draw(
            st.lists(st.sampled_from(known), min_size=1, max_size=3, unique=True)
        )
        cs = self.state.clients.get(client)
        for key in keys:
            ts = self.state.tasks[key]
            if cs is None or ts not in cs.wants_what:
                self._tell(client, key, "pending")
        self.handle(
            ev.ClientDesiresKeys(
                stimulus_id=self._sid("desire"), client=client, keys=keys
            )
        )

    @precondition(lambda self: self.state.tasks)
    @rule(data=st.data(), client=st.sampled_from(CLIENTS), force=st.booleans())
    def cancel_keys(self, data: st.DataObject, client: str, force: bool) -> None:
        candidates = self._wanted(client) or _by_repr(self.state.tasks)
        keys = data.draw(
            st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique=True)
        )
        self.handle(
            ev.CancelRequested(
                stimulus_id=self._sid("cancel"), client=client, keys=keys, force=force
            )
        )

    @precondition(
        lambda self: any(ts.state == "erred" for ts in self.state.tasks.values())
    )
    @rule(data=st.data(), client=st.sampled_from(CLIENTS))
    def retry_keys(self, data: st.DataObject, client: str) -> None:
        erred = _by_repr(
            ts.key
            for ts in self.state.tasks.values()
            if ts.state == "erred" or any(d.state == "erred" for d in ts.dependencies)
        )
        keys = data.draw(st.lists(st.sampled_from(erred), min_size=1, unique=True))
        self.handle(
            ev.RetryRequested(stimulus_id=self._sid("retry"), client=client, keys=keys)
        )

    @precondition(lambda self: any(self._wanted(c) for c in CLIENTS[:2]))
    @rule(data=st.data())
    def remove_client(self, data: st.DataObject) -> None:
        # fire-and-forget never leaves.
        client = data.draw(st.sampled_from([c for c in CLIENTS[:2] if self._wanted(c)]))
        self.handle(ev.ClientRemoved(stimulus_id=self._sid("bye"), client=client))
        self.futures[client] = {}

    @precondition(lambda self: self.state.tasks)
    @rule()
    def restart(self) -> None:
        self.handle(ev.RestartRequested(stimulus_id=self._sid("restart")))

    # -- workers ---------------------------------------------------------------------

    @precondition(lambda self: len(self.sim) < MAX_WORKERS)
    @rule(
        nthreads=st.integers(1, 3),
        resources=st.sampled_from(WORKER_RESOURCES),
        named=st.booleans(),
        memory_limit=st.sampled_from([0, 0, 0, 20_000]),
    )
    def add_worker(
        self,
        nthreads: int,
        resources: dict[str, float],
        named: bool,
        memory_limit: int,
    ) -> None:
        n = self._sid("w")
        address = f"tcp://{n}"
        name = f"name-{n}" if named else None
        self.sim[address] = SimWorker(
            address, address if name is None else name, nthreads, dict(resources)
        )
        self.handle(
            ev.WorkerAdded(
                stimulus_id=self._sid("add-worker"),
                address=address,
                nthreads=nthreads,
                name=name,
                memory_limit=memory_limit,
                resources=resources,
                time=self.time,
            )
        )

    @precondition(lambda self: self.sim)
    @rule(data=st.data(), expected=st.booleans())
    def remove_worker(self, data: st.DataObject, expected: bool) -> None:
        address = data.draw(st.sampled_from(sorted(self.sim)))
        computing = list(self.sim[address].computing)
        executing = data.draw(
            st.none() | st.lists(st.sampled_from(computing), unique=True)
            if computing
            else st.none() | st.just([])
        )
        del self.sim[address]
        self.retiring.pop(address, None)
        self.handle(
            ev.WorkerRemoved(
                stimulus_id=self._sid("remove-worker"),
                address=address,
                expected=expected,
                reason="simulated death",
                executing=executing,
                time=self.time,
            )
        )

    @precondition(lambda self: self.sim)
    @rule(data=st.data(), status=st.sampled_from(["paused", "running"]))
    def change_status(self, data: st.DataObject, status: str) -> None:
        address = data.draw(st.sampled_from(sorted(self.sim)))
        self._heard_from(address)
        self.handle(
            ev.WorkerStatusChanged(
                stimulus_id=self._sid(status), address=address, status=status
            )
        )

    @precondition(lambda self: self.sim)
    @rule(data=st.data(), close=st.booleans())
    def retire_workers(self, data: st.DataObject, close: bool) -> None:
        addresses = data.draw(
            st.lists(st.sampled_from(sorted(self.sim)), min_size=1, max_size=2)
        )
        by_name = data.draw(st.booleans(), label="by_name")
        names = [self.sim[a].name if by_name else a for a in addresses]
        commands = self.state.handle(
            ev.RetireWorkers(
                stimulus_id=self._sid("retire"), workers=names, close_workers=close
            )
        )
        if not any(isinstance(c, RetirementFailed) for c in commands):
            for address in addresses:
                self.retiring[address] = close
        self.apply(commands)
        self.check_world()

    @precondition(lambda self: self.acquire_requests)
    @rule(data=st.data())
    def answer_acquire_replicas(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.acquire_requests) - 1))
        self._answer_acquire(self.acquire_requests.pop(index))

    def _answer_acquire(self, request: AcquireReplicas) -> None:
        recipient = self.sim.get(request.worker)
        if recipient is None:
            return  # it died before copying anything
        self._heard_from(request.worker)
        source = self.sim.get(request.source)
        copied = tuple(
            key for key in request.keys if source is not None and key in source.data
        )
        recipient.data.update(copied)
        self.handle(
            ev.ReplicasAdded(
                stimulus_id=self._sid("replicas"), worker=request.worker, keys=copied
            )
        )

    @precondition(lambda self: self.steal_requests)
    @rule(data=st.data())
    def answer_steal_request(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.steal_requests) - 1))
        started = data.draw(st.booleans(), label="started")
        self._answer_steal(self.steal_requests.pop(index), started)

    def _answer_steal(self, request: StealRequest, started: bool) -> None:
        victim = self.sim.get(request.worker)
        if victim is None:
            return  # a dead worker answers nothing
        self._heard_from(request.worker)
        answer: str | None = None
        if request.key in victim.computing:
            seceded = request.key in victim.seceded
            answer = "executing" if started or seceded else "ready"
        self.handle(
            ev.StealResponse(
                stimulus_id=request.stimulus_id,
                key=request.key,
                worker=request.worker,
                state=answer,
            )
        )

    @precondition(lambda self: self.sim)
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        address = data.draw(st.sampled_from(sorted(self.sim)))
        computing = list(self.sim[address].computing)
        executing = data.draw(
            st.dictionaries(st.sampled_from(computing), st.floats(0.0, 5.0))
            if computing
            else st.just({})
        )
        self._heard_from(address)
        self.handle(
            ev.WorkerHeartbeat(
                stimulus_id=self._sid("heartbeat"),
                address=address,
                executing=executing,
                time=self.time,
            )
        )

    @rule(dt=st.sampled_from([0.1, 1.0, 10.0]), is_idle=st.booleans())
    def tick(self, dt: float, is_idle: bool) -> None:
        self.time += dt
        self.handle(
            ev.Tick(stimulus_id=self._sid("tick"), time=self.time, is_idle=is_idle)
        )

    @rule(data=st.data(), client=st.sampled_from(CLIENTS[:2]), shared=st.booleans())
    def scatter(self, data: st.DataObject, client: str, shared: bool) -> None:
        """Data from outside: on a worker, or only in the shared store."""
        scattered = _by_repr(
            ts.key
            for ts in self.state.tasks.values()
            if ts.run_spec is None and ts.state == "memory"
        )
        workers = sorted(self.sim)
        key = data.draw(st.sampled_from(scattered)) if scattered else None
        if key is None or data.draw(st.booleans(), label="new_key"):
            key = ("data", self._sid("d"))
        else:
            # Same bytes as before: the runtime keeps the kind of copy it has.
            shared = self.state.tasks[key].shared
        if shared or not workers:
            address = data.draw(st.none() | st.sampled_from(workers or [None]))
        else:
            address = data.draw(st.sampled_from(workers))
        if address is None:
            shared = True  # nowhere else to live
        else:
            self.sim[address].data.add(key)
        if shared:
            self.store.add(key)
        self._tell(client, key, "pending")
        self.handle(
            ev.UpdateData(
                stimulus_id=self._sid("scatter"),
                client=client,
                who_has={key: address},
                nbytes={key: 100},
                shared=shared,
                time=self.time,
            )
        )

    # -- tasks on workers ------------------------------------------------------------

    def _finish(
        self,
        address: str,
        key: Key,
        run_id: int,
        nbytes: int,
        shared: bool,
        duration: float = 0.5,
    ) -> None:
        self._heard_from(address)
        sim = self.sim[address]
        del sim.computing[key]
        sim.seceded.discard(key)
        sim.data.add(key)
        if shared:
            self.store.add(key)
        start = self.time
        self.time += duration
        self.handle(
            ev.TaskFinished(
                stimulus_id=self._sid("finished"),
                key=key,
                worker=address,
                run_id=run_id,
                nbytes=nbytes,
                type="int",
                startstops=(("compute", start, self.time),),
                shared=shared,
            )
        )

    @precondition(lambda self: self._runs())
    @rule(
        data=st.data(),
        nbytes=st.sampled_from([0, 100, 5_000, 50_000]),
        shared=st.sampled_from([False, False, True]),
        duration=st.sampled_from([0.5, 1e-4]),
    )
    def finish_task(
        self, data: st.DataObject, nbytes: int, shared: bool, duration: float
    ) -> None:
        address, key, run_id = data.draw(st.sampled_from(self._runs()))
        self._finish(address, key, run_id, nbytes, shared, duration)

    @precondition(lambda self: self._runs())
    @rule(data=st.data())
    def err_task(self, data: st.DataObject) -> None:
        address, key, run_id = data.draw(st.sampled_from(self._runs()))
        self._heard_from(address)
        sim = self.sim[address]
        del sim.computing[key]
        sim.seceded.discard(key)
        self.handle(
            ev.TaskErred(
                stimulus_id=self._sid("erred"),
                key=key,
                worker=address,
                run_id=run_id,
                exception=RuntimeError(f"boom {key!r}"),
                exception_text=f"boom {key!r}",
                traceback_text="Traceback: ...",
            )
        )

    @precondition(lambda self: self.stale_runs)
    @rule(data=st.data(), erred=st.booleans(), shared=st.booleans())
    def send_stale_answer(self, data: st.DataObject, erred: bool, shared: bool) -> None:
        """A run's answer that crossed the FreeKeys which ended it.

        The worker has since obeyed that FreeKeys: it holds nothing of the run.
        """
        index = data.draw(st.integers(0, len(self.stale_runs) - 1))
        address, key, run_id = self.stale_runs[index]
        # Older answers of that worker had to come first.
        self.stale_runs = [
            r for i, r in enumerate(self.stale_runs) if i > index or r[0] != address
        ]
        if erred:
            event: ev.StateEvent = ev.TaskErred(
                stimulus_id=self._sid("stale-erred"),
                key=key,
                worker=address,
                run_id=run_id,
                exception=RuntimeError("stale"),
                exception_text="stale",
            )
        else:
            event = ev.TaskFinished(
                stimulus_id=self._sid("stale-finished"),
                key=key,
                worker=address,
                run_id=run_id,
                nbytes=10,
                shared=shared,
            )
        self.handle(event)

    @precondition(
        lambda self: any(set(s.computing) - s.seceded for s in self.sim.values())
    )
    @rule(data=st.data(), known=st.booleans())
    def secede_task(self, data: st.DataObject, known: bool) -> None:
        runs = [r for r in self._runs() if r[1] not in self.sim[r[0]].seceded]
        address, key, run_id = data.draw(st.sampled_from(runs))
        self._heard_from(address)
        self.sim[address].seceded.add(key)
        self.handle(
            ev.TaskSeceded(
                stimulus_id=self._sid("secede"),
                key=key,
                worker=address,
                compute_duration=0.25 if known else None,
                run_id=run_id,
            )
        )

    @precondition(lambda self: self._runs())
    @rule(data=st.data(), raised=st.booleans())
    def reschedule_task(self, data: st.DataObject, raised: bool) -> None:
        address, key, _ = data.draw(st.sampled_from(self._runs()))
        if raised:
            # The task raised Reschedule: the worker no longer runs it.
            self._heard_from(address)
            sim = self.sim[address]
            del sim.computing[key]
            sim.seceded.discard(key)
        self.handle(
            ev.RescheduleRequested(
                stimulus_id=self._sid("reschedule"),
                key=key,
                worker=address if raised else None,
            )
        )

    @precondition(lambda self: self._held())
    @rule(data=st.data())
    def lose_replica(self, data: st.DataObject) -> None:
        address, key = data.draw(st.sampled_from(self._held()))
        self.sim[address].data.discard(key)
        self.handle(
            ev.MissingData(stimulus_id=self._sid("missing"), key=key, worker=address)
        )

    @precondition(lambda self: self.store)
    @rule(data=st.data())
    def lose_shared_data(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(_by_repr(self.store)))
        self.store.discard(key)
        for sim in self.sim.values():
            sim.data.discard(key)
        self.handle(
            ev.MissingData(stimulus_id=self._sid("missing"), key=key, worker=None)
        )

    # -- liveness --------------------------------------------------------------------

    @rule()
    def settle_and_check_liveness(self) -> None:
        self.settle()

    def settle(self) -> None:
        """Answer everything and finish every task until the core is quiet."""
        state = self.state
        if not state.running:
            self.add_worker(nthreads=1, resources={}, named=False, memory_limit=0)
        ticked = False
        for _ in range(1_000 + 20 * len(state.tasks)):
            if self.acquire_requests:
                self._answer_acquire(self.acquire_requests.pop(0))
            elif self.steal_requests:
                self._answer_steal(self.steal_requests.pop(0), started=False)
            elif runs := self._runs():
                for address, key, run_id in runs:
                    sim = self.sim.get(address)
                    if sim is not None and sim.computing.get(key) == run_id:
                        self._finish(address, key, run_id, nbytes=100, shared=False)
            elif not ticked:
                # Far in the future: no-worker timeouts fire, stealing balances.
                ticked = True
                self.time += 1_000.0
                self.handle(ev.Tick(stimulus_id=self._sid("tick"), time=self.time))
            else:
                break
        else:
            raise AssertionError("the scheduler never settled")
        self.check_liveness()

    def check_liveness(self) -> None:
        state = self.state
        running = [self.sim[ws.address] for ws in state.running]
        assert running
        for ws in state.workers.values():
            assert not ws.processing, ws
            assert ws.status != "closing_gracefully", f"{ws.address} never retired"
        assert not state.queued, f"queued with free workers: {state.queued.sorted()}"
        for ts in state.unrunnable:
            able = [w.address for w in running if self._may_run(ts, w)]
            assert not able, f"{ts} in no-worker although {able} may run it"
        for ts in state.tasks.values():
            if ts.who_wants and ts.state not in ("memory", "erred"):
                assert ts.state in ("waiting", "no-worker"), ts
                assert self._blocked(ts), f"{ts} is wanted but stuck"
            if ts.state == "memory":
                assert ts.who_wants or ts.waiters, f"{ts} is kept but nobody needs it"

    @staticmethod
    def _blocked(ts: TaskState) -> bool:
        """Whether ``ts`` needs, directly or not, a task no worker may run."""
        stack, seen = [ts], set()
        while stack:
            t = stack.pop()
            if t.state == "no-worker":
                return True
            for dts in t.dependencies:
                if dts.state != "memory" and dts not in seen:
                    seen.add(dts)
                    stack.append(dts)
        return False

    def teardown(self) -> None:
        # Only a run that went well so far is worth a liveness check; a failed
        # step is already the error to report.
        if sys.exc_info()[1] is None:
            self.settle()


_profile = settings()  # the profile tests/conftest.py loaded


class TestSchedulerStateMachine(SchedulerMachine.TestCase):  # type: ignore[misc,valid-type]
    # pytest-timeout is only a deadlock guard: scale it with the profile's work,
    # plus hypothesis' five minutes of shrinking when it finds a failure.
    pytestmark = pytest.mark.timeout(
        300 + _profile.max_examples * _profile.stateful_step_count // 10
    )
