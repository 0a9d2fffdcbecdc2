"""``LocalCluster(asynchronous=True)``: starts when awaited without blocking the
event loop, ``close``/``scale``/``wait_for_workers`` awaitable, dask's errors.

Coroutine tests run with anyio's pytest plugin on asyncio (as the asynchronous
client's tests), under the runtime suite's leak check: nothing may outlive the
test. Each bounds its waits with ``anyio.fail_after(DEADLINE)``.
"""

from __future__ import annotations

import asyncio
import math
import operator

import anyio
import pytest

from localsched import Client, LocalCluster
from localsched.deploy.asynchronous import run_off_loop
from tests.runtime.helpers import DEADLINE, one_worker_cluster, poll_async


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def n_workers(cluster: LocalCluster) -> int:
    return len(cluster.scheduler.workers)


@pytest.mark.anyio
async def test_async_with_starts_off_the_event_loop() -> None:
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, asynchronous=True)
    assert cluster.status == "created"  # nothing runs until awaited
    ticks_while_starting = 0
    loop = asyncio.get_running_loop()
    timer: list[asyncio.TimerHandle] = []

    def tick() -> None:
        # A timer every millisecond: it fires only while the loop runs.
        nonlocal ticks_while_starting
        if cluster.status == "starting":
            ticks_while_starting += 1
        timer[:] = [loop.call_later(0.001, tick)]

    with anyio.fail_after(DEADLINE):
        tick()
        async with cluster as entered:
            timer[0].cancel()
            assert entered is cluster
            assert n_workers(cluster) == 2
    # The loop kept running while the workers started (in a thread of their own).
    assert ticks_while_starting > 0
    assert cluster.status == "closed"


@pytest.mark.anyio
async def test_await_cluster_then_await_close() -> None:
    def use(cluster: LocalCluster) -> int:
        with Client(cluster) as client:
            return client.submit(operator.add, 1, 2).result(timeout=DEADLINE)

    with anyio.fail_after(DEADLINE):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, asynchronous=True)
        assert await cluster is cluster
        assert cluster.status == "running"
        assert cluster.asynchronous
        # A synchronous client works on it from another thread.
        assert await run_off_loop(lambda: use(cluster), "use") == 3
        assert n_workers(cluster) == 1
        await cluster.close()
    assert cluster.status == "closed"


@pytest.mark.anyio
async def test_close_not_awaited_closes_all_the_same() -> None:
    # Code written for a synchronous cluster ignores close()'s result.
    with anyio.fail_after(DEADLINE):
        cluster = await LocalCluster(n_workers=1, asynchronous=True)
        cluster.close()
        assert await poll_async(lambda: cluster.status == "closed")
        await cluster.close()  # idempotent, and awaitable again


@pytest.mark.anyio
async def test_scale_returns_an_awaitable_and_await_cluster_waits() -> None:
    with anyio.fail_after(2 * DEADLINE):
        async with LocalCluster(
            n_workers=1, threads_per_worker=1, asynchronous=True
        ) as cluster:
            await cluster.scale(3)
            await cluster
            assert n_workers(cluster) == 3
            cluster.scale(1)  # not awaited: the scaling happens all the same
            await cluster
            assert n_workers(cluster) == 1
            await cluster.wait_for_workers(1, timeout=DEADLINE)


@pytest.mark.anyio
async def test_wait_for_workers_times_out_on_the_loop() -> None:
    with anyio.fail_after(DEADLINE):
        async with LocalCluster(
            n_workers=1, threads_per_worker=1, asynchronous=True
        ) as cluster:
            with pytest.raises(TimeoutError, match="Only 1 of 3 workers"):
                await cluster.wait_for_workers(3, timeout=0.2)


@pytest.mark.anyio
async def test_sync_with_on_an_asynchronous_cluster_is_dask_s_type_error() -> None:
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, asynchronous=True)
    with pytest.raises(TypeError, match="please use 'async with'"), cluster:
        pytest.fail("entered with a synchronous with")
    await cluster.close()
    assert cluster.status == "closed"


def test_never_awaited_cluster_starts_nothing_and_closes_synchronously() -> None:
    cluster = LocalCluster(n_workers=1, asynchronous=True)
    # No event loop runs here: the cluster is not asynchronous for this call.
    assert not cluster.asynchronous
    assert cluster.close() is None
    assert cluster.status == "closed"
    assert n_workers(cluster) == 0


def test_asynchronous_cluster_closed_from_outside_a_loop() -> None:
    async def start() -> LocalCluster:
        return await LocalCluster(n_workers=1, asynchronous=True)

    cluster = asyncio.run(start())
    assert n_workers(cluster) == 1
    assert cluster.close() is None  # synchronous: no loop runs in this thread
    assert cluster.status == "closed"


@pytest.mark.anyio
async def test_cancelled_start_leaves_nothing_running() -> None:
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, asynchronous=True)

    async def enter() -> None:
        async with cluster:
            pytest.fail("entered although cancelled while starting")

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(enter(), 0.01)
    assert cluster.status == "closed"  # and the leak check sees no worker


@pytest.mark.anyio
async def test_start_error_reaches_the_awaiting_coroutine_with_its_type() -> None:
    # The scheduler preload is imported by the start, once awaited.
    cluster = LocalCluster(n_workers=1, preload=["no_such_module_"], asynchronous=True)
    with anyio.fail_after(DEADLINE), pytest.raises(ModuleNotFoundError):
        async with cluster:
            pytest.fail("entered although the start failed")
    assert cluster.status == "closed"


@pytest.mark.anyio
async def test_adapt_on_an_asynchronous_cluster() -> None:
    with anyio.fail_after(DEADLINE):
        async with LocalCluster(
            n_workers=1, threads_per_worker=1, asynchronous=True
        ) as cluster:
            adaptive = cluster.adapt(minimum=1, maximum=2, interval="50ms")
            # As dask's: "starting" until the event loop picks it up.
            assert adaptive.state == "starting"
            assert await poll_async(lambda: adaptive.state == "running")
            cluster.scale(1)  # stops adapting, as dask's scale does
            await cluster
            assert adaptive.state != "running"
            assert n_workers(cluster) == 1


@pytest.mark.anyio
async def test_asynchronous_client_on_an_asynchronous_cluster() -> None:
    with anyio.fail_after(DEADLINE):
        async with one_worker_cluster() as (cluster, client):
            assert await client.submit(operator.add, 1, 2) == 3
            await cluster.scale(2)
            await cluster
            futures = client.map(operator.neg, range(10))
            assert await client.gather(futures) == [-i for i in range(10)]
    assert cluster.status == "closed"


@pytest.mark.anyio
async def test_adaptive_stops_when_the_cluster_stops_running() -> None:
    with anyio.fail_after(DEADLINE):
        async with LocalCluster(n_workers=0, asynchronous=True) as cluster:
            adaptive = cluster.adapt(minimum=0, maximum=1, interval="20ms")
            assert adaptive.maximum == 1
            unbounded = cluster.adapt(interval="20ms")
            assert adaptive.state == "stopped"
            assert unbounded.maximum == math.inf  # dask's default: no bound
            assert await poll_async(lambda: unbounded.state == "running")
            try:
                cluster.status = "closing"
                assert await poll_async(lambda: unbounded.state != "running")
                assert unbounded.state == "stopped"
                assert unbounded.periodic_callback is None
            finally:
                cluster.status = "running"  # for the close
