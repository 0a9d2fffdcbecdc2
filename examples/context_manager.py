"""Clusters and clients as context managers: everything closes, even on errors.

    python examples/context_manager.py

``with LocalCluster(...)`` owns the worker processes and the shared memory;
``with Client(cluster)`` attaches to it (several clients may share one
cluster). Leaving the blocks stops the workers and frees every shared-memory
segment, also when the block raises. With dask.distributed, import ``Client``
and ``LocalCluster`` from ``distributed`` instead.
"""

from __future__ import annotations

from localsched import Client, LocalCluster, progress


def square(x: int) -> int:
    return x * x


def main() -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster:
        print(cluster)
        with Client(cluster) as client:
            futures = client.map(square, range(100))
            total = client.submit(sum, futures)
            progress(total)
            print("sum of squares:", total.result())
        print("client closed, cluster still", cluster.status)
        with Client(cluster) as again:
            print(
                "a second client on the same cluster:",
                again.submit(square, 12).result(),
            )
    print("cluster", cluster.status)

    try:
        with Client(n_workers=1) as client:
            client.submit(square, "not a number").result()
    except TypeError as error:
        print("the error came back and the cluster closed:", type(error).__name__)
    print("client", client.status, "/ its cluster", client.cluster.status)


if __name__ == "__main__":
    main()
