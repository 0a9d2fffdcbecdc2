"""Memory management: one budget for the machine's workers, dask's thresholds.

Theory of operation
-------------------
::

    every ~150 ms on the scheduler thread (MemoryMonitor.tick)
      sample ── psutil: each worker's unmanaged memory (anonymous RSS)
             ── BlobStore: managed memory (its segments in RAM), what can spill
         │
         ▼
      decide(sample, thresholds)   pure: readings in, a MemoryDecision out
         │
         ▼
      apply: store.spill(n) · WorkerStatusChanged(paused/running) · kill a worker
             (exit_cause names its memory use) · rate-limited log lines

Results do not live in the workers here: they are shared-memory segments the
scheduler's :class:`~localsched.transport.shm.BlobStore` owns. So *managed*
memory is the store's segments in RAM (live values not spilled, plus leased and
pooled segments), and a worker's *unmanaged* memory is what its process holds
itself: its anonymous resident pages, ``rss - shared`` from ``/proc/<pid>/statm``
(``RssAnon``). Pages of our segments that a worker maps and only reads are
``RssShmem``, inside ``shared``: they are managed memory already, counted once,
by the store. Pages it writes through its copy-on-write mapping become anonymous,
so they count as its own, rightly: they die with it. USS would also count the
shared libraries' private pages and costs a walk of ``smaps`` (milliseconds per
sample); PSS splits our segments between readers. ``RssAnon`` is exact for what
restarting a worker gives back, and cheap.

The budget is the sum of the workers' ``memory_limit`` (dask's per-worker
setting; ``"auto"`` splits the machine's memory as dask does), capped by the
machine's available memory: what our workers and results use now plus what the
kernel reports as available, so programs outside the cluster that grow shrink it.
With thresholds as fractions (dask's defaults):

- **target 0.6 / spill 0.7**: when managed memory passes target * budget, or all
  memory (managed + every worker's unmanaged) passes spill * budget, move values
  to disk, least recently used first, until it is back under target * budget.
- **pause 0.8**: a worker whose own (unmanaged) memory passes pause * its limit
  gets no new tasks until it drops below; so does every worker while all memory
  passes pause * budget after spilling. A worker paused for ``pause_timeout``
  seconds with nothing to run is restarted instead of hanging the computation
  (for the budget: the one holding the most, if a restart can help).
- **terminate 0.95**: a worker running tasks whose own memory passes terminate *
  its limit, or, when all memory passes terminate * budget, the busy worker with
  the most unmanaged memory, is killed; its ``exit_cause`` says why and names
  the tasks it was running, which count as suspicious (``KilledWorker`` after
  ``allowed_failures``). An idle worker has nothing to blame: it is paused and
  restarted after ``pause_timeout``, so a limit below a fresh worker's own size
  does not restart workers in a tight loop.

Results belong to no worker: they count toward the budget, never toward one
worker's limit, and never make a worker restart (they would outlive it).

Spilling runs on the scheduler thread, at most ``SPILL_TIME_LIMIT`` seconds of
copying per sample (the rest on the next ones), so scheduling goes on. Log lines
are rate-limited per (kind, worker) and carry the count of those held back, so a
worker swinging around a threshold writes one line per interval.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from localsched.runtime.memory_limits import parse_memory_limit, system_memory_limit
from localsched.scheduler import events as ev
from localsched.transport.protocol import SetPaused
from localsched.units import format_bytes

if TYPE_CHECKING:
    from localsched.runtime.handles import WorkerHandle
    from localsched.runtime.recording import Recorder
    from localsched.runtime.scheduler_thread import PeriodicCallback, SchedulerRuntime

__all__ = [
    "MemoryDecision",
    "MemoryMonitor",
    "MemorySample",
    "MemoryThresholds",
    "WorkerSample",
    "decide",
    "parse_memory_limit",
    "system_memory_limit",
]

logger = logging.getLogger("localsched.runtime.memory")

#: Seconds between samples (dask's ``distributed.worker.memory.monitor-interval``
#: is 100 ms; a sample of every worker costs about 20 us each).
MONITOR_INTERVAL = 0.15
#: Seconds between two log lines of one kind about one worker.
LOG_INTERVAL = 5.0
#: Seconds of copying to disk per sample at most: the scheduler thread spills,
#: and must keep scheduling; what is left is spilled on the next samples.
SPILL_TIME_LIMIT = 0.1

_DASK_KEYS = {
    "target": "distributed.worker.memory.target",
    "spill": "distributed.worker.memory.spill",
    "pause": "distributed.worker.memory.pause",
    "terminate": "distributed.worker.memory.terminate",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryThresholds:
    """Fractions of the budget (None: that action is off), as dask's
    ``distributed.worker.memory.{target,spill,pause,terminate}``."""

    target: float | None = 0.6
    spill: float | None = 0.7
    pause: float | None = 0.8
    terminate: float | None = 0.95
    #: Seconds a paused worker with nothing to spill or run waits for a restart.
    pause_timeout: float = 30.0

    @classmethod
    def resolve(
        cls, pause_timeout: float = 30.0, **fractions: float | bool | None
    ) -> MemoryThresholds:
        """Thresholds from keyword arguments (``target=0.5``, ``pause=False``),
        else from dask's config when the program imported dask, else defaults.

        ``False`` turns an action off, as in dask's config.
        """
        config = sys.modules.get("dask.config")
        values: dict[str, float | None] = {}
        for name, key in _DASK_KEYS.items():
            value = fractions.pop(name, None)
            if value is None and config is not None:
                value = config.get(key, None)
            if value is None:
                value = getattr(cls(), name)
            if value is False:
                value = None
            elif value is not None:
                value = float(value)
                if not 0 < value <= 1:
                    raise ValueError(f"memory {name} fraction must be in (0, 1]")
            values[name] = value
        if fractions:
            raise TypeError(f"unknown memory thresholds: {sorted(fractions)}")
        return cls(pause_timeout=pause_timeout, **values)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSample:
    """One worker's reading."""

    address: str
    limit: int  #: its memory_limit in bytes; 0: none
    unmanaged: int  #: anonymous resident bytes of its process
    status: str  #: the core's status: running, paused, closing_gracefully...
    #: When the monitor paused it (None: not paused by the monitor).
    paused_since: float | None = None
    is_busy: bool = False  #: tasks are processing on it
    restartable: bool = True  #: a process of its own (not a thread of ours)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemorySample:
    """Everything :func:`decide` looks at, read at ``time``."""

    time: float
    managed: int  #: RAM the store's segments hold
    spillable: int  #: of which spill() can give back
    workers: tuple[WorkerSample, ...]
    machine_limit: int = 0  #: cap on the budget; 0: none


