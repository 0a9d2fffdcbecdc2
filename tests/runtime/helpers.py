"""Task functions and polling helpers shared by the real-process tests.

``conftest.py`` registers this module with cloudpickle by value, so workers
receive these functions' code and never import the test package (or pytest).
Tasks block on files the test creates; nothing here sleeps for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

DEADLINE = 20.0  # seconds; bounds every wait in these tests

SHM_DIR = Path("/dev/shm")
#: Directories of stores in this process (named after its pid): other test runs
#: on the machine have their own, which must not fail ours.
SHM_PREFIX = f"localsched-{os.getpid()}-"


def shm_entries(prefix: str = SHM_PREFIX) -> set[str]:
    """What the clusters of a process hold: in /dev/shm and the temporary
    directory (disk fallback, spill), each directory named ``prefix...``, and
    ``directory/name`` for each file in it; this process's by default."""
    found = set()
    for parent in (SHM_DIR, Path(tempfile.gettempdir())):
        try:
            names = [n for n in os.listdir(parent) if n.startswith(prefix)]
        except FileNotFoundError:
            continue
        for name in names:
            found.add(name)
            with contextlib.suppress(NotADirectoryError, FileNotFoundError):
                found.update(f"{name}/{inner}" for inner in os.listdir(parent / name))
    return found


def segments_of(pid: int) -> list[str]:
    """Segment files (not directories) the clusters of process ``pid`` hold."""
    return sorted(e for e in shm_entries(f"localsched-{pid}-") if "/" in e)


