"""Worker process: the child entry point and its threads.

::

    scheduler ══ pipe ══▶ control thread (main) ── RunTask ──▶ priority queues
                            │ StealQuery, ForgetKeys,       (plain, constrained)
                            │ GrantSegments, Shutdown                 │
                            ▼                              task threads (nthreads):
    scheduler ◀═ pipe ═══ outbox: one send per batch ◀── run, serialize, reply
                          (the posting task thread sends; the sender thread
                           sends what the control thread posts)

The control thread never blocks on a write while the scheduler may still be
writing: its replies (steal answers) go through the sender thread, and it writes
itself only the final Goodbye. If both sides could block on a write while
neither reads, a scheduler sending a large batch to a worker whose own writes
fill the other direction would deadlock; here the worker keeps reading, so the
scheduler's write always completes.

Lifetime: the worker says :class:`~localsched.transport.protocol.Hello` first and
:class:`~localsched.transport.protocol.Goodbye` before a planned exit
(:class:`~localsched.transport.protocol.Shutdown`). It also exits, without a
goodbye, when the pipe reaches EOF because the scheduler process is gone, and the
kernel kills it if its parent dies (``PR_SET_PDEATHSIG``).

This module imports nothing from ``localsched.scheduler`` (a spawned child
imports only what it needs: this, ``execute``, the transport, cloudpickle).
"""

from __future__ import annotations

import contextlib
import faulthandler
import heapq
import importlib
import itertools
import logging
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from localsched.transport.inproc import LocalRef
from localsched.transport.protocol import (
    AddPlugin,
    CallActor,
    ExtendPath,
    ForgetKeys,
    FunctionResult,
    Goodbye,
    GrantSegments,
    Heartbeat,
    Hello,
    Inspect,
    KeyUpdate,
    LinkReply,
    LongRunning,
    Message,
    ProtocolError,
    RemovePlugin,
    RunFunction,
    RunTask,
    SetPaused,
    Shutdown,
    StealAnswer,
    StealQuery,
    TaskDone,
    TaskFailed,
    TopicEvent,
    WorkerInfo,
    decode_batch,
    encode_batch,
)
from localsched.transport.shm import BlobRef
from localsched.worker.actors import ActorHost
from localsched.worker.context import thread_state
from localsched.worker.diagnostics import LogRing, Profiler, inspect
from localsched.worker.execute import (
    LOAD_NOTE,
    Outcome,
    Success,
    dumps_exception,
    failure_from,
    load_inputs,
    load_local_call,
    run_task,
    to_message,
)
from localsched.worker.plugins import WorkerPlugins
from localsched.worker.run import call_function
from localsched.worker.shared_inputs import SharedInputs, reads_inputs_only
from localsched.worker.warming import WarmUp

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable, Mapping, Sequence
    from multiprocessing.connection import Connection

    from localsched.transport.executing import ExecutingPage
    from localsched.transport.shm import BlobWriter
    from localsched.worker.link import PipeLink

__all__ = ["Worker", "run_worker"]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_GOODBYE_TIMEOUT = 10.0  # seconds a Goodbye waits for a send in progress
#: Seconds between heartbeats while tasks run (dask: 0.5 s for small clusters).
HEARTBEAT_INTERVAL = 0.5
# Replies of tasks shorter than this may wait for the next reply (see _Outbox),
# at most _MAX_REPLY_DELAY seconds and _MAX_DEFERRED_REPLIES replies.
_SHORT_TASK = 200e-6
_MAX_REPLY_DELAY = 1e-3
_MAX_DEFERRED_REPLIES = 256

logger = logging.getLogger("localsched.worker")


