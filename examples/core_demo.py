"""Drive localsched's scheduler core with simulated workers and a plugin.

The core is a pure state machine: events go in, commands come out. Here two
simulated workers answer every ``ComputeTask`` at once, a ``SchedulerPlugin``
counts transitions exactly as it would on dask.distributed, and the script prints
where each task went and how much scheduler CPU each task cost, with the plugin
and without it (the figure ``docs/benchmarks.md`` quotes).

    python examples/core_demo.py
"""

from __future__ import annotations

import time
from collections import Counter

from localsched import SchedulerPlugin
from localsched.scheduler import events as ev
from localsched.scheduler.commands import ComputeTask, KeyInMemory
from localsched.scheduler.scheduler import Scheduler


class TransitionCounter(SchedulerPlugin):
    """Counts transitions by (start, finish), like the seed's Counter example."""

    name = "transition-counter"

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def transition(self, key, start, finish, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.counts[start, finish] += 1


def run(n: int, plugin: SchedulerPlugin | None) -> tuple[float, Counter[str]]:
    """Compute ``n`` leaves and their sum; CPU seconds and tasks per worker."""
    scheduler = Scheduler(validate=False)
    if plugin is not None:
        scheduler.add_plugin(plugin)
    scheduler.start()
    scheduler.handle(
        *(ev.WorkerAdded(stimulus_id="start", address=f"w{i}") for i in range(2))
    )
    leaves = [("inc", i) for i in range(n)]
    tasks: dict[object, object] = dict.fromkeys(leaves, "inc")
    tasks["total"] = "sum"
    started = time.process_time()
    commands = scheduler.update_graph(
        "demo", tasks, keys=["total"], dependencies={"total": leaves}, time=1.0
    )
    placed: Counter[str] = Counter()
    answered = 0
    pending = [c for c in commands if isinstance(c, ComputeTask)]
    while pending:
        batch, pending = pending[:1000], pending[1000:]
        events = []
        for cmd in batch:
            placed[cmd.worker] += 1
            events.append(
                ev.TaskFinished(
                    stimulus_id="finished",
                    key=cmd.key,
                    worker=cmd.worker,
                    run_id=cmd.run_id,
                    nbytes=28,
                    startstops=(("compute", 1.0, 1.0001),),
                )
            )
        answered += len(events)
        out = scheduler.handle(*events)
        pending += [c for c in out if isinstance(c, ComputeTask)]
        if plugin is not None and any(isinstance(c, KeyInMemory) for c in out):
            print(f"'total' is in memory after {answered:,} task results")
    elapsed = time.process_time() - started
    scheduler.close()
    return elapsed / answered, placed


def main() -> None:
    n = 20_000
    plugin = TransitionCounter()
    with_plugin, placed = run(n, plugin)
    print(f"tasks per worker: {dict(placed)}")
    print("transitions seen by the plugin:")
    for (start, finish), count in sorted(plugin.counts.items()):
        print(f"  {start:>10} -> {finish:<10} {count:>7,}")
    without_plugin, _ = run(n, None)
    print(
        f"scheduler CPU: {with_plugin * 1e6:.1f} us per task with the plugin, "
        f"{without_plugin * 1e6:.1f} us without it"
    )
    print(
        "(docs/benchmarks.md quotes the core without plugins, measured by "
        "benchmarks/bench_core.py on a quiet machine. A transition plugin "
        "sends every transition, five per task here, through the general "
        "path and a Python call of its own, which costs more than the work "
        "it observes; this run also builds the workers' answers and shares "
        "the machine with whatever else runs.)"
    )


if __name__ == "__main__":
    main()
