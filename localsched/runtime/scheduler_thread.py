"""``SchedulerRuntime``: the one scheduler thread, which does all the IO.

Theory of operation
-------------------
::

    client threads ──post()──▶ inbox (deque) + Wakeup ──┐
                                                        ▼
    worker pipes ────────────────────────────▶ wait([wakeup, pipes, sentinels])
    worker sentinels (process exits) ─────────▶        │
                                                        ▼
                    drain everything ready ─▶ events ─▶ Scheduler.handle()
                                                        │ commands
                            ┌───────────────────────────┼──────────────────────┐
                            ▼                           ▼                      ▼
                 per-worker batch (one send)   FutureState of clients   data store

The thread owns the scheduler core, the worker handles and the results. Client
threads never touch them: they post events (or a function to run here) and wait
on their futures' states. One loop turn drains every inbox item and every ready
pipe, feeds all resulting events to the core in one ``handle`` call, carries out
the commands, and sends each worker at most one batch.

Results live here, not in the workers: a small result travels inline and is
kept as bytes, a large one stays in its shared-memory segment (owned by the
``BlobStore``). So a worker that dies loses only the tasks it was running.

Beside this module: ``runtime_handles`` (the records of workers and clients),
``request_handler`` (the one handler of every client's requests, whichever
link carried them), ``runtime_requests`` (``Client.run``) and ``supervision``
(worker deaths), the last two mixed into :class:`SchedulerRuntime`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future as CellFuture
from typing import TYPE_CHECKING, Any

from localsched.aio import fulfil, new_cell
from localsched.errors import ClosedClientError, SchedulerStoppedError
from localsched.future_state import FutureState
from localsched.runtime.actor_calls import actor_calls_of
from localsched.runtime.allocator import AllocatorTrim
from localsched.runtime.collector import paused_for_graphs
from localsched.runtime.event_log import EventLog
from localsched.runtime.handles import (
    ClientHandle,
    WorkerClientHandle,
    WorkerHandle,
)
from localsched.runtime.request_handler import serve_worker, take_worker_events
from localsched.runtime.run_requests import Runs
from localsched.runtime.supervision import (
    close_stderr_relays,
    describe_exit,
    executing_keys,
    read_oom_kills,
    worker_exited,
)
from localsched.runtime.task_outcomes import exception_of, result_not_adopted
from localsched.scheduler import commands as cmd
from localsched.scheduler import events as ev
from localsched.transport import inproc
from localsched.transport.inproc import LocalRef
from localsched.transport.protocol import (
    ActorAnswer,
    ExtendPath,
    ForgetKeys,
    FunctionResult,
    Goodbye,
    GrantSegments,
    Heartbeat,
    Hello,
    LinkEvents,
    LinkRequest,
    LongRunning,
    Message,
    Payload,
    ProtocolError,
    RunTask,
    Shutdown,
    StealAnswer,
    StealQuery,
    Stored,
    TaskDone,
    TaskFailed,
    WorkerInfo,
    decode_batch,
    encode_batch,
    merge_forgets,
)
from localsched.transport.shm import BlobRef, load
from localsched.transport.wakeup import Wakeup
from localsched.worker.diagnostics import LogRing

if TYPE_CHECKING:
    from localsched.client.graph import TaskSpec
    from localsched.runtime.recording import Recorder
    from localsched.scheduler.scheduler import Scheduler
    from localsched.transport.shm import BlobStore

logger = logging.getLogger("localsched.runtime.scheduler_thread")

__all__ = [
    "ClientHandle",
    "PeriodicCallback",
    "SchedulerRuntime",
    "WorkerClientHandle",
    "WorkerHandle",
    "describe_exit",
]

Key = Hashable

#: Seconds between timer ticks (stealing balance, heartbeats, adaptive).
TICK_INTERVAL = 0.5
#: Free segments a worker may hold for its next large results.
MAX_LEASES_PER_WORKER = 4
# What a polled file descriptor of a worker is.
_PIPE, _SENTINEL, _STDERR = 0, 1, 2


class SchedulerRuntime:
    """Owns the scheduler thread; see the module docstring."""

    def __init__(
        self,
        scheduler: Scheduler,
        store: BlobStore,
        on_worker_exit: Callable[[WorkerHandle, bool], None] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.store = store
        self.on_worker_exit = on_worker_exit
        #: key -> serialized result (inline bytes or a shared-memory ref).
        self.data: dict[Key, bytes | BlobRef] = {}
        #: key -> address of the worker that wrote the key's shared-memory result.
        self._producers: dict[Key, str] = {}
        self.workers: dict[str, WorkerHandle] = {}
        self.clients: dict[str, ClientHandle] = {}
        self._inbox: deque[Any] = deque()
        self._wakeup = Wakeup()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped = threading.Event()
        #: The exception that ended the loop (None: running, or stopped by ``stop``).
        self.failure: BaseException | None = None
        self._next_tick = 0.0
        self._poller = select.poll()
        self._poller.register(self._wakeup.fileno(), select.POLLIN)
        #: fd -> (worker, which of its fds: _PIPE, _SENTINEL or _STDERR).
        self._fds: dict[int, tuple[WorkerHandle, int]] = {}
        self._polled: set[str] = set()
        #: Readiness checks of the workers' pipes (``_pipe_readable``).
        self._pipe_checks: dict[WorkerHandle, Callable[[], bool]] = {}
        self._stimulus_ids = itertools.count()
        self.tasks_finished = 0
        #: (key, spec) of tasks whose arguments live in shared memory: noted
        #: once the core has handled their graph, swept on ticks.
        self._arg_blobs: list[tuple[Key, Any]] = []
        #: Frees memory after a large release (the process's, not the tasks').
        self.allocator = AllocatorTrim()
        #: ``Client.run`` calls waiting for replies, by id.
        #: ``Client.run`` calls waiting for their workers' answers.
        self.runs = Runs(self.workers)
        #: Callbacks run on this thread every so often (adaptive, memory, ...).
        self._periodic: list[PeriodicCallback] = []
        #: The cgroup's OOM-kill count when last read (supervision.py).
        self.oom_kills_seen = read_oom_kills() or 0
        #: Topics, their recent events and subscribers (``log_event``).
        self.event_log = scheduler.event_log = EventLog(self._deliver_event)
        #: The last records of the ``localsched`` logger in this process, while
        #: the thread runs (``Client.get_scheduler_logs``).
        self.log_ring = LogRing()
        self._detach_log_ring: Callable[[], None] | None = None
        #: The recording of ``performance_report`` and ``get_task_stream(plot=)``
        #: while one is open (``runtime.recording``); None: the taps cost nothing.
        self.recorder: Recorder | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._detach_log_ring = self.log_ring.install(logging.getLogger("localsched"))
        self._thread = threading.Thread(
            target=self._run, name="localsched-scheduler", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after the current loop turn; idempotent.

        Also after the loop died on an exception: the wakeup pipe is closed
        here, never by the loop, since clients may still post to it.
        """
        if self._thread is None:
            return
        if not self._stopped.is_set():
            self._stopping = True
            self._wakeup.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._wakeup.close()
        if self._detach_log_ring is not None:
            self._detach_log_ring()
            self._detach_log_ring = None

    def _deliver_event(self, client_id: str, topic: str, event: Any) -> None:
        """Send a subscriber an event (``EventLog``; scheduler thread)."""
        client = self.clients.get(client_id)
        if client is None:
            self.event_log.forget_client(client_id)
        else:
            client.deliver(topic, event)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and not self._stopped.is_set()

    def executing_keys(self, handle: WorkerHandle) -> list[Hashable] | None:
        """Keys ``handle``'s worker is executing now; None if unknown."""
        return executing_keys(self, handle)

    def stopped_error(self) -> ClosedClientError:
        """What a call that needs the stopped loop raises: why it stopped.

        ``SchedulerStoppedError`` (the loop's exception as its cause) after a
        failure, else ``ClosedClientError``: the cluster was closed.
        """
        failure = self.failure
        if failure is None:
            return ClosedClientError(
                "The scheduler thread is not running: the cluster is closed"
            )
        error = SchedulerStoppedError(
            f"The scheduler thread stopped after an unexpected error: {failure!r}."
            " Nothing more can run on this cluster; close it and start a new one"
        )
        error.__cause__ = failure
        return error

    # -- posting from other threads ----------------------------------------------------

    def post(self, *events: ev.StateEvent) -> None:
        """Queue events for the core (thread-safe, never blocks)."""
        self._inbox.extend(events)
        self._wakeup.set()

    def call(self, function: Callable[[], Any]) -> CellFuture[Any]:
        """Run ``function()`` on the scheduler thread; its result in a future."""
        cell = new_cell()  # a caller that stops waiting cannot cancel it
        if self._thread is not None and threading.current_thread() is self._thread:
            fulfil(cell, function)
            return cell
        self._inbox.append((function, cell))
        self._wakeup.set()
        if self._stopped.is_set():
            self._fail_calls()  # the loop is gone: nobody else will answer
        return cell

    def add_periodic(
        self, interval: float, callback: Callable[[], Any], name: str = ""
    ) -> PeriodicCallback:
        """Run ``callback()`` on the scheduler thread every ``interval`` seconds.

        Thread-safe. The callback may post events or change runtime state, as
        any code on this thread may; an exception it raises is logged and the
        callback keeps its schedule. ``handle.stop()`` removes it.
        """
        handle = PeriodicCallback(self, interval, callback, name)

        def register() -> None:
            handle.next_due = time.monotonic() + interval
            self._periodic.append(handle)

        self.call(register)
        return handle

    def call_later(self, delay: float, function: Callable[[], Any]) -> None:
        """Run ``function()`` once on the scheduler thread after ``delay`` s.

        Thread-safe; an exception it raises is logged.
        """

        def once() -> None:
            handle.stop()
            function()

        handle = self.add_periodic(delay, once, getattr(function, "__name__", ""))

    def _run_periodic(self, now: float) -> float:
        """Run the callbacks that are due; the time the next one is due."""
        next_due = self._next_tick
        for handle in list(self._periodic):
            if handle.next_due <= now:
                handle.next_due = now + handle.interval
                try:
                    handle.callback()
                except Exception:
                    logger.exception("Periodic callback %r failed", handle.name)
            if handle.next_due < next_due:
                next_due = handle.next_due
        return next_due

    def _fail_calls(self) -> None:
        """Fail every call still queued once the loop has ended.

        ``_run`` sets ``_stopped`` before it calls this, and ``call`` checks
        ``_stopped`` after queueing, so each late call is failed by one of them
        instead of waiting forever (``Client(closed_cluster)`` used to hang).
        """
        inbox = self._inbox
        while True:
            try:
                item = inbox.popleft()
            except IndexError:
                return
            if isinstance(item, tuple):
                item[1].set_exception(self.stopped_error())

    def stimulus_id(self, name: str) -> str:
        return f"{name}-{next(self._stimulus_ids)}"

    # -- the loop ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._turn()
        except BaseException as exc:
            # Not re-raised: every waiter gets it as the cause of its error.
            self.failure = exc
            logger.exception("The scheduler thread failed")
        finally:
            self._drop_local_calls()
            close_stderr_relays(self)
            # After this, ``call`` and ``Client._state_for`` fail what they
            # queue or create themselves: whatever came before is failed below.
            self._stopped.set()
            self._fail_calls()
            self.runs.fail_all()
            actor_calls = getattr(self, "_actor_calls", None)
            if actor_calls is not None:
                actor_calls.fail_all(self.stopped_error())
            if self.failure is not None:
                self._fail_after_crash()

    def _fail_after_crash(self) -> None:
        """The loop died: fail every waiter at once and stop the workers.

        Pending futures get :meth:`stopped_error`; so do coordination waits.
        The workers are told to shut down, which also ends the waits of their
        tasks' clients; ``LocalCluster.close`` joins them and frees the store.
        """
        error = self.stopped_error()
        coordination = getattr(self, "_coordination", None)
        if coordination is not None:
            coordination.fail_all(error)
        for client in list(self.clients.values()):
            if isinstance(client, WorkerClientHandle):
                continue  # its futures live in a worker, which stops below
            for state in list(client.states.values()):
                if state.done():
                    continue
                try:
                    state.set_error(error, "")
                except Exception:  # a done-callback's executor already shut
                    logger.exception("Could not fail the future of %r", state.key)
        reason = f"the scheduler thread stopped: {self.failure!r}"
        for handle in self.workers.values():
            handle.outbox.append(Shutdown(reason=reason))
        try:
            self._flush()
        except Exception:
            logger.exception("Could not tell the workers to stop")

    def _turn(self) -> None:
        now = time.monotonic()
        # Periodic callbacks first: a worker one of them starts is polled this turn.
        next_due = self._run_periodic(now) if self._periodic else self._next_tick
        self._sync_poller()
        timeout = max(0.0, next_due - now)
        ready = self._poller.poll(timeout * 1000)
        self._wakeup.clear()
        events: list[ev.StateEvent] = []
        self._drain_inbox(events)
        exited: list[WorkerHandle] = []
        fds = self._fds
        for fd, _ in ready:
            entry = fds.get(fd)
            if entry is None:
                continue
            handle, kind = entry
            if kind == _STDERR:
                relay = handle.stderr_relay
                if relay is None or relay.pump():  # at EOF: stop polling it
                    with contextlib.suppress(KeyError, ValueError):
                        self._poller.unregister(fd)
                    del fds[fd]
                continue
            if kind == _SENTINEL or (
                self._drain_worker(handle, events) and handle.sentinel is None
            ):
                exited.append(handle)
        for handle in exited:
            self._drain_worker(handle, events)
            worker_exited(self, handle, events)
        now = time.monotonic()
        if now >= self._next_tick:
            self._next_tick = now + TICK_INTERVAL
            self._sweep_arg_blobs()
            self.allocator.after_tick(
                len(self.scheduler.state.tasks), (self.data, self._producers)
            )
            events.append(
                ev.Tick(stimulus_id=self.stimulus_id("tick"), time=time.time())
            )
        self._handle(events)

    def _sync_poller(self) -> None:
        """Register new workers' pipes and sentinels; forget departed ones.

        One persistent ``poll`` object instead of ``connection.wait``, which
        builds and fills a new selector on every call (measurable per task).
        """
        if self._polled == set(self.workers):
            return
        for fd in list(self._fds):
            handle, _ = self._fds[fd]
            if self.workers.get(handle.address) is not handle:
                with contextlib.suppress(KeyError, ValueError):
                    self._poller.unregister(fd)
                del self._fds[fd]
                self._pipe_checks.pop(handle, None)
        for handle in self.workers.values():
            conn_fd = handle.conn.fileno()
            if conn_fd not in self._fds:
                self._poller.register(conn_fd, select.POLLIN)
                self._fds[conn_fd] = (handle, _PIPE)
                sentinel = handle.sentinel
                if sentinel is not None:
                    self._poller.register(sentinel, select.POLLIN)
                    self._fds[sentinel] = (handle, _SENTINEL)
                relay = handle.stderr_relay
                if relay is not None and not relay.is_closed:
                    self._poller.register(relay.fd, select.POLLIN)
                    self._fds[relay.fd] = (handle, _STDERR)
        self._polled = set(self.workers)

    def _handle(self, events: list[ev.StateEvent]) -> None:
        graphs = [event for event in events if type(event) is ev.UpdateGraph]
        if graphs:
            with paused_for_graphs(graphs):
                commands = self.scheduler.handle(*events)
            for graph in graphs:
                self._track_arg_blobs(graph)
        else:
            commands = self.scheduler.handle(*events) if events else []
        outbox = self.scheduler.take_outbox()
        if outbox:
            commands.extend(outbox)
        if commands:
            self._execute(commands)
        self._flush()

    def _drain_inbox(self, events: list[ev.StateEvent]) -> None:
        inbox = self._inbox
        while inbox:
            item = inbox.popleft()
            if isinstance(item, tuple):
                function, cell = item
                if events:
                    # Calls see the state after the events posted before them.
                    self._handle(events)
                    events.clear()
                fulfil(cell, function)
            else:
                events.append(item)

    # -- worker messages -> events -----------------------------------------------------

    def _drain_worker(self, handle: WorkerHandle, events: list[ev.StateEvent]) -> bool:
        """Handle every message waiting on the worker's pipe; True at EOF."""
        conn = handle.conn
        on_task_done = self._on_task_done
        try:
            readable = self._pipe_readable(handle)
            while readable():
                data = conn.recv_bytes()
                for message in decode_batch(data):
                    if type(message) is TaskDone:  # most of them: no table lookup
                        on_task_done(handle, message, events)
                    else:
                        self._on_message(handle, message, events)
        except (EOFError, OSError):
            return True
        except ProtocolError:
            logger.exception("Worker %s sent an undecodable batch", handle.address)
        return False

    def _pipe_readable(self, handle: WorkerHandle) -> Callable[[], bool]:
        """Whether the worker's pipe has a batch (or its EOF) to read now.

        ``Connection.poll`` builds and fills a selector per call (12 us here,
        twice per worker and turn); this keeps one ``poll`` object per pipe.
        """
        check = self._pipe_checks.get(handle)
        if check is None:
            conn = handle.conn
            if conn.closed:
                return conn.poll  # raises OSError: the caller's EOF
            poller = select.poll()
            poller.register(conn.fileno(), select.POLLIN)

            def check() -> bool:
                return bool(poller.poll(0))

            self._pipe_checks[handle] = check
        return check

    def _on_message(
        self, handle: WorkerHandle, message: Message, events: list[ev.StateEvent]
    ) -> None:
        # One table lookup per message, as the core's _DISPATCH for events.
        handler = _MESSAGE_HANDLERS.get(type(message))
        if handler is None:
            logger.warning("Unexpected message from %s: %r", handle.address, message)
            return
        handler(self, handle, message, events)

    def _on_task_failed(
        self, handle: WorkerHandle, message: TaskFailed, events: list[ev.StateEvent]
    ) -> None:
        address = handle.address
        if message.reschedule:
            # The task asked to be placed again (dask's Reschedule).
            events.append(
                ev.RescheduleRequested(
                    stimulus_id=self.stimulus_id("reschedule"),
                    key=message.key,
                    worker=address,
                )
            )
            return
        if self.recorder is not None:
            self.recorder.task_failed(address, message)
        events.append(
            ev.TaskErred(
                stimulus_id=self.stimulus_id("task-erred"),
                key=message.key,
                worker=address,
                run_id=message.run_id,
                exception=message.exception,
                traceback=message.traceback,
                exception_text=message.exception_text,
                traceback_text=message.traceback_text,
                startstops=(("compute", message.start, message.stop),),
            )
        )

    def _on_steal_answer(
        self, handle: WorkerHandle, message: StealAnswer, events: list[ev.StateEvent]
    ) -> None:
        events.append(
            ev.StealResponse(
                stimulus_id=self.stimulus_id("steal-response"),
                key=message.key,
                worker=handle.address,
                state=message.state,
            )
        )

    def _on_long_running(
        self, handle: WorkerHandle, message: LongRunning, events: list[ev.StateEvent]
    ) -> None:
        events.append(
            ev.TaskSeceded(
                stimulus_id=self.stimulus_id("secede"),
                key=message.key,
                worker=handle.address,
                compute_duration=message.compute_duration,
                run_id=message.run_id,
            )
        )

    def _on_hello(
        self, handle: WorkerHandle, message: Hello, events: list[ev.StateEvent]
    ) -> None:
        address = handle.address
        handle.outbox.append(WorkerInfo(address=address, name=handle.name))
        handle.is_ready = True
        self.scheduler.log_event(address, {"action": "add-worker"})
        self.scheduler.log_event("all", {"action": "add-worker", "worker": address})
        handle.pid = message.pid
        events.append(
            ev.WorkerAdded(
                stimulus_id=self.stimulus_id("worker-added"),
                address=address,
                nthreads=message.nthreads,
                name=handle.name,
                memory_limit=handle.memory_limit,
                resources=handle.resources or None,
                pid=message.pid,
                time=time.time(),
            )
        )
        if self.recorder is not None:
            self.recorder.worker_added(handle, message.nthreads)

    def _on_function_result(
        self, handle: WorkerHandle, message: FunctionResult, events: list[ev.StateEvent]
    ) -> None:
        answer = (message.ok, message.payload, message.traceback_text)
        self.runs.answered(message.id, handle.address, answer)

    def _on_actor_answer(
        self, handle: WorkerHandle, message: ActorAnswer, events: list[ev.StateEvent]
    ) -> None:
        actor_calls_of(self).answered(message.id, message.ok, message.payload)

    def _on_heartbeat(
        self, handle: WorkerHandle, message: Heartbeat, events: list[ev.StateEvent]
    ) -> None:
        events.append(
            ev.WorkerHeartbeat(
                stimulus_id=self.stimulus_id("heartbeat"),
                address=handle.address,
                executing=message.executing,
                time=time.time(),
            )
        )

    def _on_goodbye(
        self, handle: WorkerHandle, message: Goodbye, events: list[ev.StateEvent]
    ) -> None:
        handle.said_goodbye = True

    def _on_task_done(
        self, handle: WorkerHandle, message: TaskDone, events: list[ev.StateEvent]
    ) -> None:
        payload = message.payload
        key = message.key
        if isinstance(payload, BlobRef):
            try:
                used_lease = self.store.adopt(payload)
            except Exception as exc:  # the store refused it: fail this task only
                events.append(
                    result_not_adopted(
                        handle.address, message, exc, self.stimulus_id("task-erred")
                    )
                )
                return
            if handle.leases:
                handle.leases -= 1  # it may have used one: room for the next
            if used_lease:
                # It did: a producer of values this size likely makes more, so
                # replace the lease with pages it wrote before, free now.
                self._lease_back(handle.address, payload.nbytes)
        ts = self.scheduler.state.tasks.get(key)
        ws = None if ts is None else ts.processing_on
        is_actor = False
        if (
            ts is None
            or ws is None
            or ws.address != handle.address
            or ts.run_id != message.run_id
        ):
            self._free_payload(payload)  # stale: the task moved on
            is_kept = False
        else:
            is_kept = True
            old = self.data.get(key)
            if old is not None:
                self._free_payload(old)
            self.data[key] = payload
            if isinstance(payload, BlobRef):
                self._producers[key] = handle.address
            # The payload is only a handle: the actor object dies with its worker.
            is_actor = ts.actor
        self.tasks_finished += 1
        if self.recorder is not None:
            self.recorder.task_done(handle.address, message)
        events.append(
            ev.TaskFinished(
                stimulus_id=self.stimulus_id("task-finished"),
                key=key,
                worker=handle.address,
                run_id=message.run_id,
                nbytes=message.nbytes,
                type=message.type,
                startstops=(("compute", message.start, message.stop),),
                shared=is_kept and not is_actor,
            )
        )

    # -- commands -> IO ----------------------------------------------------------------

    def _execute(self, commands: list[cmd.Command]) -> None:
        # One table lookup per command, as the core's _DISPATCH for events;
        # the two commands of every task skip it (a map of a million tasks
        # sends a million of each).
        handlers = _COMMAND_HANDLERS
        in_memory = self._on_key_in_memory
        compute = self._compute
        command: Any  # the type tests below stand for isinstance
        for command in commands:
            kind = type(command)
            if kind is cmd.KeyInMemory:
                in_memory(command)
                continue
            if kind is cmd.ComputeTask:
                compute(command)
                continue
            handler = handlers.get(kind)
            if handler is None:
                raise AssertionError(f"Unknown command {command!r}")
            handler(self, command)

    def _on_key_in_memory(self, command: cmd.KeyInMemory) -> None:
        state = self._client_state(command)
        if state is not None:
            state.finish(command.type)

    def _on_free_data(self, command: cmd.FreeData) -> None:
        payload = self.data.pop(command.key, None)
        if payload is not None:
            self._free_payload(payload)
            producer = self._producers.pop(command.key, None)
            if producer is not None and isinstance(payload, BlobRef):
                self._lease_back(producer, payload.nbytes)

    def _on_free_keys(self, command: cmd.FreeKeys) -> None:
        handle = self.workers.get(command.worker)
        if handle is not None:
            handle.outbox.append(ForgetKeys(keys=command.keys))
            handle.has_forgets = True

    def _on_key_erred(self, command: cmd.KeyErred) -> None:
        state = self._client_state(command)
        if state is not None:
            state.set_error(*exception_of(command))

    def _on_key_cancelled(self, command: cmd.KeyCancelled) -> None:
        state = self._client_state(command)
        if state is not None:
            state.cancel(command.reason)

    def _on_key_recomputed(self, command: cmd.KeyLost | cmd.KeyRetried) -> None:
        state = self._client_state(command)
        if state is not None:
            state.reset()

    def _on_steal_request(self, command: cmd.StealRequest) -> None:
        handle = self.workers.get(command.worker)
        if handle is not None:
            handle.outbox.append(StealQuery(key=command.key))

    def _on_close_worker(self, command: cmd.CloseWorker) -> None:
        handle = self.workers.get(command.worker)
        if handle is not None:
            handle.outbox.append(Shutdown(reason=command.reason))

    def _on_graph_rejected(self, command: cmd.GraphRejected) -> None:
        client = self.clients.get(command.client)
        for key in command.keys:
            state = client.states.get(key) if client else None
            if state is not None:
                state.set_error(command.error, "")

    def _on_retirement_failed(self, command: cmd.RetirementFailed) -> None:
        logger.warning(
            "Could not retire workers %s: %s", command.workers, command.reason
        )

    def _on_acquire_replicas(self, command: cmd.AcquireReplicas) -> None:
        # Every result already lives in this process: nothing to move.
        self.post(
            ev.ReplicasAdded(
                stimulus_id=command.stimulus_id,
                worker=command.worker,
                keys=command.keys,
            )
        )

    def _client_state(self, command: Any) -> FutureState | None:
        client = self.clients.get(command.client)
        if client is None:
            return None
        return client.states.get(command.key)

    def _compute(self, command: cmd.ComputeTask) -> None:
        handle = self.workers.get(command.worker)
        if handle is None:
            return
        spec: TaskSpec = command.run_spec  # type: ignore[assignment]
        token = spec.function_token
        function = None
        if token not in handle.sent_functions:
            handle.sent_functions.add(token)
            function = spec.function
        dependencies: dict[Key, Stored] = {}
        if command.dependencies:  # a map's tasks have none: no loop to set up
            data = self.data
            for dependency in command.dependencies:
                payload = dependencies[dependency] = data[dependency]
                if type(payload) is BlobRef:
                    self.store.touch(payload)  # about to be read: spill it last
        handle.outbox.append(
            RunTask(
                key=command.key,
                run_id=command.run_id,
                function_token=token,
                function=function,
                args=spec.args,
                dependencies=dependencies,
                priority=command.priority,
                resource_restrictions=command.resource_restrictions,
                actor=spec.actor,
            )
        )

    def _flush(self) -> None:
        for handle in self.workers.values():
            if handle.outbox:
                batch, handle.outbox = handle.outbox, []
                if handle.has_forgets:
                    handle.has_forgets = False
                    if len(batch) > 1:
                        batch = merge_forgets(batch)
                # A len() compare per worker and turn: sys.path grew (or
                # changed length) since this worker last heard it.
                if len(sys.path) != handle.path_len:
                    handle.path_len = len(sys.path)
                    entries = tuple(p for p in sys.path if isinstance(p, str))
                    batch.insert(0, ExtendPath(entries=entries))
                # OSError/ValueError: it died; its sentinel fires next turn.
                with contextlib.suppress(OSError, ValueError):
                    handle.conn.send_bytes(encode_batch(batch))

    def _track_arg_blobs(self, graph: ev.UpdateGraph) -> None:
        """Note the tasks of a graph the core just handled whose arguments are
        in shared memory, for :meth:`_sweep_arg_blobs` to free later.

        Only after the core handled it: the sweep frees the arguments of a key
        it cannot find, and a graph still in the inbox has no keys yet (a client
        that noted its arguments as it submitted lost them to a tick that came
        first, and the next argument reused the segment: ``StaleBlobError``).
        """
        tracked = self._arg_blobs
        for key, spec in graph.tasks.items():
            # LocalRef: a call kept for in-process workers (transport/inproc.py).
            if type(getattr(spec, "args", None)) in (BlobRef, LocalRef):
                tracked.append((key, spec))

    def _sweep_arg_blobs(self) -> None:
        """Free shared-memory arguments of tasks that are gone: forgotten, or
        never accepted (a rejected graph, a key already known)."""
        if not self._arg_blobs:
            return
        tasks = self.scheduler.state.tasks
        kept = []
        for key, spec in self._arg_blobs:
            ts = tasks.get(key)
            if ts is not None and ts.run_spec is spec:
                kept.append((key, spec))
            else:
                self._free_payload(spec.args)
        self._arg_blobs = kept

    def _lease_back(self, address: str, nbytes: int) -> None:
        """Give a freed segment of this size to the worker that filled it.

        A worker that produced one large result likely produces more of the same
        size, and writing into reused pages is several times faster than into
        fresh ones (the kernel must zero and map those). Only a segment this
        worker filled: the one just freed may still be mapped by its reader,
        and the next free one may be the segment the store's next ``scatter``
        reuses (taking it made that scatter write fresh pages).
        """
        handle = self.workers.get(address)
        if handle is None or handle.leases >= MAX_LEASES_PER_WORKER:
            return
        lease = self.store.lease(nbytes, handle.holder, own=True)
        if lease is not None:
            handle.leases += 1
            handle.outbox.append(GrantSegments(leases=(lease,)))

    def _drop_local_calls(self) -> None:
        """The loop ends: forget the calls kept for in-process workers (the
        store's close frees the shared-memory arguments; these only we hold)."""
        for _, spec in self._arg_blobs:
            if isinstance(spec.args, LocalRef):
                inproc.drop(spec.args)

    def _free_payload(self, payload: Payload) -> None:
        if isinstance(payload, BlobRef):
            self.store.release(payload)
        elif isinstance(payload, LocalRef):  # a call kept for in-process workers
            inproc.drop(payload)

    # -- for clients -------------------------------------------------------------------

    def load_result(self, key: Key) -> Any:
        """Deserialize a result in the calling thread (zero-copy for arrays)."""
        try:
            payload = self.data[key]
        except KeyError:
            raise KeyError(f"No result for {key!r}: it was released") from None
        if type(payload) is BlobRef:
            self.store.touch(payload)
        return load(payload)