@dataclass(slots=True)
class MemoryDecision:
    """What to do now; ``notes`` are (level, kind, subject, message) log lines."""

    spill: int = 0
    budget: int = 0
    pause: dict[str, str] = field(default_factory=dict)  # address -> why
    resume: list[str] = field(default_factory=list)
    terminate: dict[str, str] = field(default_factory=dict)  # address -> cause
    restart: dict[str, str] = field(default_factory=dict)  # address -> cause
    notes: list[tuple[int, str, str, str]] = field(default_factory=list)


def decide(sample: MemorySample, thresholds: MemoryThresholds) -> MemoryDecision:
    """The monitor's policy: a pure function of one sample (module docstring)."""
    decision = MemoryDecision()
    limited = [w for w in sample.workers if w.limit > 0]
    if not limited:
        return decision
    limits = sum(w.limit for w in limited)
    budget = min(limits, sample.machine_limit) if sample.machine_limit else limits
    decision.budget = budget
    scale = budget / limits  # per-worker limits shrink if they overcommit
    t = thresholds
    total = sample.managed + sum(w.unmanaged for w in sample.workers)
    need = _spill_need(sample.managed, total, budget, t)
    decision.spill = max(0, min(math.ceil(need), sample.spillable))
    managed = sample.managed - decision.spill
    after = total - decision.spill
    if t.spill is not None and after > t.spill * budget:
        decision.notes.append(
            (
                logging.WARNING,
                "unmanaged",
                "",
                f"Memory use is high: the workers use {format_bytes(after)} of"
                f" their {format_bytes(budget)} budget after spilling all it"
                f" could, {format_bytes(after - managed)} of it in the worker"
                " processes themselves (unmanaged: objects tasks create or keep,"
                " or memory not returned to the system).",
            )
        )
    # Past pause for the whole budget, even after spilling: no worker gets new
    # tasks, whatever its own memory.
    crowded = t.pause is not None and after > t.pause * budget
    crowded_paused = []
    for w in limited:
        limit = w.limit * scale
        own = f"{format_bytes(w.unmanaged)} of its own memory"
        if (
            t.terminate is not None
            and w.unmanaged > t.terminate * limit
            and w.restartable
            # An idle one has no task to blame: it is paused, and restarted
            # after pause_timeout, which also keeps a limit below a fresh
            # worker's own size from restarting workers in a tight loop.
            and w.is_busy
        ):
            decision.terminate[w.address] = (
                f"the memory monitor restarted it: it used {own}, more than"
                f" {t.terminate:.0%} of its memory limit of {format_bytes(limit)}"
            )
        elif t.pause is not None and (crowded or w.unmanaged > t.pause * limit):
            over_own = w.unmanaged > t.pause * limit
            if w.status == "running":
                decision.pause[w.address] = (
                    f"Worker {w.address} uses {own}, more than {t.pause:.0%} of"
                    f" its memory limit of {format_bytes(limit)}: paused, it gets"
                    " no new tasks until its memory use falls below that."
                    if over_own
                    else ""  # one line for all of them, below
                )
            elif (
                w.paused_since is not None
                and sample.time - w.paused_since >= t.pause_timeout
                and not w.is_busy
                and w.restartable
                and over_own
            ):
                decision.restart[w.address] = (
                    f"the memory monitor restarted it: paused for"
                    f" {sample.time - w.paused_since:.0f} s with nothing to run, it"
                    f" still used {own}, more than {t.pause:.0%} of its memory"
                    f" limit of {format_bytes(limit)}"
                )
            elif w.paused_since is not None:
                crowded_paused.append(w)
        elif w.status == "paused" and w.paused_since is not None:
            decision.resume.append(w.address)
    if crowded:
        _on_crowded(decision, sample, crowded_paused, after, managed, budget, t)
    _terminate_for_budget(decision, sample, after, managed, budget, t)
    return decision


