"""Closing a client releases its keys as dask does (issue 18, section 4).

Tasks that no other client wants are dropped, queued ones included, and their
results are freed at once, not when the cluster closes. A task already running
finishes (dask cannot stop it either; ``cancel(force=True)`` can).
"""

from __future__ import annotations

import operator
import os
from pathlib import Path

import pytest

from localsched import Client, LocalCluster, wait
from tests.runtime.helpers import (
    DEADLINE,
    block,
    count_then_block,
    lines,
    make_bytes,
    poll,
    wait_for_file,
)

pytestmark = pytest.mark.timeout(60)


def _live_bytes(cluster: LocalCluster) -> int:
    """RAM of the store's live values (pooled segments are free for reuse)."""
    store = cluster.store
    return store.spillable_bytes - store.free_bytes


def test_closing_a_client_drops_its_queued_and_unstarted_tasks(tmp_path):
    count, release = str(tmp_path / "count"), str(tmp_path / "release")
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        try:
            closing = Client(cluster, set_as_default=False)
            futures = closing.map(
                count_then_block,
                [count] * 20,
                [release] * 20,
                range(20),
                pure=False,
            )
            # The one thread runs the first; the worker's queue holds more.
            assert poll(lambda: len(lines(count)) >= 1)
            closing.close()
            assert all(f.status == "cancelled" for f in futures)
            # A round trip to the worker after the cancellations went out on
            # its pipe: it has dropped its queue before the first task ends
            # (else, on a loaded machine, its thread could take the next one).
            with Client(cluster, set_as_default=False) as probe:
                assert len(probe.run(os.getpid)) == 1
        finally:
            Path(release).touch()
        with Client(cluster, set_as_default=False) as other:
            # Queued or not, the closed client's tasks came before this one.
            assert other.submit(operator.neg, 1).result(timeout=DEADLINE) == -1
            assert len(lines(count)) == 1
            assert poll(lambda: not cluster.scheduler.tasks)
            assert len(lines(count)) == 1


def test_closing_a_client_frees_its_results_at_once():
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        before = _live_bytes(cluster)
        closing = Client(cluster, set_as_default=False)
        futures = closing.map(make_bytes, [1 << 20] * 4, range(4))
        wait(futures, timeout=DEADLINE)
        assert all(f.status == "finished" for f in futures)
        assert _live_bytes(cluster) >= before + 4 * (1 << 20)
        closing.close()
        # close() returns once the scheduler thread has run the removal.
        assert not cluster.runtime.data
        assert not cluster.scheduler.tasks
        assert _live_bytes(cluster) == before


def test_open_close_cycles_do_not_grow_the_store():
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        before = _live_bytes(cluster)
        for cycle in range(4):
            with Client(cluster, set_as_default=False) as client:
                futures = client.map(make_bytes, [1 << 20] * 3, [cycle] * 3)
                wait(futures, timeout=DEADLINE)
            assert _live_bytes(cluster) == before, f"after cycle {cycle}"
        assert not cluster.runtime.data


def test_a_key_another_client_wants_survives_the_close(tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        try:
            closing = Client(cluster, set_as_default=False)
            staying = Client(cluster, set_as_default=False)
            # pure: both clients share the one key.
            mine = closing.submit(block, release, started, "value")
            theirs = staying.submit(block, release, started, "value")
            assert mine.key == theirs.key
            queued = [c.submit(make_bytes, 1 << 20, 7) for c in (closing, staying)]
            assert queued[0].key == queued[1].key
            wait_for_file(started)
            closing.close()
        finally:
            Path(release).touch()
        assert theirs.result(timeout=DEADLINE) == "value"
        assert queued[1].result(timeout=DEADLINE) == make_bytes(1 << 20, 7)
        staying.close()
