"""The data plane side by side: localsched, dask.distributed, Ray, ProcessPoolExecutor.

Each system runs in its own fresh Python process with 2 workers x 1 thread (Ray:
``num_cpus=2``; the pool: 2 processes), one after the other, and each workload
is repeated; the median is printed, with ratios to localsched (above 1:
localsched is faster) and the load average before and after each system.

- ``scatter 200 MB + task``: the client puts a 200 MB array into the cluster
  (``scatter`` / ``ray.put`` / the pool's pipe) and one task reads its size.
- ``hand-off producer`` / ``consumer``: a task on one worker makes a 200 MB
  array (``np.ones``); the time until it is stored, then a task on the other
  worker takes it and returns its size (O(1): it touches no page).
- ``hand-off consumer, reads all``: the same, but the consumer reads one byte
  per 4 KiB page (the cost of mapping the pages in).
- ``fan-out 64x64``: 64 tasks make 1 MB each, then 64 tasks each take all 64.

Run::

    python benchmarks/bench_data.py                    # every installed system
    python benchmarks/bench_data.py --repeat 7 --mb 200
    python benchmarks/bench_data.py --system localsched --json   # one system
    python benchmarks/bench_data.py --before /tmp/old   # adds localsched from there
    python benchmarks/bench_data.py --systems localsched,ray

``--before DIR`` runs localsched a second time with ``PYTHONPATH=DIR`` (a checkout
of an earlier commit), in the same run: before/after figures under one load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

SYSTEMS = ("localsched", "distributed", "ray", "processpool")
PAGE = 4096


def make_array(nbytes: int) -> Any:
    import numpy as np

    return np.ones(nbytes // 8)


def size_of(x: Any) -> int:
    return int(x.nbytes)


def read_pages(x: Any) -> int:
    """Read one byte per page; the first byte of each 1.0 is 0: the page count."""
    return int((x.reshape(-1).view("uint8")[::PAGE] == 0).sum())


def sizes_of(*arrays: Any) -> int:
    return sum(int(a.nbytes) for a in arrays)


class _System:
    """The few calls a workload needs, for one system."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "localsched":
            from localsched import Client, LocalCluster, wait

            # No background imports: a worker idle 0.3 s starts importing the
            # heavy modules this process has, and a task arriving meanwhile
            # waits for that import (up to ~1 s): a start-up cost, measured by
            # bench_startup.py, which landed on the first timed hand-off here.
            self.cluster = LocalCluster(
                n_workers=2, threads_per_worker=1, warm_imports=False
            )
            self.client = Client(self.cluster)
            self.workers = list(self.cluster.scheduler.workers)
            self.wait_for = wait
        elif name == "distributed":
            from distributed import Client, LocalCluster, wait

            self.cluster = LocalCluster(
                n_workers=2, threads_per_worker=1, dashboard_address=None
            )
            self.client = Client(self.cluster)
            self.workers = list(self.client.scheduler_info()["workers"])
            self.wait_for = wait
        elif name == "ray":
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            self.ray = ray
            self.remote = {f: ray.remote(f) for f in (make_array, size_of)}
            self.remote.update({f: ray.remote(f) for f in (read_pages, sizes_of)})
        else:
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(2)

    def scatter(self, value: Any) -> Any:
        if self.name in ("localsched", "distributed"):
            return self.client.scatter(value)
        if self.name == "ray":
            return self.ray.put(value)
        return value  # the pool pickles it into the pipe with the task

    def submit(self, func: Callable[..., Any], *args: Any, worker: int = 0) -> Any:
        if self.name in ("localsched", "distributed"):
            where = [self.workers[worker % len(self.workers)]]
            return self.client.submit(func, *args, workers=where, pure=False)
        if self.name == "ray":
            return self.remote[func].remote(*args)
        # The pool has no store: a result comes back to the caller and goes
        # out again, pickled through the pipes both ways.
        values = [a.result() if hasattr(a, "add_done_callback") else a for a in args]
        return self.pool.submit(func, *values)

    def wait(self, futures: list[Any]) -> None:
        if self.name in ("localsched", "distributed"):
            self.wait_for(futures)
        elif self.name == "ray":
            self.ray.wait(futures, num_returns=len(futures), fetch_local=False)
        else:
            for future in futures:
                future.exception()

    def result(self, future: Any) -> Any:
        if self.name == "ray":
            return self.ray.get(future)
        return future.result()

    def close(self) -> None:
        if self.name in ("localsched", "distributed"):
            self.client.close()
            self.cluster.close()
        elif self.name == "ray":
            self.ray.shutdown()
        else:
            self.pool.shutdown()


