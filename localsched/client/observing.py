"""``ObservingMixin``: the ``Client`` methods that show what the cluster did
and is doing: events, logs, call stacks, the profile.

``log_event``, ``get_events``, ``subscribe_topic``, ``unsubscribe_topic``,
``forward_logging``, ``unforward_logging``, ``get_worker_logs``,
``get_scheduler_logs``, ``call_stack`` and ``profile``, with
``distributed.Client``'s names, signatures and return shapes. Each sends one
typed request through the client's link, so each works inside a task too.

Events of the topics a client subscribed to arrive from the scheduler thread
(or a worker's control thread) through ``_deliver_event``; the client's own
event thread, started with the first event, runs the handlers in order, so a
slow handler never holds the scheduler up::

    scheduler thread: EventLog.publish ─▶ ClientHandle.deliver ─▶ _deliver_event
        ─▶ queue ─▶ "localsched-events" thread ─▶ handler((time, msg))

Every client of the user's process subscribes to ``"print"`` and ``"warn"`` on
connecting, as dask's does, which is how ``localsched.print`` and
``localsched.warn`` in a task reach it.
"""

from __future__ import annotations

import inspect
import logging
import pickle
import queue
import sys
import threading
import warnings
from collections.abc import Callable, Collection, Hashable
from numbers import Number
from typing import Any

from localsched.client.control import _keys_of, _worker_list
from localsched.client.dual import dual
from localsched.transport import pickling
from localsched.transport import requests as rq

Key = Hashable

__all__ = ["DEFAULT_EVENT_HANDLERS", "ObservingMixin"]

logger = logging.getLogger("localsched.client")


def _log_failure(topic: str, done: Any) -> None:
    error = None if done.cancelled() else done.exception()
    if error is not None:
        logger.error("The handler of topic %r failed", topic, exc_info=error)


#: Prefix of the topics ``forward_logging`` uses (dask's constant).
TOPIC_PREFIX_FORWARDED_LOG_RECORD = "forwarded-log-record"


def _handle_print(event: tuple[float, Any]) -> None:
    """dask's handler of ``"print"`` events: print as the task did."""
    _, msg = event
    if not isinstance(msg, dict):
        print(msg)  # someone logged a "print" event by hand
        return
    args = msg.get("args")
    if not isinstance(args, tuple):
        raise TypeError(f"_handle_print: client received non-tuple args: {args!r}")
    file = msg.get("file")
    if file == 1:
        file = sys.stdout
    elif file == 2:
        file = sys.stderr
    elif file is not None:
        raise TypeError(f"_handle_print: client received unsupported file: {file!r}")
    flush = bool(msg.get("flush"))
    print(*args, sep=msg.get("sep"), end=msg.get("end"), file=file, flush=flush)


def _handle_warn(event: tuple[float, Any]) -> None:
    """dask's handler of ``"warn"`` events: issue the task's warning here."""
    _, msg = event
    if not isinstance(msg, dict):
        warnings.warn(msg, stacklevel=1)
        return
    if "message" not in msg:
        raise TypeError(
            "_handle_warn: client received a warn event missing the required "
            '"message" argument.'
        )
    category = pickle.loads(msg["category"]) if "category" in msg else None
    warnings.warn(pickle.loads(msg["message"]), category=category, stacklevel=1)


#: The handlers every client of the user's process starts with.
DEFAULT_EVENT_HANDLERS: dict[str, Callable[[tuple[float, Any]], Any]] = {
    "print": _handle_print,
    "warn": _handle_warn,
}


def _handle_forwarded_log_record(event: tuple[float, Any]) -> None:
    _, attributes = event
    record = logging.makeLogRecord(attributes)
    logging.getLogger(record.name).handle(record)


