"""Another local user cannot break a cluster, and no file error stops the
scheduler thread (issue 18, part 1).

The second user is real where the tests run as root (CI): ``tests/other_user.py``
forks a child that drops to uid 65534 and tries what a squatter would.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import numpy as np
import psutil
import pytest

from localsched import Client
from tests.other_user import as_other_user, squat
from tests.runtime import helpers
from tests.runtime.helpers import DEADLINE, poll, wait_for_file

BIG = 2**17  # float64 elements: 1 MiB, a shared-memory result


def big(i: int) -> np.ndarray:
    return np.full(BIG, float(i))


def _worker_pids(client: Client) -> list[int]:
    return [h.pid for h in client.cluster.runtime.workers.values()]


def _squat_every_name(directory: str, prefix: str, pids: list[int]) -> object:
    """As the squatter: every name a worker would write next, in ``directory``
    (the old scheme put them in /dev/shm itself, named after the prefix that was
    on every worker's command line)."""
    names = [f"{prefix}{pid}.{n}" for pid in pids for n in range(64)]
    return squat(os.path.join(directory, name) for name in names)


def test_another_user_cannot_squat_segment_names_even_knowing_them():
    with Client(n_workers=2, threads_per_worker=1) as client:
        store = client.cluster.store
        assert poll(lambda: all(_worker_pids(client)))
        pids = _worker_pids(client)
        outcome = as_other_user(_squat_every_name, store.directory, store.prefix, pids)
        try:
            assert outcome["made"] == []
            assert set(outcome["refused"]) == {"EACCES"}
            # Results of 64 KiB and more still go to shared memory, on each worker.
            futures = client.map(big, range(8), pure=False)
            results = client.gather(futures, errors="raise")
            assert [float(r[0]) for r in results] == [float(i) for i in range(8)]
            # A worker exit (the store reclaims its files) leaves the cluster working.
            os.kill(pids[0], signal.SIGKILL)
            assert poll(lambda: pids[0] not in _worker_pids(client))
            assert float(client.submit(big, 9, pure=False).result(DEADLINE)[0]) == 9.0
        finally:
            for path in outcome["made"]:
                Path(path).unlink(missing_ok=True)


def test_command_lines_name_no_path_of_the_cluster():
    """``ps`` shows every user the command lines of our workers and janitor."""
    # Lean workers: a template forked from this process would show its
    # command line, not ``-m localsched.worker`` (deploy/user_fork.py).
    with Client(n_workers=1, threads_per_worker=1, warm_imports=False) as client:
        cluster = client.cluster
        store = cluster.store
        secrets_ = {
            store.prefix,
            os.path.basename(store.directory),
            os.path.basename(getattr(store, "fallback_directory", store.directory)),
        }
        children = [*_worker_pids(client), cluster._janitor[0].pid]
        for pid in children:
            cmdline = " ".join(psutil.Process(pid).cmdline())
            assert "localsched" in cmdline  # the right processes
            assert not [s for s in secrets_ if s in cmdline], cmdline
        assert float(client.submit(big, 1).result(DEADLINE)[0]) == 1.0


def test_a_result_the_store_refuses_fails_only_its_task(monkeypatch):
    with Client(n_workers=1, threads_per_worker=1) as client:
        store = client.cluster.store
        real_adopt = store.adopt
        calls = []

        def adopt_failing_once(ref):
            calls.append(ref)
            if len(calls) == 1:
                raise OSError(errno.EACCES, "Permission denied", ref.segment)
            return real_adopt(ref)

        monkeypatch.setattr(store, "adopt", adopt_failing_once)
        future = client.submit(big, 1, pure=False)
        with pytest.raises(RuntimeError, match="could not be kept") as info:
            future.result(DEADLINE)
        assert isinstance(info.value.__cause__, PermissionError)
        # The cluster goes on: the next results arrive.
        assert float(client.submit(big, 2, pure=False).result(DEADLINE)[0]) == 2.0
        assert client.submit(sum, [1, 2]).result(DEADLINE) == 3


def test_files_that_cannot_be_removed_never_stop_the_scheduler(monkeypatch):
    """What a non-root owner meets when another user's files sit where the store
    unlinks (the old shared /dev/shm): ``PermissionError`` on every unlink."""
    with Client(n_workers=2, threads_per_worker=1) as client:
        store = client.cluster.store
        real_unlink = os.unlink

        def refuse_ours(path, *args, **kwargs):
            if str(path).startswith(store.directory):
                raise PermissionError(errno.EPERM, "Operation not permitted", path)
            return real_unlink(path, *args, **kwargs)

        futures = client.map(big, range(4), pure=False)
        client.gather(futures)
        assert poll(lambda: all(_worker_pids(client)))
        pids = _worker_pids(client)
        monkeypatch.setattr(os, "unlink", refuse_ours)
        del futures  # release: unlinks beyond the pool's cap
        store.max_free_bytes = 0
        os.kill(pids[0], signal.SIGKILL)  # reclaim: unlinks the worker's files
        assert poll(lambda: pids[0] not in _worker_pids(client))
        assert client.cluster.runtime.is_running
        assert float(client.submit(big, 5, pure=False).result(DEADLINE)[0]) == 5.0
        monkeypatch.undo()  # close() removes everything


def test_leased_segment_count_matches_the_files_that_exist(tmp_path):
    """A task forgotten while it runs: its worker drops a result written into a
    leased segment. The store must go on counting exactly the files there are."""
    with Client(n_workers=1, threads_per_worker=1) as client:
        store = client.cluster.store
        runtime = client.cluster.runtime
        for cycle in range(5):
            # A result freed: its segment is leased back to the worker.
            first = client.submit(big, cycle, pure=False)
            first.result(DEADLINE)
            del first
            assert poll(lambda: store._leased)
            release, started = str(tmp_path / f"r{cycle}"), str(tmp_path / f"s{cycle}")
            doomed = client.submit(
                helpers.block, release, started, np.ones(BIG), pure=False
            )
            wait_for_file(started)
            doomed.cancel()
            del doomed
            Path(release).touch()
            # One thread: this runs after the forgotten task dropped its result.
            assert client.submit(helpers.identity, cycle).result(DEADLINE) == cycle

            def accounting():
                files = [
                    e
                    for e in os.scandir(store.directory)
                    if e.is_file(follow_symlinks=False)
                ]
                leased = list(store._leased)
                return sum(e.stat().st_size for e in files), store.memory_bytes, leased

            on_disk, counted, leased = runtime.call(accounting).result(DEADLINE)
            assert counted == on_disk, f"cycle {cycle}"
            assert all(os.path.exists(path) for path in leased)
