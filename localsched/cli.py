"""``python -m localsched`` / ``localsched``: ``demo``, ``info`` and ``top``.

``demo`` is the README's first command: it starts ``Client()``, runs a small
mixed workload under a progress bar and prints where the time went. ``info``
prints what the machine offers a cluster (cores, memory, ``/dev/shm``) and the
versions in use. ``top`` runs the demo workload under the live dashboard.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any


def inc(x: int) -> int:
    return x + 1


def square(x: int) -> int:
    return x * x


def pause(seconds: float) -> float:
    """A task that waits, like one reading a file or calling a service."""
    import threading

    threading.Event().wait(seconds)
    return seconds


def burn(n: int) -> int:
    """A CPU-bound task: ``n`` rounds of integer arithmetic."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def blob(megabytes: int) -> bytes:
    """A large result: travels through shared memory, not a pipe."""
    return bytes(megabytes * 2**20)


def submit_workload(client: Any, scale: int = 1) -> list[Any]:
    """The demo's mixed workload; returns the futures to wait for."""
    incs = client.map(inc, range(2000 * scale))
    squares = client.map(square, incs)
    total = client.submit(sum, squares)
    pauses = client.map(pause, [0.05] * (20 * scale), pure=False)
    burns = client.map(burn, [200_000 + i for i in range(16 * scale)])
    blobs = client.map(blob, [8] * (4 * scale), pure=False)
    sizes = client.map(len, blobs)
    return [total, *pauses, *burns, *sizes]


def _time_by_prefix(dask_scheduler: Any) -> list[tuple[str, int, float]]:
    """(prefix, tasks, compute seconds) from the scheduler's counters."""
    rows = []
    for name, prefix in dask_scheduler.task_prefixes.items():
        count = sum(prefix.states.values())
        rows.append((name, count, prefix.all_durations.get("compute", 0.0)))
    return rows


def demo(n_workers: int | None = None, scale: int = 1) -> None:
    """Start a client, run the workload with a progress bar, print a summary."""
    from rich.console import Console
    from rich.table import Table

    from localsched import Client, progress

    console = Console()
    started = time.perf_counter()
    with Client(n_workers=n_workers) as client:
        startup = time.perf_counter() - started
        console.print(client)
        began = time.perf_counter()
        futures = submit_workload(client, scale)
        progress(futures)
        client.gather(futures)
        wall = time.perf_counter() - began
        rows = client.run_on_scheduler(_time_by_prefix)
        nthreads = sum(client.nthreads().values())
    tasks = sum(count for _, count, _ in rows)
    compute = sum(seconds for _, _, seconds in rows)
    table = Table(title="Where the time went", title_justify="left")
    table.add_column("task prefix")
    table.add_column("tasks", justify="right")
    table.add_column("compute", justify="right")
    table.add_column("per task", justify="right")
    table.add_column("share", justify="right")
    for name, count, seconds in sorted(rows, key=lambda row: -row[2]):
        table.add_row(
            name,
            f"{count:,}",
            _duration(seconds),
            _duration(seconds / max(count, 1)),
            f"{seconds / compute:.0%}" if compute else "",
        )
    console.print(table)
    busy = compute / (wall * nthreads) if wall and nthreads else 0.0
    console.print(
        f"{tasks:,} tasks in {wall:.2f} s on {nthreads} threads "
        f"(cluster start {startup:.2f} s): tasks computed for {compute:.2f} s, "
        f"threads busy {busy:.0%} of the time; the rest is scheduling, "
        "moving data and waiting for the slowest tasks.",
        highlight=False,
    )


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.{0 if seconds >= 1e-5 else 1}f} µs"


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def info_rows() -> list[tuple[str, str]]:
    """What ``localsched info`` prints, as (label, value) rows."""
    import multiprocessing

    import psutil

    from localsched.deploy.local import available_cores, nprocesses_nthreads
    from localsched.units import format_bytes

    cores = available_cores()
    processes, threads = nprocesses_nthreads(cores)
    memory = psutil.virtual_memory()
    rows = [
        ("cores usable", f"{cores} (machine: {os.cpu_count()})"),
        ("default cluster", f"{processes} workers x {threads} threads"),
        (
            "memory",
            f"{format_bytes(memory.total)} total, "
            f"{format_bytes(memory.available)} available",
        ),
    ]
    try:
        shm = shutil.disk_usage("/dev/shm")
        rows.append(
            (
                "/dev/shm",
                f"{format_bytes(shm.total)} total, {format_bytes(shm.free)} free",
            )
        )
    except OSError:
        rows.append(("/dev/shm", "not available: results travel through files"))
    rows += [
        (
            "worker start",
            "fresh interpreters (subprocess: python -m localsched.worker); "
            f"multiprocessing default here: {multiprocessing.get_start_method()}",
        ),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
    ]
    for package in (
        "localsched",
        "cloudpickle",
        "psutil",
        "rich",
        "tblib",
        "numpy",
        "dask",
        "distributed",
    ):
        rows.append((package, _version(package)))
    return rows


def info() -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for label, value in info_rows():
        table.add_row(label, value)
    Console().print(table)


def top(n_workers: int | None = None, scale: int = 2, console: Any = None) -> None:
    """Run the demo workload under the live dashboard.

    The first frame is drawn before the cluster starts, and the dashboard is
    live before the workload is submitted (from a thread), so the screen is
    never blank while work is being set up.
    """
    import threading

    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from localsched import Client
    from localsched.diagnostics.terminal_dashboard import (
        DashboardView,
        end_frame,
        refresh_until,
    )

    console = console or Console()
    starting = Text("localsched top: starting the cluster...")
    with (
        contextlib.suppress(KeyboardInterrupt),  # Ctrl-C: close and quit
        Live(starting, console=console, auto_refresh=False) as live,
    ):
        live.refresh()
        with Client(n_workers=n_workers) as client:
            live.update(DashboardView(client.cluster), refresh=True)
            futures: list[Any] = []
            submitter = threading.Thread(
                target=lambda: futures.extend(submit_workload(client, scale)),
                name="localsched-top-submit",
            )
            submitter.start()

            def finished() -> bool:
                return not submitter.is_alive() and all(f.done() for f in futures)

            refresh_until(live, finished, interval=0.5)
            submitter.join()
            client.gather(futures)
    end_frame(console)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m localsched`` and the ``localsched`` script."""
    parser = argparse.ArgumentParser(
        prog="localsched", description="dask.distributed's scheduler on one machine"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="run a small workload with a progress bar"
    )
    demo_parser.add_argument("--workers", type=int, default=None)
    demo_parser.add_argument("--scale", type=int, default=1)
    commands.add_parser("info", help="cores, memory, /dev/shm, versions")
    top_parser = commands.add_parser(
        "top", help="run the demo workload under the live dashboard"
    )
    top_parser.add_argument("--workers", type=int, default=None)
    top_parser.add_argument("--scale", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.workers, args.scale)
    elif args.command == "info":
        info()
    else:
        top(args.workers, args.scale)
    return 0
