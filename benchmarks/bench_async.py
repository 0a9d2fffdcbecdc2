"""The asynchronous client against the synchronous one (and dask.distributed's).

Two figures per client, on a cluster of 2 workers x 1 thread:

- resume latency: a task returns ``time.time()`` as its last act; the caller
  awaits it (``await client.submit(time.time)``; synchronous:
  ``.result()``) and takes ``time.time()`` again the moment it resumes. The
  difference is what it costs a finished task to wake its awaiting coroutine:
  the result's trip to the client and the wake-up. One task at a time; the
  median and 90th percentile in microseconds.
- throughput: 10,000 no-op tasks (``operator.pos``) submitted with ``map`` and
  awaited, as ``await client.gather(futures)`` and as ``await
  asyncio.gather(*futures)`` (each future awaited on its own: the batched
  wake-ups at work); synchronous: ``client.gather(futures)``. Tasks per
  second, the best of the rounds.

Each (system, client) runs in a fresh process; the load average of the machine
is printed with the figures (2 shared cores: other work changes them).

    python benchmarks/bench_async.py                  # every system and client
    python benchmarks/bench_async.py --tasks 2000 --rounds 2
    python benchmarks/bench_async.py --system localsched --mode async --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from systems import available_systems

MODES = ("async", "sync")


def _latency_summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "resume_median_us": statistics.median(ordered) * 1e6,
        "resume_p90_us": ordered[int(0.9 * len(ordered))] * 1e6,
    }


async def _measure_async(client: Any, tasks: int, rounds: int, calls: int) -> dict:
    for _ in range(50):  # warm up: imports, first results
        await client.submit(time.time, pure=False)
    latencies = []
    for _ in range(calls):
        finished = await client.submit(time.time, pure=False)
        latencies.append(time.time() - finished)
    figures = _latency_summary(latencies)
    best_gather = best_each = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        futures = client.map(operator.pos, range(tasks), pure=False)
        await client.gather(futures)
        best_gather = max(best_gather, tasks / (time.perf_counter() - start))
        del futures
        start = time.perf_counter()
        futures = client.map(operator.pos, range(tasks), pure=False)
        await asyncio.gather(*futures)
        best_each = max(best_each, tasks / (time.perf_counter() - start))
        del futures
    figures["gather_tasks_per_s"] = best_gather
    figures["await_each_tasks_per_s"] = best_each
    return figures


def _measure_sync(client: Any, tasks: int, rounds: int, calls: int) -> dict:
    for _ in range(50):
        client.submit(time.time, pure=False).result()
    latencies = []
    for _ in range(calls):
        finished = client.submit(time.time, pure=False).result()
        latencies.append(time.time() - finished)
    figures = _latency_summary(latencies)
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        futures = client.map(operator.pos, range(tasks), pure=False)
        client.gather(futures)
        best = max(best, tasks / (time.perf_counter() - start))
        del futures
    figures["gather_tasks_per_s"] = best
    return figures


def measure(system: str, mode: str, tasks: int, rounds: int, calls: int) -> dict:
    if system == "localsched":
        from localsched import Client, LocalCluster

        options: dict[str, Any] = {}
    else:
        from distributed import Client, LocalCluster

        options = {"dashboard_address": None}
    if mode == "sync":
        with (
            LocalCluster(n_workers=2, threads_per_worker=1, **options) as cluster,
            Client(cluster) as client,
        ):
            return _measure_sync(client, tasks, rounds, calls)

    async def run() -> dict:
        async with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, asynchronous=True, **options
            ) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            return await _measure_async(client, tasks, rounds, calls)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=["localsched", "distributed"])
    parser.add_argument("--mode", choices=MODES)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300, help="latency samples")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = ["--tasks", str(args.tasks), "--rounds", str(args.rounds)]
    sizes += ["--calls", str(args.calls)]
    if args.system is not None:
        figures = measure(
            args.system, args.mode or "async", args.tasks, args.rounds, args.calls
        )
        print(json.dumps(figures) if args.json else figures)
        return
    load_before = os.getloadavg()
    table: dict[str, dict[str, float]] = {}
    for system in available_systems():
        for mode in MODES:
            command = [sys.executable, __file__, "--system", system, "--mode", mode]
            out = subprocess.run(
                [*command, "--json", *sizes], capture_output=True, text=True, check=True
            )
            table[f"{system} {mode}"] = json.loads(out.stdout.strip().splitlines()[-1])
    load_after = os.getloadavg()
    names = sorted({name for figures in table.values() for name in figures})
    print(f"{'':24}" + "".join(f"{column:>18}" for column in table))
    for name in names:
        cells = [table[column].get(name) for column in table]
        print(f"{name:24}" + "".join(_cell(value) for value in cells))
    _print_ratios(table)
    print(
        "load average (1, 5, 15 min): before "
        + ", ".join(f"{x:.2f}" for x in load_before)
        + "; after "
        + ", ".join(f"{x:.2f}" for x in load_after)
    )


def _cell(value: float | None) -> str:
    return f"{'-':>18}" if value is None else f"{value:18,.0f}"


def _print_ratios(table: dict[str, dict[str, float]]) -> None:
    """Async against sync, and localsched against dask, measured in this run."""
    pairs = [
        ("localsched async", "localsched sync"),
        ("distributed async", "distributed sync"),
        ("localsched async", "distributed async"),
    ]
    for left, right in pairs:
        if left not in table or right not in table:
            continue
        a, b = table[left], table[right]
        latency = b["resume_median_us"] / a["resume_median_us"]
        rate = a["gather_tasks_per_s"] / b["gather_tasks_per_s"]
        print(
            f"{left} vs {right}: resume latency {latency:.2f}x lower, "
            f"gather throughput {rate:.2f}x"
        )


if __name__ == "__main__":
    main()
