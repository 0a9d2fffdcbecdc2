"""What one live-view sample costs the scheduler thread, against tasks held.

The web dashboard and the notebook panel read the cluster through
``LiveData`` samples taken on the scheduler thread (``take_sample``): worker
rows, per-prefix counters, and the task-stream records and events new since
the last sample. The cost must not grow with the tasks the scheduler holds.
Prints the mean time of 100 samples (no new records) with 100, 10,000 and
50,000 results in memory on 2 workers.

    python benchmarks/bench_live_sample.py
"""

from __future__ import annotations

import time

from localsched import Client, wait
from localsched.diagnostics.live_data import LiveData, take_sample


def inc(x: int) -> int:
    return x + 1


def main() -> None:
    with Client(n_workers=2, threads_per_worker=1) as client:
        cluster = client.cluster
        data = LiveData(cluster)
        data.start()
        held: list = []
        for n in (100, 10_000, 50_000):
            held += client.map(inc, range(len(held), n))
            wait(held)
            data.refresh()  # take in the new task-stream records

            def timed() -> float:
                stream, recorder = data._stream, data._recorder
                start = time.perf_counter()
                for _ in range(100):
                    take_sample(
                        cluster.scheduler,
                        stream,
                        recorder,
                        stream.index,
                        recorder.index,
                        cluster.store,
                    )
                return (time.perf_counter() - start) / 100

            seconds = cluster.runtime.call(timed).result()
            print(f"{len(held):>6} tasks in memory: {seconds * 1e6:.1f} us per sample")


if __name__ == "__main__":
    main()
