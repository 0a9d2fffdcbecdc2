"""``LocalCluster`` on real processes: defaults, reprs, scaling, close, crashes."""

from __future__ import annotations

import logging
import operator
import os
import signal
from pathlib import Path

import psutil
import pytest

from localsched import Client, FutureCancelledError, KilledWorker, LocalCluster
from tests.runtime.helpers import (
    DEADLINE,
    block,
    kill_own_process,
    pid,
    poll,
    wait_for_file,
)

pytestmark = pytest.mark.timeout(60)


def _worker_pids(cluster):
    return {ws.pid for ws in cluster.scheduler.workers.values()}


def _gone(pids):
    procs = []
    for p in pids:
        try:
            procs.append(psutil.Process(p))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=DEADLINE)
    return not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def test_defaults_follow_dasks_split_of_cores():
    utils = pytest.importorskip("distributed.deploy.utils")
    from dask.system import CPU_COUNT

    n_workers, threads = utils.nprocesses_nthreads(CPU_COUNT)
    with LocalCluster() as cluster:
        workers = cluster.scheduler.workers.values()
        assert len(workers) == n_workers
        assert [ws.nthreads for ws in workers] == [threads] * n_workers


def test_repr_and_html_repr_describe_the_workers():
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster:
        text = repr(cluster)
        assert text.startswith("LocalCluster(")
        assert "workers=2" in text
        assert "threads=2" in text
        html = cluster._repr_html_()
        assert "LocalCluster" in html
        for name in cluster.workers:
            assert f"<td>{name}</td>" in html
    assert "closed" in repr(cluster)


def test_scale_up_and_down_keeps_results(tmp_path):
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, validate=True) as cluster,
        Client(cluster) as client,
    ):
        cluster.scale(3)
        cluster.wait_for_workers(3, timeout=DEADLINE)
        assert len(cluster.scheduler.workers) == 3
        pids = _worker_pids(cluster)
        assert len(pids) == 3

        # One small and one shared-memory result on every worker.
        small, large = {}, {}
        for address in cluster.scheduler.workers:
            small[address] = client.submit(pid, address, workers=[address])
            large[address] = client.submit(
                operator.mul, b"x", 2**20, workers=[address], pure=False
            )
        computed_on = {a: f.result(timeout=DEADLINE) for a, f in small.items()}
        assert set(computed_on.values()) == pids
        client.gather(list(large.values()))

        cluster.scale(1)
        assert poll(lambda: len(cluster.scheduler.workers) == 1)
        (survivor,) = _worker_pids(cluster)
        assert _gone(pids - {survivor})

        assert {a: f.result(timeout=DEADLINE) for a, f in small.items()} == (
            computed_on
        )
        assert all(f.result(timeout=DEADLINE) == b"x" * 2**20 for f in large.values())
        assert set(client.gather(client.map(pid, range(4), pure=False))) == {survivor}


def test_scale_to_zero_and_straight_back_up(tmp_path):
    release = tmp_path / "release"
    started = str(tmp_path / "started")
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, validate=True) as cluster,
        Client(cluster) as client,
    ):
        try:
            running = client.submit(block, str(release), started, "kept", pure=False)
            wait_for_file(started)
            (retiring,) = _worker_pids(cluster)
            cluster.scale(0)  # the worker retires once its task is done
            cluster.scale(1)  # so this must start a new one
            later = client.submit(operator.neg, 5)
            assert later.result(timeout=DEADLINE) == -5
        finally:
            release.touch()
        assert running.result(timeout=DEADLINE) == "kept"
        assert _gone({retiring})
        assert poll(lambda: len(cluster.scheduler.workers) == 1)
        assert retiring not in _worker_pids(cluster)