def _on_crowded(
    decision: MemoryDecision,
    sample: MemorySample,
    paused: list[WorkerSample],
    after: int,
    managed: int,
    budget: int,
    t: MemoryThresholds,
) -> None:
    """All memory is past pause: one line for the workers paused for it, and
    after ``pause_timeout``, the restart of the idle one holding the most."""
    assert t.pause is not None
    usage = (
        f"the workers use {format_bytes(after)} ({format_bytes(managed)} of"
        f" results in shared memory), more than {t.pause:.0%} of their"
        f" {format_bytes(budget)} budget"
    )
    crowded = [address for address, why in decision.pause.items() if not why]
    if crowded:
        decision.notes.append(
            (
                logging.WARNING,
                "pause",
                "",
                f"Workers {', '.join(crowded)} paused: {usage}. They get no new"
                " tasks until memory use falls below that.",
            )
        )
    idle = [
        w
        for w in paused
        if sample.time - (w.paused_since or sample.time) >= t.pause_timeout
        and not w.is_busy
        and w.restartable
        and w.unmanaged > 0
    ]
    # Only if a restart can help: results do not die with a worker.
    if idle and managed <= t.pause * budget:
        worst = max(idle, key=lambda w: w.unmanaged)
        decision.restart[worst.address] = (
            f"the memory monitor restarted it: paused for"
            f" {sample.time - (worst.paused_since or 0):.0f} s with nothing to run"
            f" while {usage}, and it held the most unmanaged memory"
            f" ({format_bytes(worst.unmanaged)})"
        )


