"""What recording for ``performance_report`` costs the scheduler thread, per task.

Two measurements:

1. **The tap alone** (``--micro``): the exact code the scheduler thread runs
   for each task that ends, ``if runtime.recorder is not None:
   recorder.task_done(address, message)`` on a real ``TaskDone``, timed over
   many calls with the recording off (``recorder is None``) and on, in the
   thread's CPU time (``time.thread_time``: time other processes take from
   this one on a shared machine does not count).
2. **End to end**: the scheduler thread's CPU time (``time.thread_time`` run
   there) per task over a run of independent no-op tasks on 2 workers x 1
   thread, with the recording off and inside ``performance_report``
   (alternated, best of ``--repeat``). The difference is what recording costs;
   on a shared machine it is noisy, so the micro figure is the budget's check.

Budget: <= 2 us per task on the scheduler thread when on, nothing when off.

    python benchmarks/bench_recording.py            # both
    python benchmarks/bench_recording.py --micro    # the tap only (fast)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

from localsched.runtime.recording import Recorder
from localsched.transport.protocol import TaskDone


class _Runtime:
    """The two attributes the tap reads."""

    def __init__(self) -> None:
        self.recorder: Recorder | None = None


def _tap_loop(runtime: Any, message: TaskDone, n: int) -> float:
    address = "local://1/0"
    start = time.thread_time()
    for _ in range(n):
        # As in SchedulerRuntime._on_task_done:
        if runtime.recorder is not None:
            runtime.recorder.task_done(address, message)
    return time.thread_time() - start


def _empty_loop(runtime: Any, message: TaskDone, n: int) -> float:
    start = time.thread_time()
    for _ in range(n):
        pass
    return time.thread_time() - start


def micro(batch: int = 10_000, batches: int = 30) -> dict[str, float]:
    """Per call, in batches into one growing list (as a long block fills the
    recording): the median batch, so a busy machine's stalls count less."""
    message = TaskDone(
        key=("inc-0123456789abcdef", 17),
        run_id=3,
        payload=b"\x80\x05K\x01.",
        nbytes=5,
        type="int",
        start=time.time(),
        stop=time.time(),
        thread=140_000_000_000,
        load_start=time.time(),
    )
    runtime = _Runtime()
    recorder = Recorder.__new__(Recorder)  # the tap needs only its list
    recorder.tasks = []
    empty, off, on = [], [], []
    for _ in range(batches):
        empty.append(_empty_loop(runtime, message, batch))
        runtime.recorder = None
        off.append(_tap_loop(runtime, message, batch))
        runtime.recorder = recorder
        on.append(_tap_loop(runtime, message, batch))
    runtime.recorder = None
    base = statistics.median(empty)
    return {
        "off (ns/task)": (statistics.median(off) - base) / batch * 1e9,
        "on (ns/task)": (statistics.median(on) - base) / batch * 1e9,
        "entries recorded": len(recorder.tasks),
    }


def noop(x: int) -> int:
    return x


def end_to_end(n: int = 20_000, repeat: int = 5) -> dict[str, float]:
    from localsched import Client, LocalCluster, performance_report, wait

    results: dict[str, list[float]] = {"off": [], "on": []}
    with (
        LocalCluster(n_workers=2, threads_per_worker=1) as cluster,
        Client(cluster) as client,
        tempfile.TemporaryDirectory() as tmp,
    ):
        wait(client.map(noop, range(1000), pure=False))  # warm up

        def run() -> float:
            # time.thread_time run on the scheduler thread: its own CPU time.
            before = client.run_on_scheduler(time.thread_time)
            futures = client.map(noop, range(n), pure=False)
            wait(futures)
            cpu = client.run_on_scheduler(time.thread_time) - before
            del futures
            return cpu / n * 1e6

        for i in range(repeat):
            results["off"].append(run())
            with performance_report(filename=os.path.join(tmp, f"r{i}.html")):
                results["on"].append(run())
    off, on = min(results["off"]), min(results["on"])
    return {
        "scheduler thread off (us/task)": off,
        "scheduler thread on (us/task)": on,
        "difference (us/task)": on - off,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro", action="store_true", help="the tap only")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for name, value in micro().items():
        print(f"tap {name:<36} {value:10.1f}")
    if not args.micro:
        for name, value in end_to_end(args.tasks, args.repeat).items():
            print(f"{name:<40} {value:8.2f}")


if __name__ == "__main__":
    main()
