"""localsched against dask.distributed, same workloads, ratios in one run.

Each system runs in its own fresh Python process (so start-up is honest), with
2 workers x 1 thread. Printed: seconds (or MB) per workload for each system and
dask/localsched ratios (above 1: localsched is faster or smaller).

    python benchmarks/bench_runtime.py            # both systems (dask if installed)
    python benchmarks/bench_runtime.py --quick    # smaller sizes
    python benchmarks/bench_runtime.py --system localsched --json   # one system
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from systems import run_each_system


def noop(x: Any) -> Any:
    return x


def inc(x: int) -> int:
    return x + 1


def add(*args: int) -> int:
    return sum(args)


def make_array(nbytes: int) -> Any:
    import numpy as np

    return np.ones(nbytes // 8)


def consume(x: Any) -> int:
    return int(x.shape[0])


def _uss_mb(pids: list[int]) -> float:
    import psutil

    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += psutil.Process(pid).memory_full_info().uss
    return total / 1e6


def run(system: str, quick: bool) -> dict[str, float]:
    t0 = time.perf_counter()
    if system == "localsched":
        from localsched import Client, LocalCluster, wait

        cluster = LocalCluster(n_workers=2, threads_per_worker=1)
    else:
        from distributed import Client, LocalCluster, wait

        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address=None, processes=True
        )
    client = Client(cluster)
    client.submit(inc, 1).result()
    results: dict[str, float] = {
        "startup to first result (s)": time.perf_counter() - t0
    }

    def timed(name: str, func: Callable[[], Any]) -> None:
        start = time.perf_counter()
        func()
        results[name] = time.perf_counter() - start

    n_map = 2_000 if quick else 10_000
    timed(
        f"map {n_map} no-op tasks (s)",
        lambda: client.gather(client.map(noop, range(n_map))),
    )

    n_submit = 1_000 if quick else 5_000

    def submit_loop() -> None:
        futures = [client.submit(noop, i) for i in range(n_submit)]
        client.gather(futures)

    timed(f"{n_submit} submit calls (s)", submit_loop)

    n_chain = 500 if quick else 2_000

    def chain() -> None:
        x = client.submit(inc, 0)
        for _ in range(n_chain - 1):
            x = client.submit(inc, x)
        assert x.result() == n_chain

    timed(f"{n_chain}-task dependent chain (s)", chain)

    leaves = 1_024 if quick else 4_096

    def tree() -> None:
        level = client.map(inc, range(leaves))
        while len(level) > 1:
            level = [
                client.submit(add, a, b)
                for a, b in zip(level[::2], level[1::2], strict=True)
            ]
        assert level[0].result() == sum(range(1, leaves + 1))

    timed(f"tree reduction of {leaves} leaves (s)", tree)

    nbytes = 200_000_000
    if system == "localsched":
        workers = list(cluster.scheduler.workers)
    else:
        workers = list(client.scheduler_info()["workers"])
    # numpy is imported by each worker's first numpy task: keep that out of it.
    client.gather(
        [client.submit(make_array, 8, workers=[w], pure=False) for w in workers]
    )
    producers, consumers = [], []
    for _ in range(3):
        start = time.perf_counter()
        produced = client.submit(make_array, nbytes, workers=[workers[0]], pure=False)
        wait([produced])
        producers.append(time.perf_counter() - start)
        start = time.perf_counter()
        consumed = client.submit(consume, produced, workers=[workers[1]], pure=False)
        assert consumed.result() == nbytes // 8
        consumers.append(time.perf_counter() - start)
        del produced, consumed
    # Best of three for each end, the same rule for both systems.
    results["200 MB hand-off: producer (s)"] = min(producers)
    results["200 MB hand-off: consumer (s)"] = min(consumers)
    results["200 MB hand-off: both ends (s)"] = min(producers) + min(consumers)

    pids = [p.pid for p in _children()]
    results["idle memory of worker processes (MB)"] = _uss_mb(pids)
    client.close()
    cluster.close()
    return results


def _children() -> list[Any]:
    import psutil

    return list(psutil.Process().children(recursive=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=["localsched", "distributed"])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.system:
        results = run(args.system, args.quick)
        print(json.dumps(results) if args.json else results)
        return
    table = run_each_system(__file__, *(["--quick"] if args.quick else []))
    systems = list(table)
    names = list(table["localsched"])
    header = f"{'workload':<42}" + "".join(f"{s:>14}" for s in systems)
    if len(systems) == 2:
        header += f"{'ratio':>10}"
    print(header)
    for name in names:
        row = f"{name:<42}" + "".join(f"{table[s][name]:>14.3f}" for s in systems)
        if len(systems) == 2:
            row += f"{table['distributed'][name] / table['localsched'][name]:>9.1f}x"
        print(row)


if __name__ == "__main__":
    main()
