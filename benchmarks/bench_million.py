"""A million no-op tasks through ``client.map``: submit, finish, memory kept.

One fresh process per size, ``LocalCluster(n_workers=2, threads_per_worker=1)``.
For each size it prints:

- submit: seconds until ``client.map`` returns (the caller is blocked), and
  the CPU seconds of the calling thread meanwhile (steadier under load);
- finish: seconds from the call until every future is done (``wait``);
- kept: the client process's RSS after the futures are released, the
  scheduler has forgotten every task and its thread has given freed memory
  back (its allocator trim), minus its RSS before the map, per task (psutil;
  the baseline is taken after a warm-up map of 1,000 tasks);
- peak: the largest RSS growth per task seen while the tasks ran;
- CPU per task from the call until every future is done: the scheduler
  thread's (``pthread_getcpuclockid``) and the worker processes' together
  (psutil), steadier than wall times on a shared machine.

The load average is printed beside the figures: the machine is shared, so
compare runs from one period only.

    python benchmarks/bench_million.py                  # 200k and 1M
    python benchmarks/bench_million.py --sizes 200000 --repeat 3
    python benchmarks/bench_million.py --profile 200000 # cProfile of the map call
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from typing import Any


def noop(x: Any) -> Any:
    return x


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def run_once(n: int, profile: bool = False) -> dict[str, float]:
    from localsched import Client, LocalCluster, wait

    with (
        LocalCluster(n_workers=2, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        # Warm up: the function cache, the workers' imports, the allocator.
        wait(client.map(noop, range(1_000)))
        _until_forgotten(cluster)
        gc.collect()
        baseline = _rss()
        scheduler_clock = _thread_clock("localsched-scheduler")
        scheduler_cpu = time.clock_gettime(scheduler_clock)
        workers_cpu = _children_cpu()
        profiler = cProfile.Profile() if profile else None
        start = time.perf_counter()
        cpu_start = time.thread_time()
        if profiler is not None:
            profiler.enable()
        futures = client.map(noop, range(n))
        if profiler is not None:
            profiler.disable()
        submit_cpu = time.thread_time() - cpu_start
        submitted = time.perf_counter() - start
        peak = _rss()
        wait(futures)
        finished = time.perf_counter() - start
        scheduler_cpu = time.clock_gettime(scheduler_clock) - scheduler_cpu
        workers_cpu = _children_cpu() - workers_cpu
        peak = max(peak, _rss())
        trims = cluster.runtime.allocator.trims
        del futures
        _until_forgotten(cluster)
        # The scheduler thread gives freed memory back on its next tick after
        # the release (runtime/allocator.py); read the RSS once it has.
        _until_trimmed(cluster, trims)
        gc.collect()
        kept = _rss() - baseline
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return {
        "tasks": n,
        "submit (s)": submitted,
        "submit CPU (s)": submit_cpu,
        "finish (s)": finished,
        "kept (bytes/task)": kept / n,
        "peak (bytes/task)": (peak - baseline) / n,
        "scheduler thread CPU (us/task)": scheduler_cpu / n * 1e6,
        "workers CPU (us/task)": workers_cpu / n * 1e6,
    }


def _thread_clock(name: str) -> int:
    """The CPU-time clock of this process's thread called ``name``."""
    import threading

    for thread in threading.enumerate():
        if thread.name == name and thread.ident is not None:
            return time.pthread_getcpuclockid(thread.ident)
    raise LookupError(f"no thread {name!r}")


def _children_cpu() -> float:
    """User and system CPU seconds of this process's live child processes."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _until_forgotten(cluster: Any, timeout: float = 120.0) -> None:
    """Wait until the scheduler holds no task (the release has gone through)."""
    deadline = time.monotonic() + timeout
    while cluster.scheduler.tasks:
        if time.monotonic() > deadline:
            raise TimeoutError("the scheduler still holds tasks")
        time.sleep(0.05)


def _until_trimmed(cluster: Any, trims: int, timeout: float = 10.0) -> None:
    """Wait until the scheduler thread trimmed the allocator after ``trims``."""
    deadline = time.monotonic() + timeout
    while cluster.runtime.allocator.trims <= trims:
        if time.monotonic() > deadline:
            raise TimeoutError("the scheduler thread did not trim its allocator")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=1, help="runs; medians kept")
    parser.add_argument("--profile", type=int, metavar="N", help="cProfile one map")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_once(args.one)))
        return
    if args.profile:
        run_once(args.profile, profile=True)
        return
    for n in args.sizes:
        runs = []
        for _ in range(args.repeat):
            load = os.getloadavg()[0]
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(n)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            runs[-1]["load"] = load
        row = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
        print(
            f"map of {n:>9,}: submit {row['submit (s)']:6.2f} s"
            f" (CPU {row['submit CPU (s)']:5.2f})"
            f"  finish {row['finish (s)']:6.2f} s"
            f"  kept {row['kept (bytes/task)']:6.0f} B/task"
            f"  peak {row['peak (bytes/task)']:6.0f} B/task"
            f"  CPU/task: scheduler thread"
            f" {row['scheduler thread CPU (us/task)']:5.1f} us,"
            f" workers {row['workers CPU (us/task)']:5.1f} us"
            f"  (load {row['load']:.1f}, median of {len(runs)})"
        )


if __name__ == "__main__":
    main()