def run_worker(
    conn: Connection,
    nthreads: int = 1,
    writer: BlobWriter | None = None,
    resources: Mapping[str, float] | None = None,
    executing_page: ExecutingPage | None = None,
    warm: Sequence[str] = (),
) -> None:
    """Entry point of a worker process (a ``multiprocessing`` ``Process`` target).

    Parameters
    ----------
    conn : multiprocessing.connection.Connection
        This worker's end of a duplex pipe; the scheduler holds the other end.
    nthreads : int
        Task threads.
    writer : BlobWriter, optional
        ``BlobStore.writer()`` of the scheduler's store: results at or above
        ``INLINE_THRESHOLD`` go to shared memory. Without it everything is inline.
    resources : mapping, optional
        Abstract resources this worker offers, e.g. ``{"GPU": 2}``: tasks with
        ``resource_restrictions`` run only while enough of them are free.
    executing_page : ExecutingPage, optional
        Shared with the scheduler: the run_id of every task executing here,
        which the scheduler reads if this process dies.
    warm : sequence of str, optional
        Modules to import in the background once the worker said hello
        (``localsched.worker.warming``).

    Notes
    -----
    Never returns: the process ends with ``os._exit`` once the worker is done
    (status 0, or 1 after an error such as a ``ProtocolError``), so that a
    non-daemon thread started by user code cannot keep a worker alive after
    ``Shutdown`` or after its scheduler died.
    """
    _die_with_parent()
    # Only the crashing thread: the scheduler quotes the last lines of a dead
    # worker's stderr, and the other threads' stacks (control loop, sender,
    # heartbeat) would push the task's frames out of them.
    faulthandler.enable(all_threads=False)
    exit_code = 0
    try:
        worker = Worker(conn, nthreads, writer, resources, executing_page)
        worker.owns_process = True
        worker.warm_imports = list(warm)
        # The worker's own records, for Client.get_worker_logs (dask keeps
        # "distributed.worker" at INFO likewise). INFO never reaches stderr:
        # logging's last-resort handler prints WARNING and above only.
        ours = logging.getLogger("localsched")
        if ours.level == logging.NOTSET:
            ours.setLevel(logging.INFO)
        worker.log_ring.install(ours)
        worker.serve()
    except BaseException:
        traceback.print_exc()  # a ProtocolError already said goodbye
        exit_code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
    os._exit(exit_code)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us when our parent dies (a no-op elsewhere).

    The "parent" is the thread that forked us: under forkserver the fork server,
    which exits with the user process; under spawn or ``subprocess`` the thread
    that started the process, so the runtime must start workers from a thread
    that lives as long as the cluster, or a worker dies with that thread
    (prctl(2)). The pipe's EOF covers the same death, and also the
    window before this call.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # here: only Linux pays for it, once per process

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl in this libc: the pipe's EOF still ends us


@dataclass(slots=True, eq=False)
class _Job:
    message: RunTask
    #: time.monotonic() when a task thread started it (0 while queued).
    started: float = 0.0
    #: Removed from the queue (stolen, forgotten, replaced) before it started.
    is_cancelled: bool = False
    #: Forgotten while executing: its result is discarded, not sent.
    is_forgotten: bool = False
    #: Its slot in the executing page while it runs.
    slot: int = 0
    #: Ident of the task thread running it (0 while queued).
    thread: int = 0


