"""dask.dataframe shuffles on localsched against dask.distributed, same workers.

Workloads (issue 17): ``set_index``, ``shuffle`` and ``groupby().apply`` of a
1,000,000-row frame (20 partitions), and its ``merge`` with a 100,000-row frame
(10 partitions) on a column with unknown divisions (a hash join: both sides
shuffled). Each collection is persisted and waited for (results stay in the
workers), best of ``--repeat``; every repeat builds a new graph, so nothing is
reused. Systems, each in a fresh process with 2 workers x 1 thread and dask's
default shuffle for it:

- ``localsched``: ``"tasks"``, which a current localsched client selects;
- ``localsched-disk``: the same with ``dataframe.shuffle.method="disk"``, the
  partd shuffle dask picked with a localsched client before (the "before");
- ``distributed``: dask.distributed's peer-to-peer ``"p2p"`` shuffle;
- ``threads`` and ``processes``: plain dask (``"disk"``), for reference.

Printed: seconds per workload and system, distributed / localsched (above 1:
localsched is faster), and the 1-minute load average before and after.
``--before DIR`` adds a ``before`` column: localsched from another checkout
(``git worktree add DIR <commit>``), run from ``DIR`` so that its workers import
it. ``--rounds N`` runs every system ``N`` times, interleaved, and keeps each
one's best: on a loaded machine, one round is a lottery.

    python benchmarks/bench_dataframe.py               # all systems
    python benchmarks/bench_dataframe.py --rows 200000 # smaller
    python benchmarks/bench_dataframe.py --system localsched --json
    python benchmarks/bench_dataframe.py --systems localsched,distributed \
        --before /tmp/before --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

SYSTEMS = ["localsched", "localsched-disk", "distributed", "threads", "processes"]


def frames(rows: int) -> tuple[Any, Any]:
    """The two pandas frames, the same in every process (seeded)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    other = rows // 10
    left = pd.DataFrame(
        {
            "k": rng.integers(0, other, rows),
            "x": rng.random(rows),
            "g": rng.integers(0, 1000, rows),
        }
    )
    right = pd.DataFrame({"k": np.arange(other), "y": rng.random(other)})
    return left, right


def demean(group: Any) -> Any:
    """The groupby-apply function: a new column per group."""
    return group.assign(z=group.x - group.x.mean())


def workloads(left: Any, right: Any) -> dict[str, Any]:
    """Name -> function of (left, right) dask frames giving the collection."""
    meta = {"k": "i8", "x": "f8", "rep": "i8", "z": "f8"}
    return {
        "set_index": lambda a, b: a.set_index("k"),
        "shuffle": lambda a, b: a.shuffle("k"),
        "merge": lambda a, b: a.merge(b, on="k"),
        "groupby_apply": lambda a, b: a.groupby("g").apply(demean, meta=meta),
    }


def run(system: str, rows: int, repeat: int) -> dict[str, Any]:
    """``{"method": dask's default shuffle there, "seconds": {workload: best}}``."""
    import dask
    import dask.dataframe as dd

    left, right = frames(rows)
    a = dd.from_pandas(left, npartitions=20)
    b = dd.from_pandas(right, npartitions=10)
    client: Any = None
    cluster: Any = None
    if system.startswith("localsched"):
        from localsched import Client, futures_of, wait

        client = Client(n_workers=2, threads_per_worker=1)
    elif system == "distributed":
        from distributed import Client, LocalCluster, futures_of, wait

        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    settings: dict[str, Any] = {}
    if system == "localsched-disk":
        settings["dataframe.shuffle.method"] = "disk"
    elif system in ("threads", "processes"):
        settings = {"scheduler": system, "num_workers": 2}
    results: dict[str, float] = {}
    method = ""
    try:
        with dask.config.set(settings):
            from dask.utils import get_default_shuffle_method

            method = get_default_shuffle_method()
            if client is not None:
                a, b = client.persist([a, b])
                wait([a, b])
            small = (dd.from_pandas(left[:2000], 4), dd.from_pandas(right[:200], 2))
            for name, build in workloads(left, right).items():
                # Warm up: workers import pandas and dask.dataframe on first use.
                dask.compute(build(small[0].assign(rep=-1), small[1]))
                best = float("inf")
                for rep in range(repeat):
                    # A new column per repeat: a new graph, nothing reused.
                    collection = build(a.assign(rep=rep), b)
                    start = time.perf_counter()
                    if client is None:
                        (done,) = dask.persist(collection)
                    else:
                        done = client.persist(collection)
                        futures = futures_of(done)
                        wait(futures)
                        failed = [f for f in futures if f.status != "finished"]
                        if failed:
                            failed[0].result()  # raises the task's error
                    best = min(best, time.perf_counter() - start)
                    del done
                results[name] = best
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return {"method": method, "seconds": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--system", choices=SYSTEMS)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--before", help="a checkout of localsched to compare")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if args.system:
        results = run(args.system, args.rows, args.repeat)
        print(json.dumps(results) if args.json else results)
        return
    load_before = os.getloadavg()[0]
    table: dict[str, dict[str, float]] = {}
    methods: dict[str, str] = {}
    systems = args.systems.split(",")
    if args.before:
        systems.insert(0, "before")
    for _ in range(args.rounds):
        for system in systems:
            figures = _run_system(system, args)
            if figures is None:
                continue
            best = table.setdefault(system, {})
            for name, seconds in figures["seconds"].items():
                best[name] = min(best.get(name, seconds), seconds)
            methods[system] = figures["method"]
    load_after = os.getloadavg()[0]
    systems = list(table)
    print(
        f"{args.rows:,} rows, best of {args.repeat} x {args.rounds} round(s);"
        f" load average {load_before:.2f} -> {load_after:.2f}"
    )
    print("shuffle: " + ", ".join(f"{s} {m!r}" for s, m in methods.items()))
    before = table.get("before")
    header = "".join(f"{s:>17}" for s in systems) + "    ratio"
    print(f"{'workload':<16}{header}" + ("  before/now" if before else ""))
    ours = table.get("localsched", {})
    theirs = table.get("distributed", {})
    for name in workloads(None, None):
        row = "".join(f"{table[s].get(name, float('nan')):16.3f}s" for s in systems)
        ratio = theirs.get(name, 0.0) / ours[name] if name in ours else 0.0
        gain = f" {before[name] / ours[name]:11.2f}" if before and name in ours else ""
        print(f"{name:<16}{row} {ratio:7.2f}{gain}")


def _run_system(system: str, args: Any) -> dict[str, Any] | None:
    """One system in a fresh process: its figures, or None if it failed."""
    command = [sys.executable, os.path.abspath(__file__), "--json"]
    command += ["--rows", str(args.rows), "--repeat", str(args.repeat)]
    env, cwd = None, None
    if system == "before":
        # Workers are started with ``-m``: the working directory comes first.
        cwd = os.path.abspath(args.before)
        env = {**os.environ, "PYTHONPATH": cwd}
        command += ["--system", "localsched"]
    else:
        command += ["--system", system]
    out = subprocess.run(
        command, capture_output=True, text=True, check=False, cwd=cwd, env=env
    )
    if out.returncode != 0:
        print(f"{system}: failed\n{out.stderr[-2000:]}")
        return None
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


if __name__ == "__main__":
    main()
