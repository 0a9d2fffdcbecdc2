"""Fixtures for the end-to-end tests on real worker processes.

Every test here runs under a leak check: child processes, threads (daemon or
not) and ``localsched-<our pid>-*`` directories and the segments in them (in
/dev/shm and, for the disk fallback and spill, the temporary directory) that
exist after the test but not before it fail the test, once a few seconds of
polling have given them time to go. Clusters shared by a module (the
``client`` fixture) are checked the same way at module teardown; while they
live, the segments they pool are theirs.

A fork server or resource tracker that ``multiprocessing`` started is a
per-process singleton that outlives every cluster by design: not a leak.
"""

from __future__ import annotations

import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import cloudpickle
import psutil
import pytest

from localsched import Client
from tests.runtime import helpers
from tests.runtime.helpers import SHM_DIR, shm_entries

cloudpickle.register_pickle_by_value(helpers)

LEAK_DEADLINE = 5.0  # seconds things get to go away after a test

#: Store prefixes of shared clusters still running: their pooled segments are
#: checked when the cluster closes, not after every test.
_shared_prefixes: set[str] = set()


def _infrastructure_pids() -> set[int]:
    pids = set()
    server = multiprocessing.forkserver._forkserver
    tracker = multiprocessing.resource_tracker._resource_tracker
    for pid in (
        getattr(server, "_forkserver_pid", None),
        getattr(tracker, "_pid", None),
    ):
        if pid is not None:
            pids.add(pid)
    return pids


def _children() -> set[tuple[int, float]]:
    infrastructure = _infrastructure_pids()
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid in infrastructure or child.status() == psutil.STATUS_ZOMBIE:
                continue
            found.add((child.pid, child.create_time()))
        except psutil.NoSuchProcess:
            continue
    return found


def _describe(pid: int) -> str:
    """A leaked child with what tells whose it is: its parent and command."""
    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline())[:200]
        return f"child process {pid} (parent {process.ppid()}: {command})"
    except psutil.Error:
        return f"child process {pid}"


@dataclass
class Snapshot:
    children: set[tuple[int, float]]
    threads: set[threading.Thread]
    shm: set[str]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(_children(), set(threading.enumerate()), shm_entries())

    def leaks(self, ignore_prefixes: frozenset[str] = frozenset()) -> list[str]:
        now = Snapshot.take()
        found = [_describe(pid) for pid, _ in now.children - self.children]
        found += [
            f"thread {t.name!r} (daemon={t.daemon})"
            for t in now.threads - self.threads
            if t.is_alive()
        ]
        found += [
            f"{SHM_DIR}/{name}"
            for name in sorted(now.shm - self.shm)
            if not name.startswith(tuple(ignore_prefixes))
        ]
        return found


def check_leaks(before: Snapshot, ignore_prefixes: frozenset[str] = frozenset()):
    leaks: list[str] = []

    def clean() -> bool:
        leaks[:] = before.leaks(ignore_prefixes)
        return not leaks

    if not helpers.poll(clean, LEAK_DEADLINE):
        pytest.fail(f"leaked after {LEAK_DEADLINE} s: {', '.join(leaks)}")


@pytest.fixture(autouse=True)
def leak_check() -> Iterator[None]:
    """Fail a test that leaves a process, a thread or a shm segment behind."""
    before = Snapshot.take()
    yield
    check_leaks(before, frozenset(_shared_prefixes))


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """A 2-worker, 1-thread-each client shared by a module; leak-checked at the end."""
    before = Snapshot.take()
    with Client(n_workers=2, threads_per_worker=1, validate=True) as shared:
        prefix = os.path.basename(shared.cluster.store.directory)
        _shared_prefixes.add(prefix)
        try:
            yield shared
        finally:
            _shared_prefixes.discard(prefix)
    check_leaks(before)