class _EventThread:
    """Runs a client's topic handlers, in order, on a thread of its own."""

    _STOP = object()

    def __init__(self, handle: Callable[[str, Any], None]) -> None:
        self._handle = handle
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name="localsched-events", daemon=True
        )
        self._thread.start()

    def put(self, topic: str, event: Any) -> None:
        self._queue.put((topic, event))

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._STOP:
            try:
                self._handle(*item)
            except Exception:
                logger.exception("The handler of topic %r failed", item[0])

    def stop(self, timeout: float = 10.0) -> None:
        """Run the events queued so far, then end: waits up to ``timeout``
        seconds (a handler that hangs must not hang ``close``), and not at all
        when called from a handler."""
        self._queue.put(self._STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


class ObservingMixin:
    """Events, logs, call stacks and the profile; methods of ``Client``."""

    _link: Any
    status: str
    #: topic -> the handler of its events.
    _event_handlers: dict[str, Callable[[tuple[float, Any]], Any]]
    _event_thread: _EventThread | None
    _event_lock: threading.Lock
    _events_stopped: bool

    def _init_events(
        self, handlers: dict[str, Callable[[tuple[float, Any]], Any]]
    ) -> None:
        """Start with these topic handlers (the client subscribes to their
        topics as it connects); the event thread starts with the first event."""
        self._event_handlers = dict(handlers)
        self._event_thread = None
        self._event_lock = threading.Lock()
        self._events_stopped = False

    def _request(self, request: rq.Request) -> Any:
        return self._link.request(request).result()

    # -- events ---------------------------------------------------------------------

    @dual
    def log_event(self, topic: str | Collection[str], msg: Any) -> None:
        """Log an event under a given topic.

        Parameters
        ----------
        topic : str, list[str]
            Name of the topic under which to log an event. To log the same
            event under multiple topics, pass a list of topic names.
        msg
            Event message to log; must be picklable (dask: msgpack
            serializable).

        Raises
        ------
        TypeError
            ``msg`` cannot be pickled.

        Examples
        --------
        >>> from time import time
        >>> client.log_event("current-time", time())  # doctest: +SKIP
        """
        try:
            pickling.dumps(msg, protocol=5)
        except Exception as exc:
            raise TypeError(
                f"Message must be picklable. Got {type(msg)=} instead."
            ) from exc
        topics = (topic,) if isinstance(topic, str) else tuple(topic)
        self._request(rq.LogEvent(topics=topics, msg=msg))

    @dual
    def get_events(self, topic: str | None = None) -> Any:
        """Retrieve structured topic logs.

        Parameters
        ----------
        topic : str, optional
            Name of topic log to retrieve events for. If no ``topic`` is
            provided, then logs for all topics will be returned.

        Returns
        -------
        tuple or dict
            The topic's events as ``((time, msg), ...)``, oldest first (the
            last 1,000 are kept per topic); without ``topic``, a dict topic ->
            events of every topic that has some.
        """
        return self._request(rq.GetEvents(topic=topic))

    def subscribe_topic(
        self, topic: str, handler: Callable[[tuple[float, Any]], Any]
    ) -> None:
        """Subscribe to a topic and execute a handler for every received event.

        Parameters
        ----------
        topic : str
            The topic name.
        handler : callable or coroutine function
            Called with each event ``(timestamp, msg)`` logged under the topic
            from now on, in order, on the client's event thread.

        Examples
        --------
        >>> import logging
        >>> logger = logging.getLogger(__name__)
        >>> client.subscribe_topic("topic-name", lambda: logger.info)  # doctest: +SKIP
        """
        if topic in self._event_handlers:
            logger.info("Handler for %s already set. Overwriting.", topic)
        self._event_handlers[topic] = handler
        self._request(rq.SubscribeTopic(topic=topic))

    def unsubscribe_topic(self, topic: str) -> None:
        """Unsubscribe from a topic and remove its event handler.

        Raises
        ------
        ValueError
            No handler is known for ``topic``.
        """
        if topic not in self._event_handlers:
            raise ValueError(f"No event handler known for topic {topic}.")
        del self._event_handlers[topic]
        self._request(rq.SubscribeTopic(topic=topic, subscribe=False))

    def _deliver_event(self, topic: str, event: tuple[float, Any]) -> None:
        """An event of a subscribed topic (scheduler or control thread):
        queue it for the event thread."""
        with self._event_lock:
            if self._events_stopped:
                return
            if self._event_thread is None:
                self._event_thread = _EventThread(self._handle_event)
            self._event_thread.put(topic, event)

    def _handle_event(self, topic: str, event: tuple[float, Any]) -> None:
        handler = self._event_handlers.get(topic)
        if handler is None:
            return  # unsubscribed meanwhile
        result = handler(event)
        if inspect.isawaitable(result):
            import asyncio

            async def finish() -> Any:
                return await result

            binding = getattr(self, "_aio", None)
            if binding is not None and binding.loop.is_running():
                # As dask: a coroutine handler runs in the client's event loop
                # (not waited for here: the loop may be closing the client).
                done = asyncio.run_coroutine_threadsafe(finish(), binding.loop)
                done.add_done_callback(lambda d: _log_failure(topic, d))
                return
            asyncio.run(finish())

    def _stop_events(self) -> None:
        """Close: the queued events' handlers run, then the thread ends."""
        with self._event_lock:
            self._events_stopped = True
            thread, self._event_thread = self._event_thread, None
        if thread is not None:
            thread.stop()

    # -- logging ----------------------------------------------------------------------

    def forward_logging(
        self, logger_name: str | None = None, level: int | str = logging.NOTSET
    ) -> Any:
        """Forward a logger's records from the workers' tasks to this process.

        Each record the named logger (or one below it) handles in a worker is
        sent here and handled by the logger of the same name, with a
        ``worker`` attribute naming the worker. Both sides' levels apply.

        Parameters
        ----------
        logger_name : str, optional
            The logger to forward; None: the root logger, so every logger.
        level : str | int, optional
            Only records of this level or higher.

        Examples
        --------
        >>> client.forward_logging()  # doctest: +SKIP
        >>> def do_error():
        ...     logging.getLogger(__name__).error("Hello error")
        ...     return 42
        >>> client.submit(do_error).result()  # doctest: +SKIP
        Hello error
        42
        """
        from localsched.plugins import ForwardLoggingPlugin

        plugin_name = f"forward-logging-{logger_name or '<root>'}"
        topic = f"{TOPIC_PREFIX_FORWARDED_LOG_RECORD}-{plugin_name}"
        self.subscribe_topic(topic, _handle_forwarded_log_record)
        return self.register_plugin(  # type: ignore[attr-defined]
            ForwardLoggingPlugin(logger_name, level, topic), plugin_name
        )

    @dual
    def unforward_logging(self, logger_name: str | None = None) -> Any:
        """Stop forwarding the given logger (default root) from worker tasks to
        the client process."""
        plugin_name = f"forward-logging-{logger_name or '<root>'}"
        topic = f"{TOPIC_PREFIX_FORWARDED_LOG_RECORD}-{plugin_name}"
        self.unsubscribe_topic(topic)
        return self.unregister_worker_plugin(plugin_name)  # type: ignore[attr-defined]

    @dual
    def get_scheduler_logs(self, n: int | None = None) -> list[tuple[str, str]]:
        """Get logs from the scheduler.

        The records of the ``localsched`` loggers in the process running the
        cluster, at the level those loggers let through (WARNING unless the
        application set another).

        Parameters
        ----------
        n : int
            Number of logs to retrieve (at most the last 10,000 are kept).

        Returns
        -------
        list of (level, text)
            Logs in reversed order (newest first).
        """
        result: list[tuple[str, str]] = self._request(rq.SchedulerLogs(n=n))
        return result

    @dual
    def get_worker_logs(
        self, n: int | None = None, workers: Any = None, nanny: bool = False
    ) -> dict[str, list[tuple[str, str]]]:
        """Get logs from workers.

        The records of the ``localsched`` loggers in each worker process, from
        INFO up (dask keeps its worker's logger at INFO too).

        Parameters
        ----------
        n : int
            Number of logs to retrieve (at most the last 10,000 are kept).
        workers : iterable
            Worker addresses or names; all workers by default.
        nanny : bool, default False
            Accepted for dask compatibility: localsched has no nannies.

        Returns
        -------
        dict
            Worker address -> logs, newest first, as ``(level, text)``.
        """
        if nanny:
            raise ValueError("localsched has no nannies: use nanny=False")
        result: dict[str, list[tuple[str, str]]] = self._request(
            rq.WorkerLogs(n=n, workers=_worker_list(workers))
        )
        return result

    # -- what runs now, and where the time went ---------------------------------------

    @dual
    def call_stack(
        self, futures: Any = None, keys: Collection[Key] | None = None
    ) -> dict[str, dict[Key, list[str]]]:
        """The actively running call stack of all relevant keys.

        Give futures (or collections holding them) in ``futures=``, keys in
        ``keys=``, or nothing for every running task. A key still waiting
        stands for the tasks it waits for.

        Returns
        -------
        dict
            Worker address -> key -> the task thread's stack as traceback
            lines, outermost first (from the task's function down); only
            workers running one of the keys appear.

        Examples
        --------
        >>> client.call_stack(future)  # doctest: +SKIP
        {'local://1234/0': {'slow-ab12': ['  File "x.py", line 3, in slow\\n\\t...']}}
        """
        wanted = list(keys or [])
        if futures is not None:
            wanted += _keys_of(futures)
        selected = tuple(dict.fromkeys(wanted)) if wanted else None
        result: dict[str, dict[Key, list[str]]] = self._request(
            rq.CallStack(keys=selected)
        )
        return result

    @dual
    def profile(
        self,
        key: str | None = None,
        start: float | None = None,
        stop: float | None = None,
        workers: Any = None,
        merge_workers: bool = True,
        plot: bool | str = False,
        filename: str | None = None,
        server: bool = False,
        scheduler: bool = False,
    ) -> dict[str, Any]:
        """Collect statistical profiling information about recent work.

        Each worker samples its task threads' stacks every 10 ms while tasks
        run and keeps the counts per key prefix, as dask's profiler does.

        Parameters
        ----------
        key : str
            Key prefix to select, typically a function name like ``'inc'``;
            None for all work.
        start, stop : float
            Times (``time.time()``) bounding the work to count (to the second).
        workers : list
            Workers to ask; all by default.
        merge_workers : bool
            One call tree for all workers (default), else address -> tree.
        plot, filename, server, scheduler
            dask's options for a bokeh figure and for profiling the workers'
            and scheduler's own threads; not offered here.

        Returns
        -------
        dict
            dask's call tree: ``count`` (samples), ``children`` (identifier ->
            subtree), ``identifier``, ``description`` (``filename``, ``name``,
            ``line_number``, ``line``).

        Raises
        ------
        ValueError
            ``plot``, ``filename``, ``server`` or ``scheduler`` given.
        """
        for name, value in (
            ("plot", plot),
            ("filename", filename),
            ("server", server),
            ("scheduler", scheduler),
        ):
            if value:
                raise ValueError(
                    f"profile({name}=...) is not offered by localsched: the "
                    "call tree is returned as data"
                )
        if isinstance(workers, str | Number):
            workers = [workers]
        result: dict[str, Any] = self._request(
            rq.Profile(
                key=key,
                start=start,
                stop=stop,
                workers=_worker_list(workers),
                merge_workers=merge_workers,
            )
        )
        return result
