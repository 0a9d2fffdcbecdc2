"""dask collections on localsched, and the one line that moves them to distributed.

Runs as is on localsched. To run it on dask.distributed (a cluster of many
machines, or its LocalCluster here), change only the import line to::

    from distributed import Client

``tests/runtime/test_handover.py`` runs this script both ways and checks that
they print the same thing.
"""

from __future__ import annotations

import dask
import dask.array as da
import dask.bag as db

from localsched import Client


def square(v: int) -> int:
    return v * v


def main() -> None:
    with Client(n_workers=2, threads_per_worker=1) as client:
        x = da.random.RandomState(0).random((2000, 2000), chunks=(500, 500))
        # x.compute() / dask.compute use the client while it is open.
        print(f"(x + x.T).mean() = {(x + x.T).mean().compute():.6f}")

        persisted = client.persist(x)  # the same array, backed by futures
        print(f"persisted column sums[:3] = {persisted.sum(axis=0)[:3].compute()}")

        future = client.compute(x.std())  # a future, computed in the background
        print(f"x.std() = {future.result():.6f}")

        total = dask.delayed(sum)([dask.delayed(square)(i) for i in range(10)])
        bag = db.from_sequence(range(100), npartitions=4).map(square)
        print(f"delayed sum = {total.compute()}, bag sum = {bag.sum().compute()}")


if __name__ == "__main__":
    main()
