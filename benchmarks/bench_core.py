"""Scheduler core alone, with simulated workers: CPU microseconds per task.

Measures the whole lifecycle of every task in the pure core (submit -> waiting ->
processing/queued -> memory -> released -> forgotten), with no processes, pipes
or pickling. Workers are simulated: every ComputeTask command is answered with a
TaskFinished event, in batches as the runtime would drain its pipes. The
garbage collector is on, and paused while the core takes in a graph of 50,000
tasks or more, as the scheduler thread pauses it (``runtime/collector.py``);
``--collector on`` never pauses it.

The figure to quote is CPU time (``time.process_time``): the machine is shared,
and wall-clock time also counts other processes' turns. Two CPU figures are
printed: the whole run, which also counts the simulated workers building their
events (about 1 us per task), and the part spent inside ``SchedulerState.handle``
("in core"). Wall time is printed beside them; each size runs ``--repeat`` times
and the best run (by whole-run CPU) is kept.

    python benchmarks/bench_core.py            # 10k and 100k tasks
    python benchmarks/bench_core.py --full     # also 1M (flatness check)
    python benchmarks/bench_core.py --profile  # cProfile of the 100k map
    python benchmarks/bench_core.py --scaling  # 8, 64, 256 workers x 1..32 threads
    python benchmarks/bench_core.py --phases   # CPU in core by event type
    python benchmarks/bench_core.py --before ../before --rounds 2
        # this tree and another (a git worktree, built in place with
        # ``python setup.py build_ext --inplace``), alternated in one period

``--scaling`` runs both workloads at ``--size`` tasks (100k by default) for every
pair of ``--workers`` and ``--threads``, and prints the CPU per task in the core
and the scheduler's capacity (tasks per second of one core). A step that walks
every worker per task would make the cost grow with the workers.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from localsched import scheduler
from localsched.runtime.collector import PAUSE_FROM, paused_for_graphs
from localsched.scheduler import events as ev
from localsched.scheduler.commands import ComputeTask
from localsched.scheduler.state import SchedulerState

N_WORKERS = 2
THREADS = 1
BATCH = 1000
#: (workers, threads per worker) of the next ``_Core``s; ``--scaling`` sets it.
_shape = [N_WORKERS, THREADS]
#: "runtime": the collector paused while the core takes in graphs of 50,000
#: tasks or more, as the scheduler thread does (``runtime/collector.py``);
#: "on": never paused (``--collector on``).
_collector = ["runtime"]
#: The ``_Core`` of the latest run (``--phases`` reads its split).
_last: list[_Core] = []


class _Core:
    """The state under test; counts the CPU time spent inside ``handle``.

    ``phases`` splits it by the type of the first event handled (submission,
    results, release).
    """

    def __init__(self) -> None:
        self.state = _new_state()
        self.cpu = 0.0
        self.phases: dict[str, float] = {}
        _last[:] = [self]

    def handle(self, *events: ev.StateEvent) -> list[object]:
        graphs = [e for e in events if type(e) is ev.UpdateGraph]
        pause = (
            paused_for_graphs(graphs) if _collector[0] == "runtime" else nullcontext()
        )
        start = time.process_time()
        with pause:
            commands = self.state.handle(*events)
        spent = time.process_time() - start
        self.cpu += spent
        phase = type(events[0]).__name__
        self.phases[phase] = self.phases.get(phase, 0.0) + spent
        return commands  # type: ignore[return-value]


def _run(state: _Core, commands: list[object], release: list[object]) -> int:
    """Answer compute commands until none are left; return tasks finished."""
    finished = 0
    clock = 1.0
    pending = [c for c in commands if type(c) is ComputeTask]
    while pending:
        batch = pending[:BATCH]
        del pending[:BATCH]
        events = []
        for cmd in batch:
            clock += 1e-5
            events.append(
                ev.TaskFinished(
                    stimulus_id="finished",
                    key=cmd.key,
                    worker=cmd.worker,
                    run_id=cmd.run_id,
                    nbytes=28,
                    type="int",
                    startstops=(("compute", clock - 1e-5, clock),),
                )
            )
        finished += len(events)
        out = state.handle(*events)
        pending.extend(c for c in out if type(c) is ComputeTask)
    state.handle(*release)
    return finished


def _build() -> str:
    """Which core runs: compiled (mypyc) or pure Python, and why."""
    build = "compiled" if scheduler.COMPILED else "pure"
    return f"{build}: {scheduler.COMPILED_REASON}"


def _new_state() -> SchedulerState:
    workers, threads = _shape
    state = SchedulerState(validate=False)
    state.handle(
        *(
            ev.WorkerAdded(stimulus_id="add", address=f"w{i}", nthreads=threads)
            for i in range(workers)
        )
    )
    return state


Timing = tuple[float, float, float, int]  # CPU, CPU in core, wall (s); tasks


def bench_independent(n: int) -> Timing:
    state = _Core()
    keys = [f"inc-{i}" for i in range(n)]
    start = time.process_time()
    wall_start = time.perf_counter()
    cmds = state.handle(
        ev.UpdateGraph(
            stimulus_id="map",
            client="c",
            tasks=dict.fromkeys(keys, "spec"),
            keys=keys,
            time=1.0,
        )
    )
    release = [ev.ClientReleasesKeys(stimulus_id="release", client="c", keys=keys)]
    done = _run(state, cmds, release)
    elapsed = time.process_time() - start
    wall = time.perf_counter() - wall_start
    assert done == n and not state.state.tasks, (done, len(state.state.tasks))
    return elapsed, state.cpu, wall, n


def bench_map_reduce(n_leaves: int, fan_in: int = 8) -> Timing:
    state = _Core()
    tasks: dict[object, object] = {}
    deps: dict[object, list[object]] = {}
    level = [("inc", i) for i in range(n_leaves)]
    tasks.update(dict.fromkeys(level, "spec"))
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for j in range(0, len(level), fan_in):
            key = (f"sum-{depth}", j // fan_in)
            tasks[key] = "spec"
            deps[key] = level[j : j + fan_in]
            nxt.append(key)
        level = nxt
    root = level[0]
    start = time.process_time()
    wall_start = time.perf_counter()
    cmds = state.handle(
        ev.UpdateGraph(
            stimulus_id="graph",
            client="c",
            tasks=tasks,
            dependencies=deps,
            keys=[root],
            time=1.0,
        )
    )
    release = [ev.ClientReleasesKeys(stimulus_id="release", client="c", keys=[root])]
    done = _run(state, cmds, release)
    elapsed = time.process_time() - start
    wall = time.perf_counter() - wall_start
    left = len(state.state.tasks)
    assert done == len(tasks) and not left, (done, len(tasks), left)
    return elapsed, state.cpu, wall, len(tasks)


def _report(
    name: str, func: Callable[[int], Timing], n: int, repeat: int, phases: bool
) -> None:
    func(min(n, 2000))  # warm up
    # The tuple is built left to right: the run first, then its core's split.
    runs = [(func(n), _last[0].phases) for _ in range(repeat)]
    (cpu, core, wall, ntasks), split = min(runs, key=lambda run: run[0])
    print(
        f"{name:<22} {ntasks:>9,} tasks  CPU {cpu / ntasks * 1e6:5.1f} us/task"
        f"  (in core {core / ntasks * 1e6:5.1f}, wall {wall / ntasks * 1e6:5.1f})"
    )
    if phases:
        # By the first event of each ``handle`` call: the submission
        # (UpdateGraph), the results (TaskFinished) and the release.
        print(
            " " * 24
            + ", ".join(
                f"{phase} {spent / ntasks * 1e6:.1f}" for phase, spent in split.items()
            )
        )


def scaling(workers: list[int], threads: list[int], size: int, repeat: int) -> None:
    """CPU per task in the core against the number of simulated workers."""
    print(
        f"scheduler core ({_build()}), {size:,} tasks, CPU in core per task"
        f" (best of {repeat})"
    )
    print(f"{'workers x threads':<18} {'map us':>7} {'tasks/s':>8} {'tree us':>8}")
    for n_workers in workers:
        for n_threads in threads:
            _shape[:] = [n_workers, n_threads]
            row = []
            for func, n in (
                (bench_independent, size),
                (bench_map_reduce, size * 7 // 8),
            ):
                func(min(n, 2000))  # warm up
                _, core, _, ntasks = min(func(n) for _ in range(repeat))
                row.append(core / ntasks)
            print(
                f"{n_workers:>7} x {n_threads:<8} {row[0] * 1e6:7.1f}"
                f" {1 / row[0]:8,.0f} {row[1] * 1e6:8.1f}"
            )


def _alternate(before: Path, rounds: int, argv: list[str]) -> None:
    """Run this script with ``argv`` on this tree, then on ``before``, ``rounds``
    times, each in a fresh process with its tree first on ``sys.path``; the
    machine's load is printed before each run."""
    here = Path(__file__).resolve().parent.parent
    for _ in range(rounds):
        for name, tree in (("this tree", here), ("before", before.resolve())):
            load = os.getloadavg()[0]
            print(f"== {name} ({tree}), load {load:.2f}", flush=True)
            env = dict(os.environ, PYTHONPATH=str(tree))
            script = tree / "benchmarks" / "bench_core.py"
            subprocess.run([sys.executable, str(script), *argv], env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also run 1M tasks")
    parser.add_argument("--profile", action="store_true", help="cProfile the 100k map")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per size; the best is kept"
    )
    parser.add_argument("--scaling", action="store_true", help="cost per worker count")
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--size", type=int, default=100_000, help="tasks (--scaling)")
    parser.add_argument(
        "--phases", action="store_true", help="split the core's CPU by event type"
    )
    parser.add_argument(
        "--collector",
        choices=["runtime", "on"],
        default="runtime",
        help="pause the cyclic GC for big graphs as the scheduler thread does"
        " (runtime, the default) or never (on)",
    )
    parser.add_argument(
        "--before",
        metavar="TREE",
        help="also run the same measures on another checkout, alternating",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternations with --before"
    )
    args = parser.parse_args()
    if args.before:
        argv = ["--repeat", str(args.repeat), "--collector", args.collector]
        argv += ["--full"] * args.full + ["--phases"] * args.phases
        _alternate(Path(args.before), args.rounds, argv)
        return
    _collector[0] = args.collector
    if args.scaling:
        scaling(args.workers, args.threads, args.size, args.repeat)
        return
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        bench_independent(100_000)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    sizes = [10_000, 100_000] + ([1_000_000] if args.full else [])
    print(
        f"scheduler core ({_build()}), {N_WORKERS} simulated workers"
        f" x {THREADS} thread(s); collector: "
        + (
            f"paused for graphs of {PAUSE_FROM:,}+ tasks, as the scheduler thread"
            if _collector[0] == "runtime"
            else "always on"
        )
    )
    for n in sizes:
        _report("independent (map)", bench_independent, n, args.repeat, args.phases)
    for n in sizes:
        _report(
            "map + tree reduction",
            bench_map_reduce,
            int(n * 7 / 8),
            args.repeat,
            args.phases,
        )


if __name__ == "__main__":
    main()