class Worker:
    """The worker's state and threads; :meth:`serve` runs the control loop.

    Usable in-process (tests run :meth:`serve` in a thread over a ``Pipe``):
    only :func:`run_worker` touches process-wide settings.

    Parameters
    ----------
    conn : Connection
    nthreads : int
    writer : BlobWriter, optional
    resources : mapping, optional
    executing_page : ExecutingPage, optional
        See :func:`run_worker`.
    """

    def __init__(
        self,
        conn: Connection,
        nthreads: int,
        writer: BlobWriter | None = None,
        resources: Mapping[str, float] | None = None,
        executing_page: ExecutingPage | None = None,
    ) -> None:
        if nthreads < 1:
            raise ValueError(f"nthreads must be at least 1, got {nthreads}")
        self.conn = conn
        self.nthreads = nthreads
        self.writer = writer
        #: Written under _lock as tasks start and end (transport/executing.py).
        self._executing_page = executing_page
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._seq = itertools.count()
        # All of the following: guarded by _lock.
        #: Queued jobs without resource restrictions, by (priority, arrival).
        self._heap: list[tuple[tuple[float, ...], int, _Job]] = []
        #: Queued jobs with resource restrictions ("constrained" in dask).
        self._constrained: list[tuple[tuple[float, ...], int, _Job]] = []
        #: key -> job for every job in either heap that is not cancelled.
        self._queued: dict[Hashable, _Job] = {}
        #: Resources not held by executing tasks: total minus theirs.
        self._available: dict[str, float] = dict(resources or {})
        #: key -> job taken by a task thread whose reply is not yet posted.
        self._executing: dict[Hashable, _Job] = {}
        #: Keys whose TaskDone was posted and that were not forgotten since.
        self._done: set[Hashable] = set()
        self._is_closing = False
        #: Set by the memory monitor's pause: queued tasks wait, running ones go on.
        self._is_paused = False
        # Written by the control thread, read by task threads; single dict
        # operations are atomic, and a lost race only means loading twice.
        self._function_bytes: dict[str, bytes] = {}
        self._functions: dict[str, Any] = {}
        #: Dependencies of read-only tasks (dask's shuffle splits), unpickled
        #: once per worker; emptied when the worker runs out of tasks.
        self.shared_inputs = SharedInputs()
        self._outbox = _Outbox(conn)
        #: Worker plugins (``Client.register_plugin``); see worker/plugins.py.
        self.plugins = WorkerPlugins(nthreads)
        #: Actor objects kept here and the threads calling them (actors.py).
        self.actors = ActorHost(self)
        self.plugins.worker.log_event_to = self.log_event
        #: Set when serve() ends: the heartbeat thread stops.
        self._stopped = threading.Event()
        # dask's Worker attributes for get_worker(); the scheduler sends address
        # and name (WorkerInfo) before any task.
        self.address = ""
        self.name: Any = None
        self.id = f"Worker-{uuid.uuid4()}"
        #: Events of seceded tasks waiting in rejoin() for a thread slot (_lock).
        self._rejoiners: list[threading.Event] = []
        self._seceded_threads = itertools.count()
        #: get_client() in a task: a ``Client`` on a ``PipeLink``, made on first use.
        self._client: Any = None
        self._link: PipeLink | None = None
        #: This worker is its process (``run_worker``), not a thread of the
        #: user's: it may change process-wide settings such as dask's scheduler.
        self.owns_process = False
        self._drives_dask = False
        self._client_lock = threading.Lock()
        #: The last log records of this process (``Client.get_worker_logs``);
        #: ``run_worker`` attaches it to the ``localsched`` logger.
        self.log_ring = LogRing()
        #: Modules imported in the background after the hello (warming.py);
        #: only a worker that is its own process has any.
        self.warm_imports: list[str] = []
        self._warm_up: WarmUp | None = None
        #: Samples the task threads (``Client.profile``); started by the
        #: first task, so an idle worker runs no sampling thread.
        self.profiler: Profiler | None = None

    def serve(self) -> str:
        """Say hello, start the threads, handle messages until the end.

        Returns
        -------
        str
            Why it stopped: the ``Shutdown`` reason, or ``"scheduler gone"``.

        Raises
        ------
        ProtocolError
            The scheduler sent something undecodable; a ``Goodbye`` naming it was
            sent first.
        """
        self.conn.send_bytes(
            encode_batch([Hello(pid=os.getpid(), nthreads=self.nthreads)])
        )
        threads = [
            threading.Thread(target=self._task_loop, name=f"localsched-task-{i}")
            for i in range(self.nthreads)
        ]
        threads.append(
            threading.Thread(target=self._outbox.sender_loop, name="localsched-send")
        )
        threads.append(
            threading.Thread(target=self._heartbeat_loop, name="localsched-heartbeat")
        )
        for thread in threads:
            thread.daemon = True
            thread.start()
        # After the hello and the task threads: start-up never waits for it.
        self._warm_up = WarmUp(self.warm_imports, self._is_busy)
        self._warm_up.start()
        try:
            return self._control_loop()
        finally:
            if self.profiler is not None:
                self.profiler.stop()
            self._stopped.set()
            self._stop_tasks()
            self.actors.close()
            self.plugins.close()
            self._outbox.close(None)

    def _is_busy(self) -> bool:
        """Tasks queued or running (an unlocked look: warm-up only)."""
        return bool(self._executing or self._queued)

    def _heartbeat_loop(self) -> None:
        """While tasks run, tell the scheduler how long they have been running;
        once more when they stopped, so its count of executing tasks drops."""
        was_busy = False
        while not self._stopped.wait(HEARTBEAT_INTERVAL):
            now = time.monotonic()
            with self._lock:
                executing = {
                    key: now - job.started
                    for key, job in self._executing.items()
                    if job.started
                }
            if executing or was_busy:
                self._outbox.post_nowait(Heartbeat(executing=executing))
            was_busy = bool(executing)

    def executing_threads(self) -> dict[Hashable, int]:
        """key -> ident of the thread running it, for the tasks executing now."""
        with self._lock:
            return {
                key: job.thread for key, job in self._executing.items() if job.thread
            }

    def log_event(self, topic: str | Iterable[str], msg: Any) -> None:
        """Log an event under a topic (dask's ``Worker.log_event``); does not
        wait for the scheduler. See ``Client.log_event``."""
        from localsched.transport.requests import LogEvent

        topics = (topic,) if isinstance(topic, str) else tuple(topic)
        self.pipe_link().request(LogEvent(topics=topics, msg=msg))

    # --- control thread ----------------------------------------------------------

    def _control_loop(self) -> str:
        while True:
            try:
                data = self.conn.recv_bytes()
            except (EOFError, OSError):
                return "scheduler gone"
            try:
                messages = decode_batch(data)
            except ProtocolError as exc:
                self._outbox.close(Goodbye(reason=f"protocol error: {exc}"))
                raise
            runs: list[RunTask] = []
            for message in messages:
                if type(message) is RunTask:
                    runs.append(message)
                    continue
                if runs:  # keep the order of a steal after a run of the same key
                    self._enqueue(runs)
                    runs = []
                reason = self._on_message(message)
                if reason is not None:
                    return reason
            if runs:
                self._enqueue(runs)

    def _on_message(self, message: Message) -> str | None:
        if type(message) is CallActor:
            self.actors.call(message)
        elif isinstance(message, StealQuery):
            self._outbox.post_nowait(self._steal(message.key))
        elif isinstance(message, ForgetKeys):
            self._forget(message.keys)
        elif isinstance(message, GrantSegments):
            if self.writer is not None:  # without one, reclaim() takes them back
                for lease in message.leases:
                    self.writer.grant(lease)
        elif isinstance(message, RunFunction):
            # Client.run: user code, so never on this thread (it must keep reading).
            threading.Thread(
                target=lambda: self._outbox.post(
                    call_function(message, self.nthreads, self.actors.objects)
                ),
                name=f"localsched-run-{message.id}",
                daemon=True,
            ).start()
        elif isinstance(message, LinkReply):
            link = self._link
            if link is not None:
                link.answered(message.id, message.ok, message.payload)
        elif isinstance(message, KeyUpdate):
            link = self._link
            if link is not None:
                link.on_key_update(message)
        elif isinstance(message, Inspect):
            self._outbox.post_nowait(self._inspect(message))
        elif isinstance(message, TopicEvent):
            link = self._link
            if link is not None:
                link.on_topic_event(message)
        elif isinstance(message, WorkerInfo):
            self.address = message.address
            self.name = message.name
            logger.info(
                "Worker %s (pid %d) started with %d threads",
                message.address,
                os.getpid(),
                self.nthreads,
            )
        elif isinstance(message, AddPlugin | RemovePlugin):
            # On this thread, so tasks that arrive later see the plugin.
            self._outbox.post_nowait(self.plugins.handle(message))
        elif isinstance(message, ExtendPath):
            extend_path(message.entries)
        elif isinstance(message, SetPaused):
            with self._lock:
                self._is_paused = message.paused
                if not message.paused:
                    self._has_work.notify_all()
        elif isinstance(message, Shutdown):
            self._stop_tasks()
            self.actors.close()
            self.plugins.close()  # dask tears plugins down as the worker closes
            self._outbox.close(Goodbye(reason=message.reason))
            return message.reason
        else:
            error = ProtocolError(f"a worker cannot handle {type(message).__name__}")
            self._outbox.close(Goodbye(reason=f"protocol error: {error}"))
            raise error
        return None

    def _inspect(self, message: Inspect) -> FunctionResult:
        try:
            payload = pickle.dumps(inspect(self, message.what, message.args))
        except Exception as exc:
            return FunctionResult(
                id=message.id,
                ok=False,
                payload=dumps_exception(exc) or b"",
                traceback_text=traceback.format_exc(),
            )
        return FunctionResult(id=message.id, ok=True, payload=payload)

    def _start_profiler(self) -> None:
        # A profile is kept per key prefix, named as the scheduler names it.
        from localsched.keys import key_split

        self.profiler = Profiler(self.executing_threads, key_split)
        self.profiler.start()

    def _enqueue(self, runs: list[RunTask]) -> None:
        if self.profiler is None:
            self._start_profiler()
        if self.plugins.active:
            for run in runs:  # before a task thread can start it
                self.plugins.arrived(run.key, bool(run.resource_restrictions))
        for run in runs:
            if run.function is not None and run.function_token not in self._functions:
                self._function_bytes[run.function_token] = run.function
        with self._lock:
            for run in runs:
                old = self._queued.get(run.key)
                if old is not None:
                    old.is_cancelled = True  # a newer run of the key replaces it
                job = _Job(run)
                self._queued[run.key] = job
                heap = self._constrained if run.resource_restrictions else self._heap
                heapq.heappush(heap, (run.priority, next(self._seq), job))
            self._has_work.notify(len(runs))

    def _steal(self, key: Hashable) -> StealAnswer:
        with self._lock:
            job = self._queued.pop(key, None)
            if job is not None:
                job.is_cancelled = True
                state: str | None = "ready"
            elif key in self._executing:
                state = "executing"
            elif key in self._done:
                state = "memory"
            else:
                state = None
        if state == "ready" and self.plugins.active:  # outside the lock
            self.plugins.cancelled(key)
        return StealAnswer(key=key, state=state)

    def _forget(self, keys: tuple[Hashable, ...]) -> None:
        if self.plugins.active:
            self.plugins.forget(keys)
        if self.actors.objects:
            self.actors.forget(keys)
        with self._lock:
            for key in keys:
                job = self._queued.pop(key, None)
                if job is not None:
                    job.is_cancelled = True
                job = self._executing.get(key)
                if job is not None:
                    job.is_forgotten = True
                self._done.discard(key)

    def _stop_tasks(self) -> None:
        with self._lock:
            self._is_closing = True
            for job in self._queued.values():
                job.is_cancelled = True
            self._queued.clear()
            self._heap.clear()
            self._constrained.clear()
            for event in self._rejoiners:
                event.set()
            self._rejoiners.clear()
            self._has_work.notify_all()
        client, link = self._client, self._link
        if client is not None:
            client.status = "closed"
        if link is not None:
            link.close("the worker is shutting down")

    # --- task threads ------------------------------------------------------------

    def _task_loop(self) -> None:
        ident = threading.get_ident()
        while True:
            with self._lock:
                while True:
                    if self._rejoiners:
                        # A seceded task rejoins: this thread gives it its slot.
                        self._rejoiners.pop(0).set()
                        return
                    if not self._is_paused and (job := self._next_job()) is not None:
                        break
                    if self._is_closing:
                        return
                    if not self._executing:
                        # Out of work: let go of the mappings of released results.
                        self.shared_inputs.clear()
                    self._has_work.wait()
                if self._is_closing:
                    return
                key = job.message.key
                if self._queued.get(key) is job:
                    del self._queued[key]
                self._executing[key] = job
                job.thread = ident
                job.started = time.monotonic()
                if self._executing_page is not None:
                    job.slot = self._executing_page.start(job.message.run_id)
                restrictions = job.message.resource_restrictions
                if restrictions:
                    for name, amount in restrictions.items():
                        self._available[name] -= amount
            state = thread_state
            state.worker, state.key, state.run_id = self, key, job.message.run_id
            state.start_time = time.time()
            state.seceded = False
            try:
                reply = self._execute(job.message)
            finally:
                state.worker = state.key = None
            has_seceded = state.seceded
            is_short = reply.stop - reply.start < _SHORT_TASK
            must_send = False
            with self._lock:
                # Queue the reply and record the key as done in one step, so a
                # StealAnswer saying "memory" always follows its TaskDone; the
                # sending itself happens outside the lock.
                if self._executing.get(key) is job:
                    del self._executing[key]
                if self._executing_page is not None:
                    self._executing_page.end(job.slot)
                if not job.is_forgotten:
                    if type(reply) is TaskDone:
                        self._done.add(key)
                    is_more_coming = bool(self._heap or self._constrained)
                    must_send = self._outbox.add(reply, is_short and is_more_coming)
                if restrictions:
                    for name, amount in restrictions.items():
                        self._available[name] += amount
                    self._has_work.notify_all()  # a constrained job may fit now
            if must_send:
                self._outbox.send_all()
            elif job.is_forgotten:
                self._discard(reply)
            if has_seceded:
                return  # seceded and never rejoined: its replacement has the slot

    def _next_job(self) -> _Job | None:
        """Pop the job to run next, as dask's ``_next_ready_task``: the better of
        the two heads, where the constrained head only counts if it fits now (it
        blocks the constrained jobs behind it, never the unconstrained ones)."""
        for heap in (self._heap, self._constrained):
            while heap and heap[0][2].is_cancelled:
                heapq.heappop(heap)
        ready, constrained = self._heap, self._constrained
        if constrained and (not ready or constrained[0] < ready[0]):
            restrictions = constrained[0][2].message.resource_restrictions or {}
            available = self._available
            if all(available.get(n, 0) >= a for n, a in restrictions.items()):
                return heapq.heappop(constrained)[2]
        return heapq.heappop(ready)[2] if ready else None

    def _execute(self, message: RunTask) -> TaskDone | TaskFailed:
        warm_up = self._warm_up
        if warm_up is not None and not warm_up.is_done:
            warm_up.wait()  # registered as executing: no other import starts
        plugins = self.plugins if self.plugins.active else None
        if plugins is not None:
            plugins.started(message.key)
        start = time.time()
        outcome: Outcome
        try:
            # An actor keeps its result object: never one shared with other tasks.
            shared = None if message.actor else self.shared_inputs
            if type(message.args) is LocalRef:  # an in-process worker's call
                function, args, kwargs, values = load_local_call(message, shared)
            else:
                function = self._function(message)
                if shared is not None and reads_inputs_only(function):
                    args, kwargs, values = load_inputs(message, shared.load)
                else:
                    args, kwargs, values = load_inputs(message)
        except BaseException as exc:
            exc.add_note(LOAD_NOTE)
            outcome = failure_from(exc, start)
        else:
            outcome = run_task(function, args, kwargs, values)
            del args, kwargs, values  # unmap shared-memory inputs early
            if message.actor and type(outcome) is Success:
                # The object stays here; the scheduler stores a handle to it.
                outcome.value = self.actors.adopt(message.key, outcome.value)
        reply = to_message(
            message.key,
            message.run_id,
            outcome,
            self.writer,
            thread=threading.get_ident(),
            load_start=start if message.dependencies else 0.0,
        )
        if plugins is not None:  # before the reply goes out, as in dask
            plugins.ended(message.key, outcome, reply)
        return reply

    def _function(self, message: RunTask) -> Any:
        token = message.function_token
        function = self._functions.get(token)
        if function is None:
            data = message.function or self._function_bytes.get(token)
            if data is None:
                raise LookupError(
                    f"function {token} was never sent to this worker"
                    f" (task {message.key!r})"
                )
            function = pickle.loads(data)
            self._functions[token] = function
            self._function_bytes.pop(token, None)
        return function

    # --- tasks inside tasks (localsched.worker.context) -------------------------

    def _secede(self) -> None:
        """The calling task leaves the pool: another thread takes its slot."""
        state = thread_state
        if state.seceded:
            raise KeyError(f"task {state.key!r} already seceded")
        state.seceded = True
        with self._lock:
            if not self._is_closing:
                threading.Thread(
                    target=self._task_loop,
                    name=f"localsched-task-s{next(self._seceded_threads)}",
                    daemon=True,
                ).start()
        self._outbox.post_nowait(
            LongRunning(
                key=state.key,
                run_id=state.run_id,
                compute_duration=time.time() - state.start_time,
            )
        )

    def _rejoin(self) -> None:
        """Wait until a thread of the pool leaves it to give the task its slot."""
        state = thread_state
        if not state.seceded:
            return
        event = threading.Event()
        with self._lock:
            if not self._is_closing:
                self._rejoiners.append(event)
                self._has_work.notify_all()
                closing = False
            else:
                closing = True
        if not closing:
            event.wait()
        state.seceded = False

    def _discard(self, reply: TaskDone | TaskFailed) -> None:
        # The worker owns what it wrote until the scheduler adopts it (shm.py);
        # a leased segment goes back to the writer's leases, still the store's.
        payload = reply.payload if type(reply) is TaskDone else None
        if isinstance(payload, BlobRef):
            if self.writer is not None:
                self.writer.discard(payload)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(payload.segment)

    def pipe_link(self) -> PipeLink:
        """The worker's link to the scheduler thread (made on first use): its
        own events go through it, and so does the client of its tasks
        (``localsched.client.task_client``)."""
        with self._client_lock:
            if self._link is None:
                from localsched.worker.link import PipeLink

                self._link = PipeLink(self)
            return self._link


