"""Soak: minutes of mixed work on one cluster, so that growth becomes visible.

Not a timed test: it prints what the processes hold every ``--interval``
seconds, and at the end the growth from the first sample to the last. Two
long-lived clients loop over mixed work (tiny tasks, 10 MB numpy results and a
reduction over them, failing tasks, sleeping tasks, a cancel); a third thread
opens a client, submits work and closes it while that work still runs.

    python benchmarks/bench_soak.py                 # 5 minutes
    python benchmarks/bench_soak.py --minutes 2 --interval 10

Columns: ``rss`` of this process and the sum over the workers (MiB), open
``fds`` and ``threads`` of this process (and the workers' fds), the store's
segments (count and allocated MiB, found from the store's own directories and
prefix, so wherever the store keeps them), of which ``live`` values, segments
``lease``d to workers for their next results and the ``pool`` of released
segments kept for reuse (MiB, from the store's own counters: the three should
add up to ``shm``, and a difference is an accounting error), values the
scheduler holds (``data``), tasks it knows (``tasks``), and the work done since
the start.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
from collections import Counter
from typing import Any

import psutil

MiB = 1 << 20


# -- tasks (pickled by value: this is the main module) ---------------------------------


def inc(x: int) -> int:
    return x + 1


def make_array(nbytes: int, seed: int) -> Any:
    import numpy as np

    return np.full(nbytes // 8, seed, dtype=np.float64)


def total(*arrays: Any) -> float:
    return float(sum(a[0] for a in arrays))


def fail(x: int) -> None:
    raise ValueError(f"failing on purpose: {x}")


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


# -- work loops ------------------------------------------------------------------------


class Work:
    """Counts of what the loops did, and the first unexpected error."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: Counter[str] = Counter()
        self.errors: list[str] = []

    def add(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.done[what] += n

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)


def mixed_round(client: Any, round_no: int, big: int, work: Work) -> None:
    """One round of every kind of work, checked."""
    from localsched import FutureCancelledError, wait

    tiny = client.map(inc, range(200), pure=False)
    if client.gather(tiny) != list(range(1, 201)):
        work.error("tiny tasks: wrong results")
    work.add("tiny", len(tiny))

    arrays = [client.submit(make_array, big, i, pure=False) for i in range(4)]
    reduced = client.submit(total, *arrays)
    if reduced.result() != 0 + 1 + 2 + 3:
        work.error("10 MB results: wrong reduction")
    if client.gather(arrays[0]).nbytes != big:
        work.error("10 MB results: wrong size")
    work.add("big", len(arrays))
    del arrays, reduced

    bad = client.map(fail, range(5), pure=False)
    wait(bad)
    if not all(f.status == "error" for f in bad):
        work.error("failing tasks did not err")
    work.add("failed", len(bad))
    del bad

    naps = client.map(nap, [0.05] * 6, pure=False)
    doomed = client.submit(nap, 5.0, pure=False)
    client.cancel([doomed])
    try:
        doomed.result()
        work.error("cancelled task returned")
    except FutureCancelledError:
        work.add("cancelled")
    if client.gather(naps) != [0.05] * 6:
        work.error("sleeping tasks: wrong results")
    work.add("slept", len(naps))


def client_loop(client: Any, big: int, stop: threading.Event, work: Work) -> None:
    round_no = 0
    while not stop.is_set():
        try:
            mixed_round(client, round_no, big, work)
        except Exception as exc:  # keep soaking; report at the end
            work.error(f"{type(exc).__name__}: {exc}")
        round_no += 1


def churn_loop(cluster: Any, big: int, stop: threading.Event, work: Work) -> None:
    """Open a client, leave work running and queued, close it."""
    from localsched import Client

    while not stop.wait(1.0):
        try:
            with Client(cluster, set_as_default=False) as client:
                client.map(nap, [0.2] * 8, pure=False)
                first = client.submit(make_array, big, 9, pure=False)
                first.result()
                client.submit(make_array, big, 10, pure=False)  # may still run
            work.add("clients")
        except Exception as exc:
            work.error(f"churn: {type(exc).__name__}: {exc}")


# -- measuring -------------------------------------------------------------------------


