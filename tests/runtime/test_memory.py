"""Memory management on real workers: spill, pause and resume, terminate, the
restart of a worker paused for good, a result too large for the machine, and a
/dev/shm too small. Memory pressure is real but cheap: limits of a few hundred
MiB and numpy allocations of that size."""

from __future__ import annotations

import errno
import logging
import os
import sys
import tempfile
from pathlib import Path

import cloudpickle
import pytest

from localsched import Client, KilledWorker, LocalCluster
from localsched.transport import segment_files
from localsched.transport.shm import SharedMemoryWarning
from tests.runtime.helpers import DEADLINE, poll, wait_for_file

np = pytest.importorskip("numpy")
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


def filled(mib: int, value: float) -> object:
    """Task: an array of ``mib`` MiB filled with ``value``."""
    return np.full(mib * MiB // 8, value)


def total(array: object) -> float:
    return float(array.sum())  # type: ignore[attr-defined]


def hold(mib: int, started: str, release: str) -> int:
    """Task: keep ``mib`` MiB of the worker's own memory until ``release``."""
    block = np.ones(mib * MiB // 8)
    Path(f"{started}.tmp").write_text(str(os.getpid()))
    os.replace(f"{started}.tmp", started)
    wait_for_file(release, timeout=DEADLINE)
    return int(block[0])


def leak(mib: int) -> int:
    """Task: keep ``mib`` MiB alive in the worker after the task (a leak)."""
    os.localsched_test_leak = np.ones(mib * MiB // 8)  # type: ignore[attr-defined]
    return os.getpid()


def pid() -> int:
    return os.getpid()


def leak_until(mib: int, started: str, release: str) -> int:
    """Task: leave ``mib`` MiB in the worker after it ends, at ``release``."""
    os.localsched_test_leak = np.ones(mib * MiB // 8)  # type: ignore[attr-defined]
    Path(started).touch()
    wait_for_file(release, timeout=DEADLINE)
    return os.getpid()


def drop_leak() -> None:
    os.localsched_test_leak = None  # type: ignore[attr-defined]


def _status(cluster: LocalCluster) -> str:
    [ws] = cluster.scheduler.workers.values()
    return str(ws.status)


def _state(cluster: LocalCluster, key: object) -> str | None:
    def read() -> str | None:
        ts = cluster.scheduler.tasks.get(key)
        return None if ts is None else str(ts.state)

    return cluster.runtime.call(read).result(DEADLINE)


def test_results_spill_to_disk_and_read_back_identical(tmp_path, caplog):
    with (
        caplog.at_level(logging.INFO, logger="localsched.runtime.memory"),
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            memory_limit="200MiB",
            local_directory=str(tmp_path),
        ) as cluster,
        Client(cluster) as client,
    ):
        # 8 x 20 MiB of results: past the 120 MiB target of the 200 MiB budget.
        futures = [client.submit(filled, 20, i, pure=False) for i in range(8)]
        client.gather(futures)
        assert poll(lambda: cluster.store.spill_count >= 2)
        spill_directory = cluster.store.spill_directory
        assert os.path.dirname(spill_directory) == str(tmp_path)
        # Read on the scheduler thread, which spills: a consistent view.
        files, spilled = cluster.runtime.call(
            lambda: (len(os.listdir(spill_directory)), cluster.store.spill_count)
        ).result(DEADLINE)
        assert files == spilled
        assert cluster.store.memory_bytes <= 0.7 * 200 * MiB
        # Spilled values come back identical, in this process and in a task.
        for i, array in enumerate(client.gather(futures)):
            assert array.shape == (20 * MiB // 8,)
            assert float(array[0]) == float(array[-1]) == i
        sums = client.gather([client.submit(total, f) for f in futures])
        assert sums == [i * 20 * MiB // 8 for i in range(8)]
    assert os.listdir(tmp_path) == []  # the spill directory went too
    reports = [r.message for r in caplog.records if r.message.startswith("Spilled")]
    assert 1 <= len(reports) <= 2  # one line per 5 s, however many spills
    assert spill_directory in reports[0]


def test_pause_stops_placement_and_resume_restarts_it(tmp_path, caplog):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    with (
        caplog.at_level(logging.INFO, logger="localsched.runtime.memory"),
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            memory_limit="400MiB",
            memory_pause_fraction=0.5,  # 200 MiB: far from the worker's baseline
            memory_terminate_fraction=False,
        ) as cluster,
        Client(cluster) as client,
    ):
        holding = client.submit(hold, 250, started, release)
        wait_for_file(started)
        assert poll(lambda: _status(cluster) == "paused")
        # A free thread, but a paused worker: the task is not placed.
        waiting = client.submit(pid)
        with pytest.raises(TimeoutError):
            waiting.result(timeout=1.0)
        assert _state(cluster, waiting.key) in ("no-worker", "queued")
        Path(release).touch()
        assert holding.result(timeout=DEADLINE) == 1
        # The memory went back: resumed, and the waiting task runs.
        assert waiting.result(timeout=DEADLINE) == int(Path(started).read_text())
        assert _status(cluster) == "running"
    paused = [r for r in caplog.records if "paused, it gets no new tasks" in r.message]
    assert len(paused) == 1
    assert "more than 50% of its memory limit of 400.00 MiB" in paused[0].message
    assert any("resumed" in r.message for r in caplog.records)


def test_worker_past_terminate_is_restarted_and_its_task_killed(tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "never")
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, memory_limit="300MiB", allowed_failures=0
        ) as cluster,
        Client(cluster) as client,
    ):
        first_pid = client.submit(pid).result(timeout=DEADLINE)
        hog = client.submit(hold, 400, started, release)
        with pytest.raises(KilledWorker) as caught:
            hog.result(timeout=DEADLINE)
        message = str(caught.value)
        assert "memory monitor restarted it" in message
        assert "more than 95% of its memory limit of 300.00 MiB" in message
        assert repr(hog.key) in message  # the task it was running is named
        # A replacement took its place and runs tasks.
        again = client.submit(pid, pure=False).result(timeout=DEADLINE)
        assert again != first_pid


def test_paused_worker_with_nothing_to_spill_is_restarted_after_timeout(caplog):
    with (
        caplog.at_level(logging.WARNING, logger="localsched.runtime.memory"),
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            memory_limit="300MiB",
            memory_pause_fraction=0.5,
            memory_terminate_fraction=False,
            memory_pause_timeout=0.5,
        ) as cluster,
        Client(cluster) as client,
    ):
        leaky_pid = client.submit(leak, 200).result(timeout=DEADLINE)
        assert poll(lambda: _status(cluster) == "paused")
        # Paused for good (nothing to spill, nothing running): restarted, so
        # the next task runs on a fresh process instead of waiting forever.
        fresh_pid = client.submit(pid).result(timeout=DEADLINE)
        assert fresh_pid != leaky_pid
    restarts = [r.message for r in caplog.records if "Restarting worker" in r.message]
    assert len(restarts) == 1
    assert "with nothing to run, it still used" in restarts[0]


def test_full_disk_while_spilling_logs_one_warning_not_a_flood(monkeypatch, caplog):
    attempts = []

    def disk_full(*args: object) -> int:
        attempts.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "sendfile", disk_full)
    with (
        caplog.at_level(logging.WARNING, logger="localsched.runtime.memory"),
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, memory_limit="64MiB"
        ) as cluster,
        Client(cluster) as client,
    ):
        futures = [client.submit(filled, 16, i, pure=False) for i in range(4)]
        client.gather(futures)
        assert poll(lambda: len(attempts) >= 5)  # a try on every sample
        # Nothing was lost: every value is still in memory and reads back.
        assert cluster.store.spill_count == 0
        assert [float(a[0]) for a in client.gather(futures)] == [0, 1, 2, 3]
    failures = [r for r in caplog.records if "Could not spill" in r.message]
    assert len(failures) == 1
    assert "No space left on device" in failures[0].message