def _terminate_for_budget(
    decision: MemoryDecision,
    sample: MemorySample,
    after: int,
    managed: int,
    budget: int,
    t: MemoryThresholds,
) -> None:
    """All memory past terminate: restart the busy worker (or one without a
    limit) holding the most unmanaged memory, if a restart can help."""
    if (
        t.terminate is None
        or after <= t.terminate * budget
        or managed > t.terminate * budget  # results do not die with a worker
        or decision.terminate
    ):
        return
    candidates = [
        w
        for w in sample.workers
        if w.unmanaged > 0 and w.restartable and (w.is_busy or not w.limit)
    ]
    if candidates:
        worst = max(candidates, key=lambda w: w.unmanaged)
        decision.terminate[worst.address] = (
            f"the memory monitor restarted it: the workers used"
            f" {format_bytes(after)}, more than {t.terminate:.0%} of their"
            f" {format_bytes(budget)} budget, and it held the most unmanaged"
            f" memory ({format_bytes(worst.unmanaged)})"
        )


def _spill_need(managed: int, total: int, budget: int, t: MemoryThresholds) -> float:
    """Bytes of managed memory to spill, by dask's rules: managed memory past
    target, or all memory past spill, back down to target."""
    target = t.target if t.target is not None else t.spill
    if target is None:
        return 0.0
    need = 0.0
    if t.target is not None and managed > t.target * budget:
        need = managed - t.target * budget
    if t.spill is not None and total > t.spill * budget:
        need = max(need, total - target * budget)
    return need