def store_segments(store: Any) -> tuple[int, int]:
    """Count and bytes of the store's files, wherever the store keeps them."""
    directories = list(getattr(store, "_directories", None) or [store.directory])
    spill = getattr(store, "spill_directory", "")
    if spill:
        directories.append(spill)
    count = size = 0
    for directory in dict.fromkeys(directories):
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
            for entry in entries:
                if not entry.name.startswith(store.prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    stat = entry.stat(follow_symlinks=False)
                    count += 1
                    size += stat.st_blocks * 512  # allocated, not apparent
    return count, size


def worker_pids(cluster: Any) -> list[int]:
    runtime = cluster.runtime
    return runtime.call(lambda: [h.pid for h in runtime.workers.values()]).result(10)


def sample(cluster: Any) -> dict[str, float]:
    me = psutil.Process()
    workers_rss = workers_fds = 0
    pids = worker_pids(cluster)
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            process = psutil.Process(pid)
            workers_rss += process.memory_info().rss
            workers_fds += process.num_fds()
    store = cluster.store
    segments, segment_bytes = store_segments(store)
    runtime = cluster.runtime
    data, tasks = runtime.call(
        lambda: (len(runtime.data), len(cluster.scheduler.tasks))
    ).result(10)
    return {
        "rss": me.memory_info().rss / MiB,
        "workers_rss": workers_rss / MiB,
        "workers": len(pids),
        "fds": me.num_fds(),
        "workers_fds": workers_fds,
        "threads": me.num_threads(),
        "segments": segments,
        "shm": segment_bytes / MiB,
        # The store's counters: live values, segments granted to workers for
        # their next results, and released ones kept for reuse.
        "live": (store.spillable_bytes - store.free_bytes) / MiB,
        "leased": (store.memory_bytes - store.spillable_bytes) / MiB,
        "pool": store.free_bytes / MiB,
        "data": data,
        "tasks": tasks,
    }


HEADER = (
    f"{'t(s)':>6} {'rss':>7} {'w.rss':>7} {'fds':>4} {'w.fds':>5} {'thr':>4}"
    f" {'segs':>5} {'shm':>7} {'live':>6} {'lease':>6} {'pool':>6} {'data':>5}"
    f" {'tasks':>6}  done"
)


def line(elapsed: float, s: dict[str, float], work: Work) -> str:
    with work.lock:
        done = " ".join(f"{k}={v}" for k, v in sorted(work.done.items()))
    return (
        f"{elapsed:6.0f} {s['rss']:7.1f} {s['workers_rss']:7.1f} {s['fds']:4.0f}"
        f" {s['workers_fds']:5.0f} {s['threads']:4.0f} {s['segments']:5.0f}"
        f" {s['shm']:7.1f} {s['live']:6.1f} {s['leased']:6.1f} {s['pool']:6.1f}"
        f" {s['data']:5.0f}"
        f" {s['tasks']:6.0f}  {done}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--big-mb", type=float, default=10.0)
    args = parser.parse_args()

    from localsched import Client, LocalCluster

    big = int(args.big_mb * 1e6) // 8 * 8
    print(
        f"soak: {args.minutes} min, {args.workers} workers x {args.threads} threads,"
        f" {big / 1e6:.0f} MB results; load average {os.getloadavg()[0]:.1f},"
        f" {os.cpu_count()} CPUs"
    )
    fds_before = psutil.Process().num_fds()
    stop = threading.Event()
    work = Work()
    cluster = LocalCluster(
        n_workers=args.workers, threads_per_worker=args.threads, memory_limit=0
    )
    clients = [Client(cluster, set_as_default=False) for _ in range(2)]
    threads = [
        threading.Thread(target=client_loop, args=(c, big, stop, work), name=f"c{i}")
        for i, c in enumerate(clients)
    ]
    threads.append(threading.Thread(target=churn_loop, args=(cluster, big, stop, work)))
    start = time.monotonic()
    end = start + 60 * args.minutes
    samples = []
    print(HEADER)
    try:
        for thread in threads:
            thread.start()
        while True:
            samples.append(sample(cluster))
            print(line(time.monotonic() - start, samples[-1], work), flush=True)
            left = end - time.monotonic()
            if left <= 0:
                break
            stop.wait(min(args.interval, left))
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        for client in clients:
            client.close()
        settled = sample(cluster)
        cluster.close()
    segments_after, _ = store_segments(cluster.store)
    print(f"idle after the work stopped:\n{line(end - start, settled, work)}")
    if len(samples) > 2:
        first, last = samples[1], samples[-1]  # the first one is before warm-up
        growth = ", ".join(
            f"{k} {first[k]:.1f} -> {last[k]:.1f}"
            for k in (
                "rss",
                "workers_rss",
                "fds",
                "threads",
                "segments",
                "shm",
                "leased",
                "pool",
            )
        )
        print(f"from the second sample to the last: {growth}")
    print(
        f"after close: {segments_after} segments, fds {psutil.Process().num_fds()}"
        f" (before the cluster: {fds_before})"
    )
    if work.errors:
        print(f"{len(work.errors)} unexpected errors; first: {work.errors[0]}")
    else:
        print("no unexpected errors")


if __name__ == "__main__":
    main()