def test_result_larger_than_available_memory_fails_the_task_clearly(monkeypatch):
    # Workers are threads here, so the fake reading reaches them.
    monkeypatch.setattr(segment_files, "_memory_available", lambda: 10 * MiB)
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):
        too_large = client.submit(filled, 16, 1.0)
        with pytest.raises(
            MemoryError, match=r"takes 16\.00 MiB, more than the 10\.00"
        ):
            too_large.result(timeout=DEADLINE)
        assert client.submit(filled, 1, 2.0).result(timeout=DEADLINE)[0] == 2.0


def test_small_dev_shm_falls_back_to_a_disk_directory_with_one_warning(
    monkeypatch, tmp_path
):
    real_free_space = segment_files._free_space

    def small_shm(directory: str) -> int:
        if directory == segment_files.SHM_DIR:
            return 32 * MiB
        return real_free_space(directory)

    monkeypatch.setattr(segment_files, "_free_space", small_shm)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(segment_files, "_fallback_warned", False)
    with pytest.warns(SharedMemoryWarning) as caught:
        cluster = LocalCluster(n_workers=1, threads_per_worker=1)
    with cluster, Client(cluster) as client:
        assert cluster.store.directory.startswith(str(tmp_path))
        future = client.submit(filled, 2, 3.0)
        assert float(future.result(timeout=DEADLINE)[-1]) == 3.0
        assert any(
            name.startswith(cluster.store.prefix)
            for name in os.listdir(cluster.store.directory)
        )
    assert len(caught) == 1
    assert "disk-backed" in str(caught[0].message)


