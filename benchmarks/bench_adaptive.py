"""Adaptive scale-up on a burst: localsched against dask.distributed.

Scenario: an adaptive cluster of one worker (``adapt(minimum=1, maximum=M)``,
one thread per worker) receives a burst of 1,000 short tasks (each sleeps
``--duration`` seconds: sleeping, so that more workers than cores still helps
and the figure measures scaling, not CPU contention on a small machine).
Measured, for each system in a fresh Python process:

- ``to_maximum``: seconds from the burst's submission until M workers joined;
- ``decision_to_first_task``: seconds from the adaptive "up" decision (its log
  entry) until the last of the new workers started its first task;
- ``burst_adaptive``: seconds until every result of the burst is back;
- ``burst_fixed``: the same burst on a fixed cluster of M workers (already
  started): the best adaptivity can do.

    python benchmarks/bench_adaptive.py                  # both systems
    python benchmarks/bench_adaptive.py --interval 200ms --maximum 4
    python benchmarks/bench_adaptive.py --system localsched --json
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from typing import Any

from systems import run_each_system

from localsched.units import parse_timedelta

N_TASKS = 1000


def short_task(i: int, duration: float) -> tuple[int, float]:
    """Sleep ``duration``; return (worker pid, start time)."""
    started = time.time()
    time.sleep(duration)
    return os.getpid(), started


def warm(i: int) -> int:
    return i


def _imports(system: str) -> tuple[Any, Any]:
    if system == "localsched":
        from localsched import Client, LocalCluster
    else:
        from distributed import Client, LocalCluster
    return Client, LocalCluster


def _cluster_kwargs(system: str, n_workers: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"n_workers": n_workers, "threads_per_worker": 1}
    if system == "distributed":
        kwargs["dashboard_address"] = None
    return kwargs


def burst_adaptive(
    system: str, maximum: int, interval: str, duration: float
) -> dict[str, float]:
    client_class, cluster_class = _imports(system)
    cluster = cluster_class(**_cluster_kwargs(system, 1))
    client = client_class(cluster)
    try:
        # A live cluster: workers warm. The burst's function is new to it, so
        # its duration is unknown (dask's default estimate, 0.5 s) until the
        # first of its tasks finish.
        client.gather(client.map(warm, range(4), pure=False))
        adaptive = cluster.adapt(minimum=1, maximum=maximum, interval=interval)
        # Let the adaptive timer run before the burst arrives.
        threading.Event().wait(1.5 * parse_timedelta(interval))
        workers_before = set(client.scheduler_info()["workers"])
        t0 = time.time()
        futures = client.map(short_task, range(N_TASKS), duration=duration, pure=False)
        reached = None
        while time.time() - t0 < 120:
            if len(client.scheduler_info()["workers"]) >= maximum:
                reached = time.time() - t0
                break
            threading.Event().wait(0.005)
        results = client.gather(futures)
        total = time.time() - t0
        ups = [t for t, decision in adaptive.log if decision["status"] == "up"]
        decision = min((t for t in ups if t >= t0 - 1e-3), default=float("nan"))
        first_start: dict[int, float] = {}
        for pid, started in results:
            first_start[pid] = min(started, first_start.get(pid, started))
        old_pids = _pids(client, workers_before)
        new_starts = [s for pid, s in first_start.items() if pid not in old_pids]
        return {
            "to_maximum": float("nan") if reached is None else reached,
            "decision_to_first_task": (
                max(new_starts) - decision if new_starts else float("nan")
            ),
            "new_workers_used": float(len(new_starts)),
            "burst_adaptive": total,
        }
    finally:
        client.close()
        cluster.close()


def _pids(client: Any, addresses: set[str]) -> set[int]:
    info = client.scheduler_info()["workers"]
    pids = set()
    for address in addresses:
        if address in info and info[address].get("pid"):
            pids.add(int(info[address]["pid"]))
    if len(pids) < len(addresses):
        # Not in scheduler_info: ask the workers themselves.
        pids |= set(client.run(os.getpid, workers=list(addresses)).values())
    return pids


def burst_fixed(system: str, maximum: int, duration: float) -> dict[str, float]:
    client_class, cluster_class = _imports(system)
    with (
        cluster_class(**_cluster_kwargs(system, maximum)) as cluster,
        client_class(cluster) as client,
    ):
        client.gather(client.map(warm, range(4 * maximum), pure=False))
        t0 = time.time()
        client.gather(
            client.map(short_task, range(N_TASKS), duration=duration, pure=False)
        )
        return {"burst_fixed": time.time() - t0}


def run(system: str, maximum: int, interval: str, duration: float) -> dict[str, float]:
    figures = burst_adaptive(system, maximum, interval, duration)
    figures.update(burst_fixed(system, maximum, duration))
    return figures


ROWS = (
    ("to_maximum", "burst arrives -> M workers joined (s)"),
    ("decision_to_first_task", "'up' decision -> last new worker runs a task (s)"),
    ("burst_adaptive", "burst of 1,000 tasks, adaptive from 1 worker (s)"),
    ("burst_fixed", "same burst, fixed cluster of M workers (s)"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=["localsched", "distributed"])
    parser.add_argument("--maximum", type=int, default=4)
    parser.add_argument("--interval", default="1s")
    parser.add_argument("--duration", type=float, default=0.05)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.system:
        figures = run(args.system, args.maximum, args.interval, args.duration)
        print(json.dumps(figures) if args.json else figures)
        return
    table = run_each_system(
        __file__,
        *("--maximum", str(args.maximum), "--interval", args.interval),
        *("--duration", str(args.duration)),
    )
    systems = list(table)
    print(
        f"M={args.maximum} workers, adapt interval {args.interval}, "
        f"{N_TASKS} tasks of {args.duration * 1000:.0f} ms"
    )
    header = f"{'':52}" + "".join(f"{s:>13}" for s in systems)
    print(header)
    for name, label in ROWS:
        print(f"{label:52}" + "".join(f"{table[s][name]:>13.3f}" for s in systems))


if __name__ == "__main__":
    main()
