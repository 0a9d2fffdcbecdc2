"""A performance report of a small pipeline: arrays made, loaded from shared
memory, reduced; one task that raises and one worker that dies on the way.

    python examples/performance_report.py [report.html]

Open the file in any browser (it needs no network). The picture in
docs/diagnostics.md is this report.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

from localsched import Client, LocalCluster, performance_report


def load(i: int) -> np.ndarray:
    time.sleep(0.02 + 0.01 * (i % 3))  # reading a file, say
    return np.full(500_000, i, dtype="float64")  # 4 MB: shared memory


def clean(chunk: np.ndarray) -> np.ndarray:
    time.sleep(0.01)
    return chunk * 2


def total(*chunks: np.ndarray) -> float:
    return float(sum(np.sum(chunk) for chunk in chunks))


def check(i: int) -> int:
    if i == 7:
        raise ValueError(f"record {i} is corrupt")
    return i


def crash() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # a segfault in a C library, say


def main(filename: str) -> None:
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, memory_limit="1GiB", allowed_failures=0
        ) as cluster,
        Client(cluster) as client,
    ):
        with performance_report(filename=filename):
            chunks = client.map(load, range(24))
            cleaned = client.map(clean, chunks)
            parts = [client.submit(total, *cleaned[i : i + 6]) for i in range(0, 24, 6)]
            result = client.submit(total, *parts).result()
            checks = client.map(check, range(10))
            errors = [f for f in checks if f.exception() is not None]
            client.submit(crash, pure=False).exception()  # the worker dies
            client.wait_for_workers(2, timeout=30)
            again = client.map(clean, chunks[:8], pure=False)  # on the new one too
            client.gather(again)
        print(f"total {result:.0f}, {len(errors)} corrupt record, report in {filename}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "report.html")