def poll(predicate: Callable[[], object], timeout: float = DEADLINE) -> bool:
    """Call ``predicate`` until it is true or ``timeout`` passes; its last truth."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return bool(predicate())
        pause.wait(0.02)


async def poll_async(
    predicate: Callable[[], object], timeout: float = DEADLINE
) -> bool:
    """:func:`poll` in an event loop: the loop runs between looks (a timer
    wakes this coroutine, so callbacks and other tasks go on meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return bool(predicate())
        pause = loop.create_future()
        loop.call_later(0.01, pause.set_result, None)
        await pause


async def after_pending_callbacks(rounds: int = 1) -> None:
    """Resume once the callbacks already scheduled on this loop have run (and,
    for each further round, those they scheduled): FIFO order, no timing."""
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        done = loop.create_future()
        loop.call_soon(done.set_result, None)
        await done


@contextlib.asynccontextmanager
async def one_worker_cluster() -> AsyncIterator[tuple[Any, Any]]:
    """``async with``: a one-worker, one-thread asynchronous ``LocalCluster``
    and an asynchronous ``Client`` on it, both closed at the end."""
    from localsched import Client, LocalCluster

    async with (
        LocalCluster(n_workers=1, threads_per_worker=1, asynchronous=True) as cluster,
        Client(cluster, asynchronous=True) as client,
    ):
        yield cluster, client


def wait_for_file(path: str | os.PathLike[str], timeout: float = DEADLINE) -> None:
    """Block until ``path`` exists (in a task or in the test)."""
    if not poll(lambda: os.path.exists(path), timeout):
        raise TimeoutError(f"{path} did not appear within {timeout} s")


def block(release: str, started: str | None = None, value: object = None) -> object:
    """Task: announce itself in ``started`` (its pid), wait for ``release``."""
    if started is not None:
        Path(f"{started}.tmp").write_text(str(os.getpid()))
        os.replace(f"{started}.tmp", started)  # readers never see it half-written
    wait_for_file(release, timeout=60.0)
    return value


def count_call(path: str, value: object) -> object:
    """Task: append one line to ``path`` per execution; return ``value``."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return value


def lines(path: str | os.PathLike[str]) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


def fail_times(path: str, n: int, value: object) -> object:
    """Task: raise the first ``n`` times it runs (counted in ``path``)."""
    count_call(path, None)
    if len(lines(path)) <= n:
        raise RuntimeError(f"attempt {len(lines(path))} fails")
    return value


def pid(*args: object) -> int:
    return os.getpid()


def record(path: str, name: str) -> str:
    """Task: append ``name`` to ``path`` (the order tasks ran in); return it."""
    with open(path, "a") as f:
        f.write(f"{name}\n")
    return name


def interval(path: str, hold: float) -> tuple[float, float]:
    """Task: occupy a thread for ``hold`` seconds; record and return (start, end).

    ``time.monotonic`` is CLOCK_MONOTONIC on Linux: comparable across processes.
    """
    start = time.monotonic()
    threading.Event().wait(hold)
    end = time.monotonic()
    with open(path, "a") as f:
        f.write(f"{start} {end}\n")
    return start, end


def array_digest(array: object) -> tuple[str, str]:
    """Task: sha256 of an array's bytes, and its dtype."""
    import hashlib

    view = memoryview(array).cast("B")  # type: ignore[arg-type]
    return hashlib.sha256(view).hexdigest(), array.dtype.str  # type: ignore[attr-defined]


def raise_value_error(x: object) -> None:
    raise ValueError(f"bad {x}")


def kill_own_process() -> None:
    """Task: SIGKILL the worker running it (a crash, not an exception)."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def block_then_write(release: str, started: str, done: str, value: object) -> object:
    """Task: like ``block``, then write ``done`` once released (it kept running)."""
    block(release, started)
    Path(f"{done}.tmp").write_text(str(os.getpid()))
    os.replace(f"{done}.tmp", done)  # readers never see it half-written
    return value


# -- crashes (test_crash_matrix.py, test_worker_crashes.py, test_chaos.py) ------------


class CrashError(Exception):
    """What a ``raise`` crash raises, so tests can tell it from anything else."""


def crash_now(how: str, where: str) -> None:
    """Crash the calling process as ``how`` says: raise, exit or segfault.

    ``where`` names the step (it ends up in the message or on stderr).
    """
    import sys

    if how == "raise":
        raise CrashError(f"raised while {where}")
    print(f"crashing now ({how}) while {where}", file=sys.stderr, flush=True)
    if how == "exit":
        os._exit(7)
    import ctypes

    ctypes.string_at(0)  # SIGSEGV


class CrashAtPickle:
    """Crashes in the process that pickles it."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __reduce__(self) -> tuple[object, ...]:
        crash_now(self.how, "pickling")
        return (str, ())


class CrashAtUnpickle:
    """Pickles fine; crashes in the process that unpickles it."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __reduce__(self) -> tuple[object, ...]:
        return (crash_now, (self.how, "unpickling"))


def identity(value: object) -> object:
    return value


def crash_task(how: str) -> None:
    """Task: crash while running."""
    crash_now(how, "running the task")


def return_crash_at_pickle(how: str) -> CrashAtPickle:
    """Task: return a result that crashes the worker when it pickles it."""
    return CrashAtPickle(how)


def return_crash_at_unpickle(how: str) -> CrashAtUnpickle:
    """Task: return a result that crashes whoever unpickles it (the client)."""
    return CrashAtUnpickle(how)


def say_on_stderr_then_block(text: str, release: str, started: str) -> None:
    """Task: print ``text`` on stderr, then ``block``."""
    import sys

    print(text, file=sys.stderr, flush=True)
    block(release, started)


def secede_then_block(release: str, started: str) -> None:
    """Task: leave the worker's thread pool, then ``block``."""
    from localsched import secede

    secede()
    block(release, started)


def pause_then_add(hold: float, *values: int) -> int:
    """Task: occupy its thread ``hold`` seconds, then sum ``values``."""
    threading.Event().wait(hold)
    return sum(values)


# -- client lifetime (test_client_close.py, test_scheduler_failure.py) ---------------


def count_then_block(path: str, release: str, value: object) -> object:
    """Task: ``count_call`` (one line per execution), then wait for ``release``."""
    count_call(path, None)
    wait_for_file(release, timeout=60.0)
    return value


def make_bytes(nbytes: int, fill: int = 1) -> bytearray:
    """Task: a result of ``nbytes`` (shared memory from 64 KiB on)."""
    return bytearray([fill]) * nbytes


def wait_on_subtask(release: str, started: str) -> object:
    """Task: submit ``block`` through the task's own client and wait for it."""
    from localsched import get_client

    inner = get_client().submit(block, release, started, "inner", pure=False)
    return inner.result()


def report_from_task(path: str, n: int) -> int:
    """Task: write a performance report of ``n`` subtasks from inside a task."""
    import operator

    from localsched import get_client, performance_report

    client = get_client()
    with performance_report(filename=path):
        futures = client.map(operator.neg, range(n), pure=False)
        total = sum(client.gather(futures))
    return total
