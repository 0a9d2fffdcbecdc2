"""Adaptive scaling: the pool of workers follows the work.

    python examples/adaptive.py

One worker idles; a burst of tasks arrives and the pool grows to ``maximum``;
once the work is done it shrinks back to ``minimum``, and the results computed
by the retired workers are still there. Swap the import for
``from distributed import Client, LocalCluster`` and it runs on dask.distributed
(slower to scale: its workers take about a second to start).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from localsched import Client, LocalCluster


def work(x: int) -> tuple[int, int]:
    time.sleep(0.05)  # stands for real work (I/O here, so more workers help)
    return x * x, os.getpid()


def n_workers(client: Client) -> int:
    return len(client.scheduler_info()["workers"])


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the cluster did not adapt in time")
        time.sleep(0.02)


def main() -> None:
    with (
        LocalCluster(n_workers=1, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        adaptive = cluster.adapt(minimum=1, maximum=4, interval="200ms")
        print(cluster)
        print(f"idle: {n_workers(client)} worker")

        started = time.perf_counter()
        futures = client.map(work, range(400))
        wait_until(lambda: n_workers(client) == 4)
        print(
            f"burst: {n_workers(client)} workers after "
            f"{time.perf_counter() - started:.2f} s"
        )
        results = client.gather(futures)
        print(
            f"400 tasks done in {time.perf_counter() - started:.2f} s "
            f"on {len({pid for _, pid in results})} worker processes"
        )

        wait_until(lambda: n_workers(client) == 1)
        print(f"idle again: {n_workers(client)} worker")
        # Results of the retired workers were handed to the cluster, not lost.
        total = sum(square for square, _ in client.gather(futures))
        print(f"sum of squares, read after the pool shrank: {total}")
        for when, decision in adaptive.log:
            print(f"  {time.strftime('%H:%M:%S', time.localtime(when))} {decision}")
        print(adaptive)


if __name__ == "__main__":
    main()
