"""The fast paths of large results between workers keep every guarantee.

A freed result's segment goes back to its producer as a lease, refilled from
the free pool as the producer uses them; a large lease is mapped in the
worker's background and written through the mapping
(``transport/segment_maps.py``). The values must be exact, survive the
producer's crash, and leave no segment or mapping behind.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from localsched import Client, wait
from localsched.runtime.scheduler_thread import MAX_LEASES_PER_WORKER
from localsched.transport.shm_pool import WARM_FROM
from tests.runtime.helpers import DEADLINE, array_digest, pid, poll

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
BIG = WARM_FROM + 1  # a lease this large is mapped by the worker


def pattern(seed: int, nbytes: int) -> np.ndarray:
    """Task: ``nbytes`` bytes that differ with ``seed``."""
    return (np.arange(nbytes, dtype=np.uint64) * (seed + 1) % 251).astype(np.uint8)


def mapped_leases() -> list[str]:
    """Task: the leased segments this worker holds and has mapped."""
    from localsched.worker.context import get_worker

    writer = get_worker().writer
    assert writer is not None
    leases = [lease.segment for held in writer._leases.values() for lease in held]
    return [segment for segment in leases if segment in writer.maps]


def _mapped_files() -> set[str]:
    """Files this process maps (/proc/self/maps)."""
    with open("/proc/self/maps") as f:
        fields = [line.split(None, 5) for line in f]
    return {parts[5].strip() for parts in fields if len(parts) == 6}


def _segments(client: Client) -> set[str]:
    store = client.cluster.store
    return {e.name for e in os.scandir(store.directory) if e.name.startswith("loc")}


def test_a_producer_gets_its_leases_refilled_from_the_free_pool():
    with Client(n_workers=1, threads_per_worker=1) as client:
        store = client.cluster.store
        first = [client.submit(pattern, i, MiB, pure=False) for i in range(8)]
        wait(first, timeout=DEADLINE)
        del first  # 8 free segments; 4 go back to the worker as leases
        assert poll(lambda: len(store._leased) == MAX_LEASES_PER_WORKER)
        assert poll(lambda: len(store._free_lru) == 8 - MAX_LEASES_PER_WORKER)
        made = _segments(client)
        second = []
        for i in range(8):  # one at a time: each lease arrives before its task
            second.append(client.submit(pattern, 10 + i, MiB, pure=False))
            wait(second[-1:], timeout=DEADLINE)
        # Each used lease was refilled from the pool: no new file at all.
        assert _segments(client) == made
        for i, future in enumerate(second):
            assert np.array_equal(future.result(DEADLINE), pattern(10 + i, MiB))


def test_a_value_written_through_a_mapped_lease_is_exact_and_survives_a_crash():
    with Client(n_workers=2, threads_per_worker=1) as client:
        directory = client.cluster.store.directory
        producer, consumer = sorted(client.cluster.runtime.workers)
        on_producer = {"workers": [producer], "pure": False}
        runtime = client.cluster.runtime
        first = client.submit(pattern, 0, BIG, **on_producer)
        wait([first], timeout=DEADLINE)
        del first  # its segment is leased back, and mapped by the worker
        leases: list[str] = []

        def mapped() -> bool:
            leases[:] = client.submit(mapped_leases, **on_producer).result(DEADLINE)
            return bool(leases)

        assert poll(mapped)
        second = client.submit(pattern, 7, BIG, **on_producer)
        wait([second], timeout=DEADLINE)
        ref = runtime.call(lambda: runtime.data[second.key]).result(DEADLINE)
        assert ref.segment in leases  # written through the worker's mapping
        expected = array_digest(pattern(7, BIG))
        victim = client.submit(pid, **on_producer).result(DEADLINE)
        os.kill(victim, signal.SIGKILL)  # the value lives in shared memory
        got = client.submit(array_digest, second, workers=[consumer], pure=False)
        assert got.result(DEADLINE) == expected
        assert np.array_equal(second.result(DEADLINE), pattern(7, BIG))
    # The store's mappings (its free pool's) went with it.
    assert not {path for path in _mapped_files() if path.startswith(directory)}


def test_a_scattered_values_segment_stays_for_the_next_scatter():
    with Client(n_workers=1, threads_per_worker=1) as client:
        store, runtime = client.cluster.store, client.cluster.runtime

        def ref_of(key: object) -> object:
            return runtime.call(lambda: runtime.data[key]).result(DEADLINE)

        first = client.scatter(pattern(1, BIG), hash=False)
        # A task reads it while the worker produces a value of the same size.
        made = client.submit(pattern, 2, BIG, pure=False)
        read = client.submit(array_digest, first, pure=False)
        assert read.result(DEADLINE) == array_digest(pattern(1, BIG))
        held = made.result(DEADLINE)  # mapped here: its segment is locked
        scattered, produced = ref_of(first.key), ref_of(made.key)
        del first, read
        assert poll(lambda: scattered.segment in store._free_lru)
        del made  # its segment cannot go back to the worker: we map it
        assert poll(lambda: produced.segment in store._free_lru)
        # The worker is not given the scattered value's segment instead.
        assert scattered.segment not in store._leased
        del held
        second = client.scatter(pattern(3, BIG), hash=False)
        reused = {scattered.segment, produced.segment}
        assert ref_of(second.key).segment in reused  # not fresh pages
        assert np.array_equal(second.result(DEADLINE), pattern(3, BIG))