def test_close_is_idempotent_and_quiet(capfd, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    started = str(tmp_path / "started")
    cluster = LocalCluster(n_workers=2, threads_per_worker=1)
    client = Client(cluster)
    assert client.submit(operator.add, 1, 2).result(timeout=DEADLINE) == 3
    # A task still running at close (never released) must not make noise.
    running = client.submit(block, str(tmp_path / "never"), started, pure=False)
    wait_for_file(started)
    client.close()
    cluster.close()
    cluster.close()
    client.close()
    with Client(n_workers=1, threads_per_worker=1) as own:
        own.submit(operator.add, 1, 2).result(timeout=DEADLINE)
    own.close()
    own.cluster.close()
    assert (cluster.status, client.status, own.status) == ("closed",) * 3
    assert running.status == "cancelled"
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert "rror" not in out + err
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]
    assert not [
        r
        for r in caplog.records
        if "closed" in r.getMessage().lower() and r.levelno >= logging.WARNING
    ]


def test_closing_a_cluster_cancels_the_futures_of_attached_clients(tmp_path):
    release = str(tmp_path / "release")
    try:
        with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
            client = Client(cluster)
            large = client.submit(operator.mul, b"x", 2**20)
            assert large.result(timeout=DEADLINE) == b"x" * 2**20
            blocked = client.submit(block, release, None, pure=False)
        for future in (blocked, large):
            with pytest.raises(FutureCancelledError):
                future.result(timeout=DEADLINE)
            assert future.status == "cancelled"
        client.close()
    finally:
        Path(release).touch()


def test_closed_cluster_refuses_clients_and_scaling_instead_of_hanging():
    cluster = LocalCluster(n_workers=1, threads_per_worker=1)
    cluster.close()
    # dask's type and words (deploy/tests/test_local.py::test_connect_to_closed_cluster)
    with pytest.raises(RuntimeError, match="already closed or closing Cluster"):
        Client(cluster)
    with pytest.raises(RuntimeError, match="not running"):
        cluster.scale(2)
    assert cluster.status == "closed"


def test_killed_worker_is_replaced_and_its_task_rerun_elsewhere(tmp_path):
    release = str(tmp_path / "release")
    started = tmp_path / "started"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, validate=True) as cluster,
        Client(cluster) as client,
    ):
        # Results held before the crash, small and in shared memory, per worker.
        before = {}
        for i, address in enumerate(cluster.scheduler.workers):
            small = client.submit(operator.add, i, 100, workers=[address])
            large = client.submit(operator.mul, bytes([i]), 2**20, workers=[address])
            before[address] = (small, large)
        client.gather(before)
        try:
            future = client.submit(block, release, str(started), "done", pure=False)
            wait_for_file(started)
            victim = int(started.read_text())
            assert victim in _worker_pids(cluster)
            started.unlink()
            os.kill(victim, signal.SIGKILL)
            assert _gone({victim})

            # The task runs again on a worker that is alive.
            wait_for_file(started)
            rerun_on = int(started.read_text())
            assert rerun_on != victim
            assert rerun_on in _worker_pids(cluster)
        finally:
            Path(release).touch()
        assert future.result(timeout=DEADLINE) == "done"
        for i, (small, large) in enumerate(before.values()):
            assert small.result(timeout=DEADLINE) == i + 100
            assert large.result(timeout=DEADLINE) == bytes([i]) * 2**20

        # A replacement joins, and new work runs on the full cluster.
        assert poll(
            lambda: (
                len(cluster.scheduler.workers) == 2
                and victim not in _worker_pids(cluster)
            )
        )
        assert len(_worker_pids(cluster)) == 2
        results = client.gather(client.map(operator.neg, range(20)))
        assert results == [-i for i in range(20)]
        per_worker = client.gather(
            [client.submit(pid, a, workers=[a]) for a in cluster.scheduler.workers]
        )
        assert set(per_worker) == _worker_pids(cluster)


def test_task_that_keeps_killing_workers_errs_with_killed_worker():
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, allowed_failures=1, validate=True
        ) as cluster,
        Client(cluster) as client,
    ):
        future = client.submit(kill_own_process)
        with pytest.raises(KilledWorker) as info:
            future.result(timeout=DEADLINE)
        assert "SIGKILL" in str(info.value)
        assert future.status == "error"
        # Crashed workers are replaced and the cluster goes on.
        assert poll(lambda: len(cluster.scheduler.workers) == 2)
        assert client.submit(operator.neg, 1).result(timeout=DEADLINE) == -1
