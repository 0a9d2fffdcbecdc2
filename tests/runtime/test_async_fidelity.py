"""The asynchronous surface where dask's own async tests probe it: a cancelled
awaiter never reaches the scheduler thread, ``Client`` on a closed or not yet
started asynchronous cluster, ``shutdown``'s log line.

Coroutine tests run with anyio's pytest plugin on asyncio (as the other
asynchronous tests), under the runtime suite's leak check, bounded by
``anyio.fail_after(DEADLINE)``.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import threading
from concurrent.futures import Future as CellFuture

import anyio
import pytest

from localsched import Client, LocalCluster
from localsched.aio import fulfil, new_cell
from localsched.errors import ClosedClientError
from tests.runtime.helpers import DEADLINE, after_pending_callbacks, one_worker_cluster

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Waiter:
    """An actor whose ``wait`` answers only once ``set`` was called."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self.event is None:
            self.event = asyncio.Event()  # on the actor's event loop
        return self.event

    async def wait(self) -> bool:
        return await self._event().wait()

    async def set(self) -> None:
        self._event().set()


# -- cancelled awaiters and the scheduler thread ------------------------------------


def test_a_cell_cannot_be_cancelled_and_fulfil_never_raises() -> None:
    cell = new_cell()
    assert cell.cancel() is False  # "running" from birth
    fulfil(cell, lambda: 42)
    assert cell.result() == 42
    # A plain future cancelled by its caller: the answer is dropped, not raised.
    cancelled: CellFuture[int] = CellFuture()
    assert cancelled.cancel()
    fulfil(cancelled, lambda: 1)
    fulfil(cancelled, lambda: 1 / 0)
    assert cancelled.cancelled()


async def test_a_cancelled_wrap_future_awaiter_leaves_the_scheduler_running() -> None:
    with anyio.fail_after(DEADLINE):
        async with one_worker_cluster() as (cluster, client):
            gate = threading.Event()
            # The scheduler thread is held, so the next call stays queued
            # while its awaiter is cancelled.
            held = cluster.runtime.call(lambda: gate.wait(DEADLINE))
            queued = cluster.runtime.call(lambda: 42)
            awaiter = asyncio.wrap_future(queued)
            propagated = asyncio.Event()
            # Runs after wrap_future's own callback, which cancels the source.
            awaiter.add_done_callback(lambda _: propagated.set())
            awaiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await awaiter
            await propagated.wait()
            # wrap_future tried to cancel its source; the cell refused.
            assert not queued.cancelled()
            gate.set()
            assert held.result(timeout=DEADLINE) is True
            assert queued.result(timeout=DEADLINE) == 42
            assert cluster.runtime.is_running
            assert await client.submit(operator.add, 1, 2) == 3


async def test_a_cancelled_actor_awaiter_leaves_the_call_and_the_cluster() -> None:
    with anyio.fail_after(DEADLINE):
        async with one_worker_cluster() as (cluster, client):
            waiter = await client.submit(Waiter, actor=True)
            call = waiter.wait()
            started = asyncio.Event()
            awaiting = asyncio.ensure_future(_await(call, started))
            await started.wait()  # and it went on to await the call
            awaiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await awaiting
            await after_pending_callbacks(rounds=3)  # what the cancel scheduled
            assert not call._cell.cancelled()
            await waiter.set()
            # The call answered on the scheduler thread after its awaiter left.
            assert await call is True
            assert cluster.runtime.is_running
            assert await client.submit(operator.add, 1, 2) == 3


async def _await(awaitable: object, started: asyncio.Event) -> object:
    started.set()  # this task runs on to the await before the setter resumes
    return await awaitable  # type: ignore[misc]


# -- Client on an asynchronous cluster ----------------------------------------------


async def test_client_on_a_closed_cluster_raises_dasks_runtime_error() -> None:
    with anyio.fail_after(DEADLINE):
        async with one_worker_cluster() as (cluster, client):
            assert await client.submit(operator.add, 1, 2) == 3
    with pytest.raises(RuntimeError, match="already closed or closing Cluster"):
        Client(cluster, asynchronous=True)
    with pytest.raises(ClosedClientError, match="already closed or closing Cluster"):
        Client(cluster)


async def test_client_awaits_an_asynchronous_cluster_not_yet_started() -> None:
    with anyio.fail_after(DEADLINE):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, asynchronous=True)
        assert cluster.status == "created"
        try:
            async with Client(cluster, asynchronous=True) as client:
                assert cluster.status == "running"
                assert client.cluster is cluster
                assert await client.submit(operator.add, 1, 2) == 3
            assert cluster.status == "running"  # the client did not start it
        finally:
            await cluster.close()
    assert cluster.status == "closed"


async def test_a_client_closed_before_the_cluster_started_attaches_nothing() -> None:
    with anyio.fail_after(DEADLINE):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, asynchronous=True)
        client = Client(cluster, asynchronous=True)
        await client.close()
        assert await client is client
        assert client.status == "closed"
        assert client.cluster is None
        await cluster.close()
    assert cluster.status == "closed"


async def test_shutdown_logs_dasks_message_on_localsched_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with anyio.fail_after(DEADLINE):
        async with LocalCluster(
            n_workers=1, threads_per_worker=1, asynchronous=True
        ) as cluster:
            with caplog.at_level(logging.INFO, logger="localsched.client"):
                async with Client(cluster, asynchronous=True) as client:
                    await client.shutdown()
            messages = [
                r.getMessage() for r in caplog.records if r.name == "localsched.client"
            ]
            assert messages == ["Shutting down scheduler from Client"]
            assert cluster.status == "closed"