def run(name: str, mb: int, repeat: int) -> dict[str, float]:
    import numpy as np

    nbytes = mb * 1_000_000
    load_before = os.getloadavg()[0]
    system = _System(name)
    # Imports and first allocations in the workers stay out of the clock.
    for worker in range(2):
        system.result(system.submit(make_array, 8, worker=worker))
    array = np.ones(nbytes // 8)
    samples: dict[str, list[float]] = {}

    def timed(label: str, func: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = func()
        samples.setdefault(label, []).append(time.perf_counter() - start)
        return out

    def hand_off(consumer: Callable[[Any], int], label: str) -> None:
        produced = system.submit(make_array, nbytes, worker=0)
        timed(f"{mb} MB hand-off: producer (s)", lambda: system.wait([produced]))
        out = timed(
            f"{mb} MB hand-off: {label} (s)",
            lambda: system.result(system.submit(consumer, produced, worker=1)),
        )
        assert out in (nbytes, -(-nbytes // PAGE))

    for _ in range(repeat):

        def scatter_and_task() -> int:
            ref = system.scatter(array)
            return int(system.result(system.submit(size_of, ref, worker=1)))

        assert timed(f"scatter {mb} MB + task (s)", scatter_and_task) == array.nbytes
        for consumer, label in ((size_of, "consumer"), (read_pages, "reads all")):
            hand_off(consumer, label)
        samples[f"{mb} MB hand-off: both ends (s)"] = [
            p + c
            for p, c in zip(
                samples[f"{mb} MB hand-off: producer (s)"][::2],
                samples[f"{mb} MB hand-off: consumer (s)"],
                strict=True,
            )
        ]

        def fan_out() -> None:
            parts = [system.submit(make_array, 1 << 20, worker=i) for i in range(64)]
            sums = [system.submit(sizes_of, *parts, worker=i) for i in range(64)]
            assert all(system.result(s) == 64 * (1 << 20) for s in sums)

        fan_label = "fan-out 64x64, 1 MB each (s)"
        # The pool pickles 4 GB through its pipes for this: once is enough.
        if name != "processpool" or fan_label not in samples:
            timed(fan_label, fan_out)
    system.close()
    results = {label: statistics.median(values) for label, values in samples.items()}
    results["load average before"] = load_before
    results["load average after"] = os.getloadavg()[0]
    return results


def installed(name: str) -> bool:
    module = {"localsched": "localsched", "distributed": "distributed", "ray": "ray"}
    if name not in module:
        return True
    try:
        __import__(module[name])
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=SYSTEMS)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--before", help="directory of an earlier localsched")
    args = parser.parse_args()
    if args.system:
        results = run(args.system, args.mb, args.repeat)
        print(json.dumps(results) if args.json else results)
        return
    table: dict[str, dict[str, float]] = {}
    runs = [(name, name, None) for name in args.systems.split(",")]
    if args.before:
        runs.insert(1, ("before", "localsched", args.before))
    for label, name, path in runs:
        if not installed(name):
            print(f"{name} is not installed: left out")
            continue
        command = [sys.executable, __file__, "--system", name, "--json"]
        command += ["--mb", str(args.mb), "--repeat", str(args.repeat)]
        env = dict(os.environ, PYTHONPATH=path) if path else None
        out = subprocess.run(
            command, capture_output=True, text=True, check=True, env=env
        )
        table[label] = json.loads(out.stdout.strip().splitlines()[-1])
    systems = list(table)
    print(f"medians of {args.repeat}; ratios: that system's time / localsched's")
    print(f"{'workload':<36}" + "".join(f"{s:>12}" for s in systems))
    for label in table["localsched"]:
        row = f"{label:<36}" + "".join(f"{table[s][label]:>12.3f}" for s in systems)
        if not label.startswith("load"):
            base = table["localsched"][label]
            ratios = [f"{s[:5]} {table[s][label] / base:.1f}x" for s in systems[1:]]
            row += "   " + ", ".join(ratios)
        print(row)


if __name__ == "__main__":
    main()
