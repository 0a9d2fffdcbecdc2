"""The free pool kept in the background, the copy counter, and the content hash.

The keeper warms segments by recent use and unlinks idle ones
(``transport/shm_pool.py``); ``bytes_copied`` shows each value is copied once.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import threading
import time

import pytest

from localsched.transport import hashing
from localsched.transport.shm import BlobStore, bytes_copied, load
from localsched.transport.shm_pool import WARM_FROM
from tests.runtime.helpers import DEADLINE, poll

np = pytest.importorskip("numpy")

BIG = WARM_FROM + 1  # noted by the keeper; size class 2 * WARM_FROM


def _segments(store: BlobStore) -> list[str]:
    return [n for n in os.listdir(store.directory) if n.startswith(store.prefix)]


def _keeper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "localsched-shm-pool"]


def test_a_large_put_warms_a_segment_of_its_size_in_the_background():
    with BlobStore(idle_seconds=30) as store:
        ref = store.put(np.ones(BIG, np.uint8))
        # Nothing was released, yet a free segment of the class appears.
        assert poll(lambda: store.free_bytes == 2 * WARM_FROM, DEADLINE)
        (warm,) = set(_segments(store)) - {os.path.basename(ref.segment)}
        # It is allocated (fallocate), and the next put of the size takes it.
        assert os.stat(os.path.join(store.directory, warm)).st_blocks * 512 >= BIG
        other = store.put(np.full(BIG, 7, np.uint8))
        assert os.path.basename(other.segment) == warm
        assert load(other)[-1] == 7
        assert load(ref)[-1] == 1


def test_the_pool_is_warmed_for_as_many_values_as_were_written_lately():
    with BlobStore(idle_seconds=30) as store:
        refs = [store.put(np.ones(BIG, np.uint8)) for _ in range(3)]
        assert poll(lambda: store.free_bytes == 3 * 2 * WARM_FROM, DEADLINE)
        assert len(_segments(store)) == 6
        # A put may have taken a warm segment (16 MiB) or a fresh one (BIG).
        released = sum(os.stat(ref.segment).st_size for ref in refs)
        for ref in refs:
            store.release(ref)
        assert store.free_bytes == 3 * 2 * WARM_FROM + released  # pooled too


def test_idle_free_segments_are_unlinked_and_small_values_warm_nothing():
    with BlobStore(idle_seconds=0.3) as store:
        store.release(store.put(np.ones(BIG, np.uint8)))
        store.release(store.put(np.ones(1 << 20, np.uint8)))  # below WARM_FROM
        assert store.free_bytes >= BIG + (1 << 20)
        # Unused for idle_seconds: all back to the operating system.
        assert poll(lambda: not _segments(store), DEADLINE)
        assert store.free_bytes == 0
        assert store.memory_bytes == 0


def test_trim_idle_unlinks_only_what_was_freed_before_the_time():
    with BlobStore() as store:  # no keeper: the calls are the test's
        first = store.put(bytearray(100_000))
        store.release(first)
        between = time.monotonic()
        second = store.put(bytearray(300_000))
        store.release(second)
        assert store.trim_idle(between) == 1
        assert _segments(store) == [os.path.basename(second.segment)]
        assert store.trim_idle(time.monotonic() + 1) == 1
        assert _segments(store) == []
        assert store.free_bytes == 0


def test_close_stops_the_keeper_and_leaves_no_segment():
    before = len(_keeper_threads())
    store = BlobStore(idle_seconds=30)
    assert len(_keeper_threads()) == before + 1  # it starts with the store
    store.put(np.ones(BIG, np.uint8))
    assert poll(lambda: store.free_bytes > 0, DEADLINE)  # the keeper ran
    store.close()
    assert len(_keeper_threads()) == before
    assert not os.path.lexists(store.directory)


def test_a_store_without_idle_seconds_has_no_keeper():
    before = len(_keeper_threads())
    with BlobStore() as store:
        ref = store.put(np.ones(BIG, np.uint8))
        store.release(ref)
        assert len(_keeper_threads()) == before
        assert store.free_bytes == ref.nbytes  # the released value; none warmed


def test_a_store_that_is_garbage_stops_its_keeper():
    before = len(_keeper_threads())
    store = BlobStore(idle_seconds=0.2)
    store.put(np.ones(BIG, np.uint8))
    directory = store.directory
    del store
    gc.collect()
    assert poll(lambda: len(_keeper_threads()) == before, DEADLINE)
    assert not os.path.lexists(directory)


def test_the_keeper_stops_at_the_cap_on_free_bytes():
    with BlobStore(idle_seconds=30, max_free_bytes=2 * WARM_FROM) as store:
        refs = [store.put(np.ones(BIG, np.uint8)) for _ in range(3)]
        assert poll(lambda: store.free_bytes == 2 * WARM_FROM, DEADLINE)
        store.release(refs[0])  # pooled, and the oldest warm ones go instead
        more = store.put(np.ones(BIG, np.uint8))  # the keeper is woken again
        wanted = store._keeper.wanted(time.monotonic())
        assert wanted == {2 * WARM_FROM: 4}
        # It never warms past the cap: three live values and at most 2 free.
        assert not poll(lambda: store.free_bytes > store.max_free_bytes, 0.5)
        assert len(_segments(store)) <= 3 + 2
        assert load(more)[0] == 1


def test_a_value_is_copied_once_into_memory_and_never_out_by_load():
    array = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    with BlobStore() as store:
        before = bytes_copied()
        ref = store.put(array)
        written = bytes_copied() - before
        # The buffer once, plus the stamp and the pickle stream (a few hundred).
        assert array.nbytes <= written < array.nbytes + 4096
        before = bytes_copied()
        loaded = load(ref)
        assert (loaded == array).all()
        assert bytes_copied() - before == ref.header[0] + ref.header[1]
        assert ref.header[1] < 4096  # only the pickle stream was read


def test_content_hasher_is_xxh3_when_installed_and_blake2b_otherwise(monkeypatch):
    xxhash = pytest.importorskip("xxhash")
    data = np.arange(1000).tobytes()
    hasher = hashing.content_hasher(b"seed")
    hasher.update(data)
    assert hasher.hexdigest() == xxhash.xxh3_128(b"seed" + data).hexdigest()
    monkeypatch.setattr(hashing, "xxhash", None)
    fallback = hashing.content_hasher(b"seed")
    fallback.update(data)
    expected = hashlib.blake2b(b"seed" + data, digest_size=16).hexdigest()
    assert fallback.hexdigest() == expected


def test_a_large_scatter_is_hashed_as_it_is_written(monkeypatch):
    from localsched.client import graph
    from localsched.transport import blob_sink

    big = np.arange(graph.HASH_AS_WRITTEN_FROM // 8, dtype=np.float64)
    hashed_after: list[object] = []
    original = graph.hash_args

    def recording_hash_args(*args: object) -> str:
        hashed_after.append(args)
        return original(*args)

    monkeypatch.setattr(graph, "hash_args", recording_hash_args)
    with BlobStore() as store:

        def scatter(value: object) -> tuple[str, object]:
            key, ref = graph.prepare_scatter(value, store.serialize, True).pairs[0]
            assert np.array_equal(load(ref), value)  # written whole
            store.release(ref)
            return key, ref

        key, _ = scatter(big)
        assert not hashed_after  # no second pass: hashed while copied
        # Same data, same key: written with pwrite, then through the pooled
        # segment's mapping.
        assert scatter(big.copy())[0] == key
        assert store.map_free() >= 1
        again, reused = scatter(big.copy())
        assert again == key
        assert reused.segment in store.maps
        changed = big.copy()
        changed[-1] = -1
        assert scatter(changed)[0] != key
        # The same bytes as another dtype or shape are another value.
        assert scatter(big.view(np.int64))[0] != key
        assert scatter(big.reshape(2, -1))[0] != key
        # Below the size: hashed after the write.
        small_key, _ = scatter(big[:100_000])
        assert len(hashed_after) == 1
        assert small_key == f"ndarray-{original('scatter', (big[:100_000],), {})}"

        # A write retried after ENOSPC hashes from the start again.
        real_write, calls = blob_sink._write_blob, []

        def full_once(fd, header, buffers, spans, mapping=None, hasher=None):
            calls.append(1)
            if len(calls) == 1:
                if hasher is not None:
                    hasher.update(b"half a value")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, header, buffers, spans, mapping, hasher)

        monkeypatch.setattr(blob_sink, "_write_blob", full_once)
        assert scatter(big.copy())[0] == key
        assert len(calls) == 2


def test_warming_waits_until_large_writes_stop(monkeypatch):
    from localsched.transport import shm_pool

    monkeypatch.setattr(shm_pool, "QUIET_SECONDS", 2.0)
    with BlobStore(idle_seconds=30) as store:
        store.put(np.ones(BIG, np.uint8))
        keeper = store._keeper
        assert keeper is not None
        pause = threading.Event()
        until = time.monotonic() + 1.5
        while time.monotonic() < until:  # a worker's large results keep coming
            keeper.busy()
            assert store.free_bytes == 0
            pause.wait(0.05)
        # Quiet now: the segment is warmed then.
        assert poll(lambda: store.free_bytes == 2 * WARM_FROM, DEADLINE)
