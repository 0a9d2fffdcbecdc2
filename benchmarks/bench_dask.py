"""dask.array on localsched against dask.distributed, same workers.

The issue's workload: ``(x + x.T).mean()`` on a 20,000 x 20,000 random array in
1,000 x 1,000 chunks (400 chunks, ~2,000 tasks, 3.2 GB generated in chunks),
and a graph of 100,000 tiny tasks for the per-task cost. Each system runs in
its own fresh process with 2 workers x 1 thread; printed: seconds per workload
(best of ``--repeat``), time from ``compute`` to the first task sent to a worker
(the scheduler runs in this process for both), the part of that dask itself
spends building, optimizing and ordering the graph (the same for both systems),
and distributed/localsched ratios (above 1: localsched is faster).

    python benchmarks/bench_dask.py            # both systems
    python benchmarks/bench_dask.py --quick    # 4,000^2 in 500^2 chunks, 20,000 tasks
    python benchmarks/bench_dask.py --tiny 20000    # full array, fewer tiny tasks
    python benchmarks/bench_dask.py --system localsched --json
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from systems import run_each_system


class FirstDispatch:
    """A scheduler plugin recording when the first task was sent to a worker."""

    name = "first-dispatch"

    def __init__(self) -> None:
        self.first: float | None = None

    def transition(self, key: Any, start: str, finish: str, *args, **kwargs) -> None:
        if finish == "processing" and self.first is None:
            self.first = time.perf_counter()


def workloads(quick: bool, n_tiny: int | None) -> dict[str, Any]:
    import dask.array as da

    side, chunk = (4_000, 500) if quick else (20_000, 1_000)
    if n_tiny is None:
        n_tiny = 20_000 if quick else 100_000

    def transpose_mean() -> Any:
        x = da.random.random((side, side), chunks=(chunk, chunk))
        return (x + x.T).mean()

    def tiny_tasks() -> Any:
        # n_tiny one-element chunks summed in a tree of fan-in 8.
        return (da.ones((n_tiny,), chunks=1) + 1).sum(split_every=8)

    return {
        f"(x + x.T).mean() {side}^2 / {chunk}^2": transpose_mean,
        f"{n_tiny:,} tiny tasks, tree sum": tiny_tasks,
    }


def run(system: str, quick: bool, repeat: int, n_tiny: int | None) -> dict[str, float]:
    if system == "localsched":
        from localsched import Client

        client: Any = Client(n_workers=2, threads_per_worker=1)
        recorder: Any = FirstDispatch()
        client.cluster.scheduler.add_plugin(recorder)

        def first_dispatch() -> float | None:
            return recorder.first
    else:
        from distributed import Client, LocalCluster
        from distributed.diagnostics.plugin import SchedulerPlugin

        class Recorder(FirstDispatch, SchedulerPlugin):
            pass

        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
        recorder = Recorder()
        client.register_plugin(recorder)
        scheduler_plugins = cluster.scheduler.plugins

        def first_dispatch() -> float | None:
            return scheduler_plugins[recorder.name].first

    results: dict[str, float] = {}
    try:
        for name, build in workloads(quick, n_tiny).items():
            best = best_first = float("inf")
            for _ in range(repeat):
                collection = build()
                recorder_reset(system, client, recorder)
                start = time.perf_counter()
                collection.compute()
                best = min(best, time.perf_counter() - start)
                first = first_dispatch()
                if first is not None:
                    best_first = min(best_first, first - start)
            results[name] = best
            results[f"{name}: first dispatch"] = best_first
            results[f"{name}: dask's graph + order"] = dask_preparation(build())
    finally:
        client.close()
        if system != "localsched":
            cluster.close()
    return results


def dask_preparation(collection: Any) -> float:
    """Seconds dask itself needs before any scheduler can send a task:
    optimizing and materializing the graph, then ``dask.order`` on it."""
    import dask.order
    from dask._task_spec import convert_legacy_graph
    from dask.base import collections_to_expr

    start = time.perf_counter()
    expr = collections_to_expr([collection], optimize_graph=True)
    nodes = convert_legacy_graph(dict(expr.__dask_graph__()))
    dask.order.order(nodes)
    return time.perf_counter() - start


def recorder_reset(system: str, client: Any, recorder: Any) -> None:
    if system == "localsched":
        recorder.first = None
    else:

        def reset(dask_scheduler: Any) -> None:
            dask_scheduler.plugins[recorder.name].first = None

        client.run_on_scheduler(reset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--system", choices=["localsched", "distributed"])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tiny", type=int, help="tasks of the tiny-task graph")
    args = parser.parse_args()
    if args.system:
        results = run(args.system, args.quick, args.repeat, args.tiny)
        print(json.dumps(results) if args.json else results)
        return
    extra = ["--repeat", str(args.repeat)] + (["--quick"] if args.quick else [])
    extra += ["--tiny", str(args.tiny)] if args.tiny else []
    by_system = run_each_system(__file__, *extra)
    ours = by_system["localsched"]
    theirs = by_system.get("distributed", {})
    print(f"{'workload':<48} {'localsched':>11} {'distributed':>12} {'ratio':>7}")
    for name, seconds in ours.items():
        other = theirs.get(name)
        ratio = f"{other / seconds:7.2f}" if other else "      -"
        other_text = f"{other:11.3f}s" if other else "           -"
        print(f"{name:<48} {seconds:10.3f}s {other_text} {ratio}")


if __name__ == "__main__":
    main()