class PeriodicCallback:
    """A callback :meth:`SchedulerRuntime.add_periodic` runs on a schedule."""

    def __init__(
        self,
        runtime: SchedulerRuntime,
        interval: float,
        callback: Callable[[], Any],
        name: str,
    ) -> None:
        self.runtime = runtime
        self.interval = interval
        self.callback = callback
        self.name = name or getattr(callback, "__name__", "periodic")
        self.next_due = float("inf")
        self.stopped = False

    def is_running(self) -> bool:
        """True until :meth:`stop` (as tornado's ``PeriodicCallback``)."""
        return not self.stopped

    def stop(self) -> None:
        """Stop calling back (thread-safe; idempotent)."""
        self.stopped = True

        def unregister() -> None:
            with contextlib.suppress(ValueError):
                self.runtime._periodic.remove(self)

        if self.runtime.is_running:
            self.runtime.call(unregister)


#: What the runtime does with each message of a worker (see ``_on_message``).
_MESSAGE_HANDLERS: dict[type[Message], Callable[..., None]] = {
    TaskDone: SchedulerRuntime._on_task_done,
    TaskFailed: SchedulerRuntime._on_task_failed,
    StealAnswer: SchedulerRuntime._on_steal_answer,
    LinkEvents: take_worker_events,
    LinkRequest: serve_worker,
    LongRunning: SchedulerRuntime._on_long_running,
    Hello: SchedulerRuntime._on_hello,
    FunctionResult: SchedulerRuntime._on_function_result,
    ActorAnswer: SchedulerRuntime._on_actor_answer,
    Heartbeat: SchedulerRuntime._on_heartbeat,
    Goodbye: SchedulerRuntime._on_goodbye,
}


#: What the runtime does for each command of the core (see ``_execute``).
_COMMAND_HANDLERS: dict[type[cmd.Command], Callable[[SchedulerRuntime, Any], None]] = {
    cmd.ComputeTask: SchedulerRuntime._compute,
    cmd.KeyInMemory: SchedulerRuntime._on_key_in_memory,
    cmd.FreeData: SchedulerRuntime._on_free_data,
    cmd.FreeKeys: SchedulerRuntime._on_free_keys,
    cmd.KeyErred: SchedulerRuntime._on_key_erred,
    cmd.KeyCancelled: SchedulerRuntime._on_key_cancelled,
    cmd.KeyLost: SchedulerRuntime._on_key_recomputed,
    cmd.KeyRetried: SchedulerRuntime._on_key_recomputed,
    cmd.StealRequest: SchedulerRuntime._on_steal_request,
    cmd.CloseWorker: SchedulerRuntime._on_close_worker,
    cmd.GraphRejected: SchedulerRuntime._on_graph_rejected,
    cmd.RetirementFailed: SchedulerRuntime._on_retirement_failed,
    cmd.AcquireReplicas: SchedulerRuntime._on_acquire_replicas,
}