def test_budget_follows_the_machines_available_memory_by_default() -> None:
    with LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="300MiB") as c:
        monitor = c.memory
        assert monitor is not None
        monitor.read_available = lambda: 10 * MiB
        # Fixed readings: tick() samples again, and a live worker's RSS moves
        # by a few pages between two samples.
        monitor.read_unmanaged = lambda pid: 5 * MiB
        sample = c.runtime.call(monitor.sample).result(DEADLINE)
        assert [w.unmanaged for w in sample.workers] == [5 * MiB]
        ours = sample.managed + sum(w.unmanaged for w in sample.workers)
        assert sample.machine_limit == ours + 10 * MiB
        decision = c.runtime.call(monitor.tick).result(DEADLINE)
        assert decision.budget == min(300 * MiB, sample.machine_limit)
        # Given explicitly, the cap stays put whatever the machine has free.
        monitor.fixed_machine_limit = monitor.machine_limit = 200 * MiB
        sample = c.runtime.call(monitor.sample).result(DEADLINE)
        assert sample.machine_limit == 200 * MiB


def test_a_paused_worker_starts_none_of_the_tasks_already_queued_on_it(tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            memory_limit="400MiB",
            memory_pause_fraction=0.5,
            memory_terminate_fraction=False,
        ) as cluster,
        Client(cluster) as client,
    ):
        leaking = client.submit(leak_until, 250, started, release)
        queued = client.submit(pid)  # sent now, queued behind it in the worker
        wait_for_file(started)
        assert poll(lambda: _status(cluster) == "paused")
        Path(release).touch()
        worker_pid = leaking.result(timeout=DEADLINE)
        # Its memory stays (leaked): still paused, so the queued task waits.
        with pytest.raises(TimeoutError):
            queued.result(timeout=1.0)
        assert _status(cluster) == "paused"
        client.run(drop_leak)
        assert queued.result(timeout=DEADLINE) == worker_pid
        assert _status(cluster) == "running"


def test_paused_worker_with_only_queued_tasks_is_restarted_after_timeout(tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        memory_limit="300MiB",
        memory_pause_fraction=0.5,
        memory_terminate_fraction=False,
        memory_pause_timeout=0.5,
    ) as cluster, Client(cluster) as client:  # fmt: skip
        leaking = client.submit(leak_until, 200, started, release)
        queued = client.submit(pid)  # waits on the worker behind the leak
        wait_for_file(started)
        assert poll(lambda: _status(cluster) == "paused")
        Path(release).touch()
        leaky_pid = leaking.result(timeout=DEADLINE)
        # Nothing runs, the queued task waits for the pause, the leak stays:
        # without the restart it would wait forever.
        assert queued.result(timeout=DEADLINE) != leaky_pid
