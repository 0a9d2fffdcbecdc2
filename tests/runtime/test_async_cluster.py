"""``LocalCluster(asynchronous=True)``: starts when awaited without blocking the
event loop, ``close``/``scale``/``wait_for_workers`` awaitable, dask's errors.

Each test drives its own event loop with ``asyncio.run`` (no pytest plugin
needed), under the runtime suite's leak check: nothing may outlive the test.
"""

from __future__ import annotations

import asyncio
import operator

import pytest

from localsched import Client, LocalCluster
from tests.runtime.helpers import DEADLINE


def n_workers(cluster: LocalCluster) -> int:
    return len(cluster.scheduler.workers)


def test_async_with_starts_off_the_event_loop() -> None:
    async def main() -> tuple[int, int, str]:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, asynchronous=True)
        assert cluster.status == "created"  # nothing runs until awaited
        ticks_while_starting = 0

        async def tick() -> None:
            nonlocal ticks_while_starting
            while True:
                if cluster.status == "starting":
                    ticks_while_starting += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        async with cluster as entered:
            assert entered is cluster
            ticker.cancel()
            workers = n_workers(cluster)
        return ticks_while_starting, workers, cluster.status

    ticks, workers, status = asyncio.run(asyncio.wait_for(main(), DEADLINE))
    # The loop kept running while the workers started (in a thread of their own).
    assert ticks > 0
    assert workers == 2
    assert status == "closed"


def test_await_cluster_then_await_close() -> None:
    def use(cluster: LocalCluster) -> int:
        with Client(cluster) as client:
            return client.submit(operator.add, 1, 2).result(timeout=DEADLINE)

    async def main() -> tuple[int, int, str]:
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, asynchronous=True)
        assert await cluster is cluster
        assert cluster.status == "running"
        assert cluster.asynchronous
        # A synchronous client works on it from another thread.
        value = await asyncio.to_thread(use, cluster)
        workers = n_workers(cluster)
        closing = cluster.close()
        assert cluster.status == "running"  # nothing happens until awaited
        await closing
        return value, workers, cluster.status

    value, workers, status = asyncio.run(asyncio.wait_for(main(), DEADLINE))
    assert (value, workers, status) == (3, 1, "closed")


def test_scale_returns_an_awaitable_and_await_cluster_waits_for_workers() -> None:
    async def main() -> list[int]:
        seen = []
        async with LocalCluster(
            n_workers=1, threads_per_worker=1, asynchronous=True
        ) as cluster:
            await cluster.scale(3)
            await cluster
            seen.append(n_workers(cluster))
            cluster.scale(1)  # not awaited: the scaling happens all the same
            await cluster
            seen.append(n_workers(cluster))
            await cluster.wait_for_workers(1, timeout=DEADLINE)
        return seen

    assert asyncio.run(asyncio.wait_for(main(), 2 * DEADLINE)) == [3, 1]


def test_wait_for_workers_times_out_on_the_loop() -> None:
    async def main() -> None:
        async with LocalCluster(
            n_workers=1, threads_per_worker=1, asynchronous=True
        ) as cluster:
            with pytest.raises(TimeoutError, match="Only 1 of 3 workers"):
                await cluster.wait_for_workers(3, timeout=0.2)

    asyncio.run(asyncio.wait_for(main(), DEADLINE))


def test_sync_with_on_an_asynchronous_cluster_is_dask_s_type_error() -> None:
    async def main() -> str:
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, asynchronous=True)
        with pytest.raises(TypeError, match="please use 'async with'"), cluster:
            pytest.fail("entered with a synchronous with")
        await cluster.close()
        return cluster.status

    assert asyncio.run(main()) == "closed"


def test_never_awaited_cluster_starts_nothing_and_closes_synchronously() -> None:
    cluster = LocalCluster(n_workers=1, asynchronous=True)
    # No event loop runs here: the cluster is not asynchronous for this call.
    assert not cluster.asynchronous
    assert cluster.close() is None
    assert cluster.status == "closed"
    assert n_workers(cluster) == 0


def test_asynchronous_cluster_closed_from_outside_a_loop() -> None:
    cluster = asyncio.run(LocalCluster(n_workers=1, asynchronous=True)._started())
    assert n_workers(cluster) == 1
    assert cluster.close() is None  # synchronous: no loop runs in this thread
    assert cluster.status == "closed"


def test_cancelled_start_leaves_nothing_running() -> None:
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, asynchronous=True)

    async def enter() -> None:
        async with cluster:
            pytest.fail("entered although cancelled while starting")

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(enter(), 0.01)

    asyncio.run(main())
    assert cluster.status == "closed"  # and the leak check sees no worker


def test_start_error_reaches_the_awaiting_coroutine_with_its_type() -> None:
    # The scheduler preload is imported by the start, once awaited.
    cluster = LocalCluster(n_workers=1, preload=["no_such_module_"], asynchronous=True)

    async def main() -> None:
        with pytest.raises(ModuleNotFoundError, match="no_such_module_"):
            async with cluster:
                pytest.fail("entered although the start failed")

    asyncio.run(asyncio.wait_for(main(), DEADLINE))
    assert cluster.status == "closed"


def test_adapt_on_an_asynchronous_cluster() -> None:
    async def main() -> tuple[str, str]:
        async with LocalCluster(
            n_workers=1, threads_per_worker=1, asynchronous=True
        ) as cluster:
            adaptive = cluster.adapt(minimum=1, maximum=2, interval="50ms")
            state = adaptive.state
            cluster.scale(1)  # stops adapting, as dask's scale does
            await cluster
        return state, adaptive.state

    running, after = asyncio.run(asyncio.wait_for(main(), DEADLINE))
    assert running == "running"
    assert after != "running"
