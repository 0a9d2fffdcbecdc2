"""A dask comm backend for ``local://`` addresses: dask code that talks to "the
scheduler" over a comm reaches a localsched cluster of this process.

Some of distributed's own tools do not go through a ``Client`` but open a comm
to ``client.scheduler.address`` (``distributed.core.connect``) and send it an
operation: ``TextProgressBar`` sends ``{"op": "feed", ...}``, which asks the
scheduler to run a pickled ``setup(scheduler)`` once, then a pickled
``function(scheduler, state)`` every ``interval`` and to send back each result.
Distributed finds this backend through the ``distributed.comm.backends``
entry point (``pyproject.toml``) when it meets the ``local`` scheme; nothing here
is imported unless dask code connects to a localsched address.

There is no socket or listener: the comm is a pair of queues in this process,
and the far end is this module answering the operations it knows through the
cluster's front door (``RunOnScheduler`` requests), so the functions run on the
scheduler thread with the dask-named ``Scheduler``, as they would on dask's.

A feed's coroutines run on an event loop of their own that only ever turns on
the scheduler thread, one turn per request: ``Progress.setup`` may
``await asyncio.sleep`` until the keys it waits for arrive, and that must not
hold the scheduler thread meanwhile (the keys would never arrive).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from distributed.comm.core import Comm, CommClosedError, Connector
from distributed.comm.registry import Backend
from distributed.protocol import pickle as dask_pickle

from localsched.client.local_link import LocalLink
from localsched.deploy.local import cluster_at
from localsched.transport.requests import DisconnectClient, RunOnScheduler
from localsched.units import parse_timedelta

__all__ = ["LocalBackend", "LocalComm"]

logger = logging.getLogger("localsched.integrations.dask_comm")

SCHEME = "local"
_comm_ids = itertools.count()


class LocalBackend(Backend):
    """The ``local`` scheme: connectors only (no listener: nothing outside this
    process can reach a localsched scheduler)."""

    def get_connector(self) -> Connector:
        return LocalConnector()

    def get_listener(
        self, loc: str, handle_comm: Any, deserialize: bool, **connection_args: Any
    ) -> Any:
        raise ValueError(
            f"cannot listen on local://{loc}: local:// addresses name localsched "
            "clusters of this process, which accept no connections from outside"
        )

    def get_address_host(self, loc: str) -> str:
        return "localhost"

    def resolve_address(self, loc: str) -> str:
        return loc

    def get_local_address_for(self, loc: str) -> str:
        return f"{loc}/comm-{next(_comm_ids)}"


class LocalConnector(Connector):
    async def connect(
        self, address: str, deserialize: bool = True, **connection_args: Any
    ) -> LocalComm:
        try:
            cluster = cluster_at(f"{SCHEME}://{address}")
        except ValueError as error:
            # dask's connect() retries an OSError until its timeout, then says so.
            raise OSError(str(error)) from error
        link = LocalLink(cluster)
        local_address = f"{SCHEME}://{address}/comm-{next(_comm_ids)}"
        link.connect(local_address, {}, on_restart=None, timeout=None)
        return LocalComm(link, local_address, f"{SCHEME}://{address}", deserialize)


class LocalComm(Comm):
    """One comm to the scheduler of a ``LocalCluster`` of this process.

    What is written is answered by this side: the handshake first, then the
    operations below; what is read are the answers, in order.
    """

    def __init__(
        self, link: LocalLink, local_address: str, peer_address: str, deserialize: bool
    ) -> None:
        super().__init__(deserialize=deserialize)
        self._link = link
        self._local_addr = local_address
        self._peer_addr = peer_address
        #: The loop the comm is used on (the scheduler thread hands answers to it).
        self._comm_loop = asyncio.get_running_loop()
        self._answers: asyncio.Queue[Any] = asyncio.Queue()
        self._handshaken = False
        self._closed = False
        self._feeds: list[asyncio.Task[None]] = []

    @property
    def local_address(self) -> str:
        return self._local_addr

    @property
    def peer_address(self) -> str:
        return self._peer_addr

    async def read(self, deserializers: Any = None) -> Any:
        if self._closed:
            raise CommClosedError(f"{self!r} is closed")
        answer = await self._answers.get()
        if answer is _CLOSED:
            raise CommClosedError(f"{self!r} was closed by the scheduler side")
        return answer

    async def write(
        self, msg: Any, serializers: Any = None, on_error: Any = None
    ) -> int:
        if self._closed:
            raise CommClosedError(f"{self!r} is closed")
        if not self._handshaken:
            self._handshaken = True
            self._answers.put_nowait(self.handshake_info())
            return 0
        op = msg.get("op") if isinstance(msg, dict) else None
        if op == "feed":
            self._feeds.append(asyncio.ensure_future(self._feed(**_without_op(msg))))
        elif op in ("close", "close-stream"):
            await self.close()
        else:
            # dask's server answers an op it has no handler for with this error.
            message = f"No handler found: {op} (a localsched scheduler serves 'feed')"
            logger.warning(message)
            self._answers.put_nowait(
                {"status": "uncaught-error", "exception": ValueError(message)}
            )
        return 0

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for feed in self._feeds:
            feed.cancel()
        for feed in self._feeds:
            with contextlib.suppress(asyncio.CancelledError):
                await feed
        self._answers.put_nowait(_CLOSED)
        self._disconnect()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        for feed in self._feeds:
            feed.cancel()
        self._answers.put_nowait(_CLOSED)
        self._disconnect()

    def closed(self) -> bool:
        return self._closed

    def _disconnect(self) -> None:
        if self._link.is_running:
            # Not waited for: abort() is called from __del__ and may not block.
            self._link.request(DisconnectClient())

    async def _on_scheduler(self, function: Callable[..., Any], *args: Any) -> Any:
        request = RunOnScheduler(function=_with_scheduler, args=(function, *args))
        return await asyncio.wrap_future(self._link.request(request))

    async def _feed(
        self,
        function: bytes | None = None,
        setup: bytes | None = None,
        teardown: bytes | None = None,
        interval: str | float = "1s",
        **kwargs: Any,
    ) -> None:
        """dask's ``Scheduler.feed``: ``setup`` once, then ``function`` each
        ``interval``, each answer sent back, ``teardown`` at the end."""
        period = parse_timedelta(interval, default="s") or 0.0
        loop = FeedLoop()
        body = partial(
            _feed_body,
            function=_loads(function),
            setup=_loads(setup),
            teardown=_loads(teardown),
            interval=period,
            send=self._answer_from_scheduler_thread,
        )
        try:
            await self._on_scheduler(loop.start, body)
            while not await self._on_scheduler(loop.turn):
                await asyncio.sleep(min(period, 0.05) if period else 0)
        except Exception:
            # As dask's server: the handler's error is logged there and the
            # comm closes, so the reader sees CommClosedError.
            logger.exception("The feed on %s failed", self._peer_addr)
            self._answer(_CLOSED)
        finally:
            if self._link.is_running:
                await self._on_scheduler(loop.finish)

    def _answer(self, answer: Any) -> None:
        if not self._closed:
            self._answers.put_nowait(answer)

    def _answer_from_scheduler_thread(self, answer: Any) -> None:
        self._comm_loop.call_soon_threadsafe(self._answer, answer)


class _Closed:
    def __repr__(self) -> str:
        return "<comm closed>"


_CLOSED = _Closed()


def _without_op(message: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in message.items() if name != "op"}


def _loads(payload: bytes | None) -> Callable[..., Any] | None:
    return None if payload is None else dask_pickle.loads(payload)


def _with_scheduler(
    function: Callable[..., Any], *args: Any, dask_scheduler: Any
) -> Any:
    return function(dask_scheduler, *args)


async def _feed_body(
    scheduler: Any,
    *,
    function: Callable[..., Any] | None,
    setup: Callable[..., Any] | None,
    teardown: Callable[..., Any] | None,
    interval: float,
    send: Callable[[Any], None],
) -> None:
    state = setup(scheduler) if setup is not None else None
    if inspect.isawaitable(state):
        state = await state
    try:
        while scheduler.status == "running" and function is not None:
            send(function(scheduler) if state is None else function(scheduler, state))
            await asyncio.sleep(interval)
    finally:
        if teardown is not None:
            teardown(scheduler, state)


class FeedLoop:
    """An event loop that turns only when asked, on the scheduler thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def start(
        self, scheduler: Any, body: Callable[[Any], Coroutine[Any, Any, None]]
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._task = self._loop.create_task(body(scheduler))
        self.turn(scheduler)

    def turn(self, scheduler: Any) -> bool:
        """Run what is ready (callbacks, timers due); True once the feed ended."""
        assert self._loop is not None
        assert self._task is not None
        self._loop.call_soon(self._loop.stop)
        self._loop.run_forever()
        if self._task.done():
            self._task.result()  # the feed's own error reaches the comm
            return True
        return False

    def finish(self, scheduler: Any) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()
            self._loop.run_until_complete(
                asyncio.gather(self._task, return_exceptions=True)
            )
        self._loop.close()
