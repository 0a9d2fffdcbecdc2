"""Task arguments in shared memory live as long as their task, not less.

A large argument goes into a segment of the store when the client submits; the
scheduler thread frees it on a tick once the task is forgotten (or was never
accepted). The sweep must never free it between the submit and the moment the
scheduler handles the graph: the pooled segment then went to the next large
argument, and the task read ``StaleBlobError`` (the flake of
``test_results_of_retired_workers_are_kept_and_never_recomputed``).
"""

from __future__ import annotations

import threading

import pytest

from localsched import Client, LocalCluster
from tests.runtime.helpers import DEADLINE, identity, poll

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


class Refuses:
    """Tokenizes (dask hashes a graph first) but cannot be pickled."""

    def __dask_tokenize__(self) -> str:
        return "refuses"

    def __reduce__(self) -> str:
        raise TypeError("this object refuses pickling")


def _live_bytes(cluster: LocalCluster) -> int:
    """RAM of the store's live values (pooled segments are free for reuse)."""
    store = cluster.store
    return store.spillable_bytes - store.free_bytes


def test_a_tick_between_submit_and_the_graph_keeps_the_arguments():
    with LocalCluster(n_workers=0) as cluster, Client(cluster) as client:
        runtime = cluster.runtime
        entered, gate = threading.Event(), threading.Event()

        def hold_then_tick() -> None:
            entered.set()
            gate.wait(DEADLINE)
            # This turn's tick is due: it sweeps after draining the inbox (which
            # now holds the graph) and before the core handles what it drained.
            runtime._next_tick = 0.0

        # The scheduler thread waits inside this call while the client submits,
        # so the graph is in the inbox, not yet handled, when the sweep runs.
        held = runtime.call(hold_then_tick)
        assert entered.wait(DEADLINE)
        first = client.submit(len, bytes(MiB))
        gate.set()
        held.result(DEADLINE)
        runtime.call(lambda: None).result(DEADLINE)  # that turn is over
        assert first.key in cluster.scheduler.tasks
        # The argument is a live value still, not a pooled segment...
        assert cluster.store.free_bytes == 0
        # ...so the next argument of its size class cannot overwrite it.
        second = client.submit(len, bytes(MiB + 1))
        cluster.scale(1)  # no worker read either argument before this
        assert first.result(timeout=DEADLINE) == MiB
        assert second.result(timeout=DEADLINE) == MiB + 1


def test_arguments_are_freed_once_their_task_is_forgotten():
    with (
        LocalCluster(n_workers=1, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        before = _live_bytes(cluster)
        future = client.submit(len, bytes(MiB))
        assert future.result(timeout=DEADLINE) == MiB
        assert _live_bytes(cluster) >= before + MiB  # the argument, still held
        future.release()
        # Freed by the next tick's sweep once the task is forgotten.
        assert poll(lambda: _live_bytes(cluster) == before)


def test_arguments_never_posted_are_freed_by_the_client():
    """Until its graph is posted a client owns its arguments' segments: a submit,
    map or graph that fails after pickling them, or a key already held, frees
    them at once."""
    with (
        LocalCluster(n_workers=1, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        before = _live_bytes(cluster)
        with pytest.raises(KeyError, match="Invalid time unit"):  # as dask
            client.submit(len, bytes(MiB), fifo_timeout="soon")
        with pytest.raises(TypeError, match="key"):
            client.map(len, [bytes(MiB), bytes(MiB + 1)], key=["a", object()])
        with pytest.raises(TypeError, match="refuses"):
            # The large literal is pickled first (the task reading it comes
            # later in graph order), then its reader fails to pickle.
            client.get({"big": bytes(MiB), "n": (identity, "big", Refuses())}, "n")
        assert _live_bytes(cluster) == before
        held = client.map(len, [bytes(MiB)], key=["held"])
        assert held[0].result(timeout=DEADLINE) == MiB
        with_argument = _live_bytes(cluster)
        again = client.map(len, [bytes(MiB)], key=["held"])  # not posted: held
        assert again[0].result(timeout=DEADLINE) == MiB
        assert _live_bytes(cluster) == with_argument
        assert client.submit(identity, 1).result(timeout=DEADLINE) == 1


def _nbytes(array: object) -> int:
    return int(array.nbytes)  # type: ignore[attr-defined]


def test_a_hand_off_copies_the_value_once_and_the_consumer_copies_no_data():
    np = pytest.importorskip("numpy")
    from localsched.transport.shm import bytes_copied

    nbytes = 8 * MiB
    with (
        LocalCluster(n_workers=2, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        producer, consumer = list(cluster.scheduler.workers)
        before = client.run(bytes_copied)
        here = bytes_copied()
        produced = client.submit(np.ones, nbytes // 8, workers=[producer])
        consumed = client.submit(_nbytes, produced, workers=[consumer])
        assert consumed.result(timeout=DEADLINE) == nbytes
        after = client.run(bytes_copied)
        # The producer wrote the array once (plus its stamp and pickle stream)...
        assert nbytes <= after[producer] - before[producer] < nbytes + 4096
        # ...the consumer mapped it, reading only the pickle stream...
        assert after[consumer] - before[consumer] < 4096
        # ...and the client's process (the scheduler's too) copied nothing.
        assert bytes_copied() == here