class _Outbox:
    """Batches replies: one ``send_bytes`` carries everything posted meanwhile.

    A task thread that posts while nobody is sending becomes the sender and sends
    until the outbox is empty (no thread hop on the hot path); posts made during a
    send ride in the next batch. The control thread must never block on the pipe
    (module docstring), so its posts are sent by the sender thread.

    Short tasks would still cost one write per task (about 20 us of system call
    and reader wake-up here, more than the task), so a reply posted with
    ``may_defer`` waits for the next one, up to ``max_batch`` replies and
    ``max_delay`` seconds; the sender thread sends it at the deadline if no post
    comes first. dask's worker batches its messages every 2 ms likewise.
    """

    def __init__(
        self,
        conn: Connection,
        max_delay: float = _MAX_REPLY_DELAY,
        max_batch: int = _MAX_DEFERRED_REPLIES,
    ) -> None:
        self._conn = conn
        self._max_delay = max_delay
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: list[Message] = []
        self._is_sending = False
        self._is_kicked = False  # the sender thread should send _pending
        self._is_closed = False
        #: time.monotonic() by which deferred replies in _pending must be sent;
        #: None when nothing waits for a deadline.
        self._deadline: float | None = None

    def post(self, message: Message, may_defer: bool = False) -> None:
        """Queue ``message`` and send it now unless another thread is sending, or
        ``may_defer`` and the batch is young and small."""
        if self.add(message, may_defer):
            self.send_all()

    def add(self, message: Message, may_defer: bool = False) -> bool:
        """Queue ``message`` without sending (never blocks on the pipe).

        Returns True if the caller became the sender and must call
        :meth:`send_all` (see :meth:`post`).
        """
        with self._lock:
            if self._is_closed:
                return False
            self._pending.append(message)
            if self._is_sending:
                return False
            if may_defer and len(self._pending) < self._max_batch:
                if self._deadline is None:
                    self._deadline = time.monotonic() + self._max_delay
                    self._changed.notify_all()  # the sender thread arms its timer
                    return False
                if time.monotonic() < self._deadline:
                    return False
            self._is_sending = True
            return True

    def post_nowait(self, message: Message) -> None:
        """Queue ``message`` for the sender thread; never blocks on the pipe."""
        with self._lock:
            if self._is_closed:
                return
            self._pending.append(message)
            if not self._is_sending:
                self._is_sending = self._is_kicked = True
                self._changed.notify_all()

    def sender_loop(self) -> None:
        while self._wait_for_turn():
            self.send_all()

    def _wait_for_turn(self) -> bool:
        with self._lock:
            while not self._is_closed:
                if self._is_kicked:
                    self._is_kicked = False  # post_nowait set _is_sending
                    return True
                if self._deadline is None or self._is_sending:
                    self._changed.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    self._is_sending = True
                    return True
                self._changed.wait(remaining)
            return False

    def close(self, final: Message | None) -> None:
        """Send what is pending plus ``final``, then refuse further posts."""
        with self._lock:
            deadline = time.monotonic() + _GOODBYE_TIMEOUT
            while self._is_sending and not self._is_closed:
                if not self._changed.wait(deadline - time.monotonic()):
                    # A send is stuck: the scheduler stopped reading. Writing now
                    # would interleave with it, so leave without a goodbye.
                    self._is_closed = True
            self._is_closed, was_closed = True, self._is_closed
            if was_closed:
                return
            batch = self._pending if final is None else [*self._pending, final]
            self._pending = []
            self._changed.notify_all()
        if batch:
            # OSError: the scheduler is gone; nobody is left to tell.
            with contextlib.suppress(OSError):
                self._conn.send_bytes(encode_batch(batch))

    def send_all(self) -> None:
        """Send until nothing is pending; only for the thread that :meth:`add`
        made the sender. One sender at a time keeps batches in posting order."""
        while True:
            with self._lock:
                batch = self._pending
                if not batch or self._is_closed:
                    self._is_sending = False
                    self._changed.notify_all()
                    return
                self._pending = []
                self._deadline = None
            try:
                self._conn.send_bytes(encode_batch(batch))
            except BaseException as exc:
                with self._lock:
                    self._is_closed = True
                    self._is_sending = False
                    self._changed.notify_all()
                if isinstance(exc, OSError):
                    return  # the scheduler is gone: the control thread sees EOF
                raise


def extend_path(entries: Iterable[str]) -> None:
    """Append the ``sys.path`` entries this process lacks (in their order).

    Appended, not prepended: the cluster's entries must not shadow the
    modules this worker runs on.
    """
    known = set(sys.path)
    added = [entry for entry in entries if entry not in known]
    if added:
        sys.path.extend(added)
        importlib.invalidate_caches()
