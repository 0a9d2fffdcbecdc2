"""Task functions and polling helpers shared by the real-process tests.

``conftest.py`` registers this module with cloudpickle by value, so workers
receive these functions' code and never import the test package (or pytest).
Tasks block on files the test creates; nothing here sleeps for a fixed time.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

DEADLINE = 20.0  # seconds; bounds every wait in these tests

SHM_DIR = Path("/dev/shm")
#: Segments of stores in this process (named after its pid): other test runs on
#: the machine have their own, which must not fail ours.
SHM_PREFIX = f"localsched-{os.getpid()}-"


def shm_entries() -> set[str]:
    """Names of this process's segments in /dev/shm."""
    try:
        return {n for n in os.listdir(SHM_DIR) if n.startswith(SHM_PREFIX)}
    except FileNotFoundError:
        return set()


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
