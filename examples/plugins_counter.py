"""The ``Counter`` scheduler plugin from dask's ``SchedulerPlugin`` docs.

    python examples/plugins_counter.py

The plugin runs on the scheduler thread and counts tasks that finish
(``processing -> memory``). With dask.distributed, import ``Client`` and
``SchedulerPlugin`` from ``distributed`` instead.
"""

from __future__ import annotations

from localsched import Client, SchedulerPlugin


class Counter(SchedulerPlugin):
    name = "counter"

    def __init__(self):
        self.counter = 0

    def transition(self, key, start, finish, *args, **kwargs):
        if start == "processing" and finish == "memory":
            self.counter += 1

    def restart(self, scheduler):
        self.counter = 0


def inc(x: int) -> int:
    return x + 1


def count(dask_scheduler=None) -> int:
    return dask_scheduler.plugins["counter"].counter


def main() -> None:
    with Client(n_workers=2, threads_per_worker=1) as client:
        client.register_plugin(Counter())
        futures = client.map(inc, range(10))
        print("results:", client.gather(futures))
        print("tasks counted:", client.run_on_scheduler(count))


if __name__ == "__main__":
    main()