class RateLimitedLog:
    """At most one line per (kind, subject) per ``interval`` seconds; a line
    says how many like it were held back since the previous one."""

    def __init__(
        self,
        log: logging.Logger,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.interval = interval
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def __call__(self, level: int, kind: str, subject: str, message: str) -> bool:
        """Log ``message`` unless one of its kind was logged lately; True if so."""
        key = (kind, subject)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        held = self._held.pop(key, 0)
        if held:
            message += (
                f" ({held} more like this in the last {now - last:.0f} s"  # type: ignore[operator]
                " were not logged)"
            )
        self._last[key] = now
        self.log.log(level, message)
        return True


def _is_executing(handle: WorkerHandle, ws: Any) -> bool:
    """Whether the worker runs a task now. Tasks merely queued on a paused
    worker do not count: they wait for the pause, so a worker paused for good
    with a queue must still be restarted after ``pause_timeout``."""
    page = handle.executing_page
    if page is None:
        return bool(ws.processing)
    running = page.executing()
    return True if running is None else bool(running)


def _available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


class MemoryMonitor:
    """Samples memory, applies :func:`decide` (module docstring).

    Parameters
    ----------
    runtime
        The scheduler runtime; :meth:`tick` runs on its thread.
    thresholds
        Fractions of the budget; see :class:`MemoryThresholds`.
    machine_limit
        Cap on the budget. Default: the machine's available memory, sampled
        each time (what the workers and stored results use now plus
        ``MemAvailable``), never above :func:`system_memory_limit`.
    interval
        Seconds between samples.
    """

    def __init__(
        self,
        runtime: SchedulerRuntime,
        thresholds: MemoryThresholds | None = None,
        *,
        machine_limit: int | None = None,
        interval: float = MONITOR_INTERVAL,
        log_interval: float = LOG_INTERVAL,
    ) -> None:
        self.runtime = runtime
        self.thresholds = thresholds or MemoryThresholds()
        #: None: the cap follows the memory the machine has for us now.
        self.fixed_machine_limit = machine_limit
        self.machine_limit = (
            system_memory_limit() if machine_limit is None else machine_limit
        )
        #: Reads the machine's available bytes (``MemAvailable``).
        self.read_available: Callable[[], int] = _available_memory
        self.interval = interval
        self.log = RateLimitedLog(logger, log_interval)
        self.clock: Callable[[], float] = time.monotonic
        #: Reads a pid's unmanaged bytes; None: the process is gone.
        self.read_unmanaged: Callable[[int], int | None] = _ProcessReader()
        self.last_decision = MemoryDecision()
        self._paused_at: dict[str, float] = {}
        self._killed: set[str] = set()
        #: (values, bytes spilled, pooled bytes unlinked) since the last report.
        self._spilled = (0, 0, 0)
        self._spills_reported = -math.inf
        self._periodic: PeriodicCallback | None = None

    def start(self) -> None:
        """Sample every ``interval`` seconds on the scheduler thread."""
        self._periodic = self.runtime.add_periodic(
            self.interval, self.tick, "memory-monitor"
        )

    def stop(self) -> None:
        if self._periodic is not None:
            self._periodic.stop()
            self._periodic = None

    def tick(self) -> MemoryDecision:
        """One sample, one decision, applied (scheduler thread)."""
        decision = decide(self.sample(), self.thresholds)
        self.apply(decision)
        if decision.spill == 0:
            self._report_spills(decision.budget)  # what the last line held back
        self.last_decision = decision
        return decision

    def sample(self) -> MemorySample:
        runtime = self.runtime
        states = runtime.scheduler.state.workers
        own_pid = os.getpid()
        workers = []
        for address, handle in list(runtime.workers.items()):
            ws = states.get(address)
            if ws is None or not handle.is_ready or address in self._killed:
                continue
            restartable = bool(handle.pid) and handle.pid != own_pid
            unmanaged = self.read_unmanaged(handle.pid) if restartable else 0
            if unmanaged is None:
                continue  # exiting: its sentinel will tell
            workers.append(
                WorkerSample(
                    address=address,
                    limit=handle.memory_limit,
                    unmanaged=unmanaged,
                    status=str(ws.status),
                    paused_since=self._paused_at.get(address),
                    is_busy=_is_executing(handle, ws),
                    restartable=restartable,
                )
            )
        known = set(runtime.workers)
        forget = getattr(self.read_unmanaged, "forget_others", None)
        if forget is not None:
            forget({handle.pid for handle in runtime.workers.values()})
        self._killed &= known
        for address in set(self._paused_at) - known:
            del self._paused_at[address]
        store = runtime.store
        managed = store.memory_bytes
        machine_limit = self.machine_limit
        if self.fixed_machine_limit is None:
            # The machine's available memory: what we hold (segments are shmem,
            # never "available"; workers' anonymous pages neither) plus what is
            # still free for us. Other programs growing shrink our budget.
            ours = managed + sum(w.unmanaged for w in workers)
            machine_limit = min(machine_limit, ours + self.read_available())
        return MemorySample(
            time=self.clock(),
            managed=managed,
            spillable=store.spillable_bytes,
            workers=tuple(workers),
            machine_limit=machine_limit,
        )

    def apply(self, decision: MemoryDecision) -> None:
        runtime = self.runtime
        recorder = runtime.recorder
        if recorder is not None:
            _record(recorder, decision)
        if decision.spill:
            self._spill(decision.spill, decision.budget)
        events: list[ev.StateEvent] = []
        now = self.clock()
        for address, why in decision.pause.items():
            self._paused_at[address] = now
            events.append(self._status(address, "paused"))
            self._tell_worker(address, paused=True)
            if why:  # else one note tells about all paused for the budget
                self.log(logging.WARNING, "pause", address, why)
        for address in decision.resume:
            self._paused_at.pop(address, None)
            events.append(self._status(address, "running"))
            self._tell_worker(address, paused=False)
            self.log(
                logging.INFO,
                "resume",
                address,
                f"Worker {address} is below its pause threshold again: resumed.",
            )
        if events:
            runtime.post(*events)
        for address, cause in decision.terminate.items():
            handle = runtime.workers.get(address)
            if handle is not None:
                self._kill(handle, cause + self._running(handle), restarting=False)
        for address, cause in decision.restart.items():
            handle = runtime.workers.get(address)
            if handle is not None:
                self._kill(handle, cause, restarting=True)
        for level, kind, subject, message in decision.notes:
            self.log(level, kind, subject, message)

    def _tell_worker(self, address: str, paused: bool) -> None:
        """The core stops placing tasks on a paused worker; the worker itself
        must also stop starting the ones already queued there, as dask's does."""
        handle = self.runtime.workers.get(address)
        if handle is not None:
            handle.outbox.append(SetPaused(paused=paused))  # sent this turn

    def _spill(self, nbytes: int, budget: int) -> None:
        store = self.runtime.store
        before, before_bytes = store.spill_count, store.spilled_total_bytes
        try:
            freed = store.spill(nbytes, time_limit=SPILL_TIME_LIMIT)
        except OSError as exc:
            self.log(
                logging.WARNING,
                "spill-failed",
                "",
                f"Could not spill results to {store.spill_directory or 'disk'}:"
                f" {exc}. They stay in memory.",
            )
            return
        values, spilled, pooled = self._spilled
        moved = store.spilled_total_bytes - before_bytes
        self._spilled = (
            values + store.spill_count - before,
            spilled + moved,
            pooled + freed - moved,
        )
        self._report_spills(budget)

    def _report_spills(self, budget: int) -> None:
        """One INFO line per ``log_interval`` sums up the spilling since the last."""
        values, spilled, pooled = self._spilled
        now = self.clock()
        if not (values or pooled) or now - self._spills_reported < self.log.interval:
            return
        self._spilled = (0, 0, 0)
        self._spills_reported = now
        logger.info(
            "Spilled %d results (%s) to %s and gave back %s of pooled segments,"
            " to keep memory within the thresholds of the %s budget.",
            values,
            format_bytes(spilled),
            self.runtime.store.spill_directory or "disk",
            format_bytes(pooled),
            format_bytes(budget),
        )

    def _status(self, address: str, status: str) -> ev.WorkerStatusChanged:
        return ev.WorkerStatusChanged(
            stimulus_id=self.runtime.stimulus_id(f"memory-{status}"),
            address=address,
            status=status,
        )

    def _running(self, handle: WorkerHandle) -> str:
        """The text naming the tasks it runs, if they can be told."""
        keys: list[Any] | None = None
        executing = getattr(self.runtime, "executing_keys", None)
        if executing is not None:
            keys = executing(handle)
        if keys is None:
            ws = self.runtime.scheduler.state.workers.get(handle.address)
            keys = [] if ws is None else [ts.key for ts in ws.processing]
        return f", while executing {keys!r}" if keys else ""

    def _kill(self, handle: WorkerHandle, cause: str, restarting: bool) -> None:
        self._killed.add(handle.address)
        self._paused_at.pop(handle.address, None)
        handle.exit_cause = cause
        handle.restarting = handle.restarting or restarting
        self.log(
            logging.WARNING,
            "restart",
            handle.address,
            f"Restarting worker {handle.address} (pid {handle.pid}): {cause}.",
        )
        handle.process.kill()


def _record(recorder: Recorder, decision: MemoryDecision) -> None:
    """The decision's events, for a ``performance_report`` being recorded."""
    recorder.budget = decision.budget
    for address, why in decision.pause.items():
        recorder.event("paused", address, why)
    for address in decision.resume:
        recorder.event("resumed", address)
    for address, cause in decision.terminate.items():
        recorder.event("terminated", address, cause)
    for address, cause in decision.restart.items():
        recorder.event("restarting", address, cause)
    if decision.spill:
        recorder.event("spilled", "", f"up to {format_bytes(decision.spill)}")


class _ProcessReader:
    """``rss - shared`` of a pid via psutil, with one ``Process`` per pid."""

    def __init__(self) -> None:
        self._processes: dict[int, Any] = {}

    def __call__(self, pid: int) -> int | None:
        import psutil

        process = self._processes.get(pid)
        try:
            if process is None:
                process = self._processes[pid] = psutil.Process(pid)
            info = process.memory_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self._processes.pop(pid, None)
            return None
        return max(0, int(info.rss) - int(getattr(info, "shared", 0)))

    def forget_others(self, pids: set[int]) -> None:
        """Drop the processes of workers that are gone."""
        for pid in set(self._processes) - pids:
            del self._processes[pid]
