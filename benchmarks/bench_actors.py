"""Actor call latency: localsched against dask.distributed, same workers.

One actor (a counter) on a cluster of 1 worker x 1 thread; the client calls
``counter.increment().result()`` (a method round trip) and reads ``counter.n``
(an attribute round trip) in a loop, one call at a time. Printed: the median
and 90th percentile of a round trip in microseconds, per system, each in a
fresh process. dask's client goes through the scheduler too (its default,
``direct_to_workers=False``), as every localsched call does.

    python benchmarks/bench_actors.py             # both systems, 2,000 calls
    python benchmarks/bench_actors.py --calls 500
    python benchmarks/bench_actors.py --system localsched --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from systems import run_each_system


class Counter:
    n = 0

    def __init__(self) -> None:
        self.n = 0

    def increment(self) -> int:
        self.n += 1
        return self.n


def _summary(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times) * 1e6, times[int(0.9 * len(times))] * 1e6


def _timings(calls: dict[str, Callable[[], Any]], n: int) -> dict[str, float]:
    """Round trips of each call, alternated so that a change of machine load
    during the run weighs on all of them alike."""
    for _ in range(min(n, 100)):  # warm up
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(n):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    figures = {}
    for name, values in times.items():
        figures[f"{name}_median_us"], figures[f"{name}_p90_us"] = _summary(values)
    return figures


def measure(system: str, n: int) -> dict[str, float]:
    if system == "localsched":
        from localsched import Client

        client = Client(n_workers=1, threads_per_worker=1)
    else:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=1, threads_per_worker=1, dashboard_address=None
        )
        client = Client(cluster)
    try:
        counter = client.submit(Counter, actor=True).result()
        return _timings(
            {
                "method": lambda: counter.increment().result(),
                "attribute": lambda: counter.n,
            },
            n,
        )
    finally:
        client.close()
        if system != "localsched":
            cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=["localsched", "distributed"])
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.system is not None:
        figures = measure(args.system, args.calls)
        print(json.dumps(figures) if args.json else figures)
        return
    table = run_each_system(__file__, "--calls", str(args.calls))
    names = list(next(iter(table.values())))
    print(f"{'':24}" + "".join(f"{system:>14}" for system in table))
    for name in names:
        print(f"{name:24}" + "".join(f"{table[s][name]:14.0f}" for s in table))


if __name__ == "__main__":
    main()
