"""``Client.cancel(force=True)`` stops running tasks; ``Client.restart``.

Real worker processes; tasks block on files the tests create.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import pytest

from localsched import Client, FutureCancelledError, SchedulerPlugin
from tests.runtime import helpers
from tests.runtime.helpers import DEADLINE, poll, wait_for_file

pytestmark = pytest.mark.timeout(60)


def _pids(client: Client) -> dict[str, int]:
    return client.run(os.getpid)


def _wait_for_new_workers(client: Client, old: dict[str, int], n: int) -> dict:
    """Poll until ``n`` workers run and the dead ones' pids are gone; their pids."""
    found: dict[str, int] = {}

    def ready() -> bool:
        found.clear()
        found.update(_pids(client))
        return len(found) == n

    assert poll(ready), f"workers did not come back: {found}"
    return found


def test_force_cancel_restarts_the_worker_running_the_task(tmp_path):
    release, started = str(tmp_path / "release"), str(tmp_path / "started")
    calls = str(tmp_path / "calls")
    with Client(n_workers=2, threads_per_worker=1, validate=True) as client:
        before = _pids(client)
        target = sorted(before)[0]
        kept = client.submit(helpers.count_call, calls, "kept", workers=[target])
        assert kept.result(DEADLINE) == "kept"
        blocked = client.submit(
            helpers.block,
            release,
            started,
            key="blocked",
            workers=[target],
            allow_other_workers=True,
        )
        wait_for_file(started)
        assert int(Path(started).read_text()) == before[target]
        queued = client.submit(
            helpers.count_call,
            calls,
            42,
            key="queued",
            workers=[target],
            allow_other_workers=True,
        )
        assert poll(lambda: "queued" in client.processing().get(target, []))

        t0 = time.monotonic()
        blocked.cancel(force=True)
        assert time.monotonic() - t0 < 5.0
        assert blocked.cancelled()
        with pytest.raises(FutureCancelledError):
            blocked.result(DEADLINE)

        assert queued.result(DEADLINE) == 42
        after = _wait_for_new_workers(client, before, 2)
        assert before[target] not in after.values()
        assert target not in after
        other = next(a for a in before if a != target)
        assert after[other] == before[other]  # only the task's worker restarted
        ts = client.scheduler.state.tasks["queued"]
        assert ts.suspicious == 0
        assert ts.prefix.suspicious == 0
        assert kept.result(DEADLINE) == "kept"  # computed before: survives
        assert len(helpers.lines(calls)) == 2  # kept and queued, once each
        assert not os.path.exists(release)  # it never got to finish
        assert client.submit(helpers.pid, 1).result(DEADLINE) in after.values()


def test_cancel_without_force_leaves_the_task_running(tmp_path):
    release, started = str(tmp_path / "release"), str(tmp_path / "started")
    done = str(tmp_path / "done")
    with Client(n_workers=1, threads_per_worker=1, validate=True) as client:
        before = _pids(client)
        future = client.submit(helpers.block_then_write, release, started, done, 7)
        wait_for_file(started)
        client.cancel([future])
        assert future.cancelled()
        with pytest.raises(FutureCancelledError):
            future.result(DEADLINE)
        assert not os.path.exists(done)
        Path(release).touch()
        wait_for_file(done)  # it ran on, to its end
        assert int(Path(done).read_text()) == next(iter(before.values()))
        assert _pids(client) == before  # no restart
        assert client.submit(helpers.pid, 2).result(DEADLINE) == int(
            Path(done).read_text()
        )


class RestartRecorder(SchedulerPlugin):
    def __init__(self) -> None:
        self.calls: list[object] = []

    def restart(self, scheduler):
        self.calls.append((scheduler, len(scheduler.tasks)))


def test_restart_cancels_futures_runs_hooks_and_replaces_every_worker(tmp_path):
    import numpy as np

    from tests.runtime.helpers import shm_entries

    release, started = str(tmp_path / "release"), str(tmp_path / "started")
    with Client(n_workers=2, threads_per_worker=1, validate=True) as client:
        plugin = RestartRecorder()
        client.register_plugin(plugin, name="recorder")
        before = _pids(client)
        shm_before = shm_entries()
        big = client.submit(np.ones, 2**20)  # 8 MiB: a shared-memory result
        assert big.result(DEADLINE).sum() == 2**20
        assert shm_entries() - shm_before
        running = client.submit(helpers.block, release, started)
        wait_for_file(started)
        pending = client.submit(helpers.pid, running)

        client.restart(timeout=DEADLINE)

        for future in (big, running, pending):
            assert future.cancelled()
            with pytest.raises(FutureCancelledError, match="scheduler-restart"):
                future.result(DEADLINE)
        assert len(plugin.calls) == 1
        assert plugin.calls[0][0] is client.scheduler
        assert not client.scheduler.state.tasks
        assert not client.cluster.runtime.data
        after = _pids(client)
        assert len(after) == 2
        assert not set(after.values()) & set(before.values())
        assert not set(after) & set(before)
        assert poll(lambda: not shm_entries() - shm_before)
        results = client.gather(
            client.map(helpers.record, [str(tmp_path / "r")] * 4, "abcd")
        )
        assert results == list("abcd")
        assert client.submit(helpers.pid, 3).result(DEADLINE) in after.values()
        again = client.submit(np.ones, 2**20)  # the key of ``big``, resubmitted
        assert again.key == big.key
        assert again.result(DEADLINE).sum() == 2**20
        del big
        gc.collect()  # the old future's release must not release the new task
        assert client.scheduler.state.tasks[again.key].who_wants
        assert again.result(DEADLINE).sum() == 2**20


def test_restart_times_out_when_workers_do_not_come_back():
    with Client(n_workers=1, threads_per_worker=1) as client:
        client.cluster.status = "paused"  # no replacements: the workers stay gone
        try:
            with pytest.raises(TimeoutError):
                client.restart(timeout=1.0)
        finally:
            client.cluster.status = "running"
        assert poll(lambda: not client.scheduler.workers)
        client.cluster.scale(1)
        client.wait_for_workers(1, timeout=DEADLINE)
        assert client.submit(helpers.pid, 4).result(DEADLINE) > 0
