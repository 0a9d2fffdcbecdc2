"""Start-up, scale-up and first compute: localsched, dask.distributed and
``ProcessPoolExecutor`` side by side, medians over interleaved fresh processes.

Every trial is a fresh Python process (so imports and interpreter start are
honest), 2 workers x 1 thread; the systems take turns, so a change in the
machine's load hits them alike. Printed: the median of each figure per system,
and the load average before and after.

Figures (seconds):

- ``import``: ``import localsched`` / ``import distributed`` alone, and
  ``import + Client`` (localsched's exports are lazy: ``localsched.Client``
  loads the client, cluster and scheduler modules);
- ``start to first result``: from the cluster constructor (a ``Client()``) to
  the result of ``submit(inc, 1)``, after the import;
- ``scale-up 2 -> 4``: ``cluster.scale(4)`` until 4 workers are running;
- ``first dataframe compute``: the first ``groupby().sum().compute()`` of a
  dask dataframe on a client made after ``import dask.dataframe`` (workers
  import pandas/dask for it, unless their template is a fork of this process:
  ``deploy/user_fork.py``), and ``first array compute`` likewise;
- ``data imports, worker added later``: after that compute and 3 s idle,
  ``scale(3)``; the new worker's import of pandas, dask.dataframe and
  dask.array (``client.run``).

Bytecode: an installed package has its ``.pyc`` files (pip compiles them), a
checkout writes them on first import unless ``PYTHONDONTWRITEBYTECODE`` is
set, and then every process compiles localsched's sources again (about 0.2 s
in the client, 0.1 s in a fresh worker) while dask's come compiled. So the
localsched trees measured are compiled first (``compileall``, into their
``__pycache__``); ``--source-only`` skips that.

    python benchmarks/bench_startup.py                     # 5 rounds
    python benchmarks/bench_startup.py --rounds 9
    python benchmarks/bench_startup.py --before /work/main # + localsched at PATH
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def inc(x: int) -> int:
    return x + 1


def _dataframe() -> Any:
    import dask.dataframe as dd
    import pandas as pd

    frame = pd.DataFrame({"x": range(200_000), "y": [i % 7 for i in range(200_000)]})
    return dd.from_pandas(frame, npartitions=8).groupby("y").x.sum()


def _array() -> Any:
    import dask.array as da

    return da.ones((2000, 2000), chunks=(500, 500)).T.mean(axis=0).sum()


def _import_data_stack() -> None:
    import dask.array
    import dask.dataframe  # noqa: F401


def _added_worker_imports(client: Any) -> float:
    """Seconds a worker added once the cluster had been idle for 3 s takes
    to import pandas, dask.dataframe and dask.array (localsched's template has
    imported them by then: its forks inherit them)."""
    time.sleep(3.0)
    before = set(client.scheduler_info()["workers"])
    client.cluster.scale(3)
    client.wait_for_workers(3)
    added = [w for w in client.scheduler_info()["workers"] if w not in before]
    t0 = time.perf_counter()
    client.run(_import_data_stack, workers=added)
    return time.perf_counter() - t0


def child(system: str, workload: str) -> dict[str, float]:
    """One trial in this fresh process."""
    figures: dict[str, float] = {}
    if workload in ("dataframe", "array"):
        import dask.array
        import dask.dataframe  # noqa: F401  (the user's imports come first)
    t0 = time.perf_counter()
    if system.startswith("localsched"):
        import localsched

        figures["import"] = time.perf_counter() - t0
        # Its exports are lazy: the client's modules load on first use.
        localsched.Client  # noqa: B018
        figures["import + Client"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        options: dict[str, Any] = {}
        if system == "localsched-spawn":
            options["worker_start_method"] = "spawn"
        # "localsched-before-run": the localsched on PYTHONPATH, default options.
        client: Any = localsched.Client(n_workers=2, threads_per_worker=1, **options)
    elif system == "distributed":
        import distributed

        figures["import"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        client = distributed.Client(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        figures["import"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        method = system.split("-")[1]
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(2, mp_context=context) as pool:
            pool.submit(inc, 1).result()
            figures["start to first result"] = time.perf_counter() - t1
        return figures
    try:
        if workload == "start":
            client.submit(inc, 1).result()
            figures["start to first result"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            client.cluster.scale(4)
            client.wait_for_workers(4)
            figures["scale-up 2 -> 4"] = time.perf_counter() - t2
        else:
            collection = _dataframe() if workload == "dataframe" else _array()
            t2 = time.perf_counter()
            collection.compute()
            figures[f"first {workload} compute"] = time.perf_counter() - t2
            figures[f"start + first {workload} compute"] = time.perf_counter() - t1
            if workload == "dataframe":
                figures["data imports, worker added later"] = _added_worker_imports(
                    client
                )
    finally:
        client.close()
    return figures


def _trial(system: str, workload: str, before: str | None) -> dict[str, float]:
    env = dict(os.environ)
    name = system
    if system == "localsched-before":
        env["PYTHONPATH"] = before or ""
        name = "localsched-before-run"
    command = [sys.executable, __file__, "--child", name, "--workload", workload]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{system} {workload} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", help="PYTHONPATH of a localsched to compare")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="start", help=argparse.SUPPRESS)
    parser.add_argument("--workloads", default="start,dataframe,array")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--source-only",
        action="store_true",
        help="do not compile localsched's sources first (see the docstring)",
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workload)))
        return
    if not args.source_only:
        trees = [Path(__file__).resolve().parent.parent, *filter(None, [args.before])]
        for tree in trees:
            compileall.compile_dir(Path(tree) / "localsched", quiet=1)
    systems = ["localsched", "localsched-spawn"]
    if args.before:
        systems.append("localsched-before")
    systems += ["distributed", "ppe-fork", "ppe-spawn"]
    load_before = os.getloadavg()
    samples: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
    for _ in range(args.rounds):
        for workload in args.workloads.split(","):
            for system in systems:
                if system.startswith("ppe") and workload != "start":
                    continue
                for name, value in _trial(system, workload, args.before).items():
                    samples[system].setdefault(name, []).append(value)
    load_after = os.getloadavg()
    table = {
        system: {name: statistics.median(v) for name, v in figures.items()}
        for system, figures in samples.items()
    }
    if args.json:
        print(json.dumps({"load": [load_before, load_after], "medians": table}))
        return
    print(
        f"load average before {load_before[0]:.2f} {load_before[1]:.2f}, "
        f"after {load_after[0]:.2f} {load_after[1]:.2f}; medians of {args.rounds}; "
        + ("sources only" if args.source_only else "bytecode compiled")
    )
    names = list(dict.fromkeys(n for figures in table.values() for n in figures))
    width = max(len(n) for n in names)
    print(" " * width + "".join(f"{s:>19}" for s in systems))
    for name in names:
        cells = "".join(
            f"{table[s][name]:>19.3f}" if name in table[s] else f"{'-':>19}"
            for s in systems
        )
        print(f"{name:<{width}}{cells}")


if __name__ == "__main__":
    main()
