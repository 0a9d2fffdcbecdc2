"""The scheduler's event log: topics, their recent events, their subscribers.

dask's ``Broker``. ``Scheduler.log_event(topic, msg)`` (from a plugin, from the
runtime, or from a client's ``LogEvent`` request, also one sent from a task)
lands in :meth:`EventLog.publish`, on the scheduler thread::

    log_event ─▶ publish ─▶ (time, msg) appended to the topic's deque (bounded)
                        ├─▶ each subscribed client: ClientHandle.deliver
                        │     in this process: the client's event thread
                        │     a task's client: a TopicEvent to its worker
                        └─▶ plugins' log_event hooks (by the Scheduler)

Each topic keeps its last :data:`EVENTS_PER_TOPIC` events (dask's
``distributed.admin.low-level-log-length``), so the log stays bounded however
long the cluster runs. The runtime logs dask's cluster events here: a worker
added or removed (under ``"all"`` and the worker's address, with the cause of
a death), a client added or removed.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["EVENTS_PER_TOPIC", "EventLog"]

logger = logging.getLogger("localsched.runtime.scheduler_thread")

#: Events kept per topic (dask: 1,000).
EVENTS_PER_TOPIC = 1_000

Event = tuple[float, Any]


class EventLog:
    """Recent events per topic and who subscribed to them (scheduler thread).

    Parameters
    ----------
    deliver
        ``deliver(client_id, topic, event)`` sends one event to a subscriber.
    maxlen
        Events kept per topic.
    """

    def __init__(
        self,
        deliver: Callable[[str, str, Event], None],
        maxlen: int = EVENTS_PER_TOPIC,
    ) -> None:
        self._deliver = deliver
        self.maxlen = maxlen
        #: topic -> its last ``maxlen`` events, oldest first.
        self.topics: dict[str, deque[Event]] = {}
        #: topic -> ids of the clients subscribed to it.
        self.subscribers: dict[str, set[str]] = {}
        #: Events published under each topic, ever (not bounded).
        self.counts: dict[str, int] = {}

    def publish(self, topics: Iterable[str], msg: Any) -> None:
        """Record ``msg`` under each topic and send it to their subscribers."""
        event = (time.time(), msg)
        for topic in topics:
            events = self.topics.get(topic)
            if events is None:
                events = self.topics[topic] = deque(maxlen=self.maxlen)
            events.append(event)
            self.counts[topic] = self.counts.get(topic, 0) + 1
            for client in self.subscribers.get(topic, ()):
                try:
                    self._deliver(client, topic, event)
                except Exception:
                    logger.exception("Could not send an event of %r", topic)

    def subscribe(self, topic: str, client: str) -> None:
        self.subscribers.setdefault(topic, set()).add(client)

    def unsubscribe(self, topic: str, client: str) -> None:
        subscribers = self.subscribers.get(topic)
        if subscribers is not None:
            subscribers.discard(client)
            if not subscribers:
                del self.subscribers[topic]

    def forget_client(self, client: str) -> None:
        """The client left: it subscribes to nothing any more."""
        for topic in [t for t, s in self.subscribers.items() if client in s]:
            self.unsubscribe(topic, client)

    def get_events(
        self, topic: str | None = None
    ) -> tuple[Event, ...] | dict[str, tuple[Event, ...]]:
        """dask's ``get_events``: one topic's events, or every non-empty topic's."""
        if topic is not None:
            return tuple(self.topics.get(topic, ()))
        return {name: tuple(events) for name, events in self.topics.items() if events}
