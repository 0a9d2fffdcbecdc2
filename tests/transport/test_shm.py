from __future__ import annotations

import errno
import gc
import mmap
import multiprocessing
import os
import pickle
import stat
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor

import pytest

from localsched.transport import segment_files, shm
from localsched.transport.shm import (
    BlobRef,
    BlobStore,
    BlobWriter,
    SharedMemoryWarning,
    StaleBlobError,
    dumps_inline,
    load,
    sweep_stale_segments,
)

DEAD_PID = 2**31 - 1  # above any pid_max, so never a live process


def _files_with_prefix(prefix: str, *directories: str) -> list[str]:
    return [
        name
        for directory in directories
        if os.path.isdir(directory)
        for name in os.listdir(directory)
        if name.startswith(prefix)
    ]


@pytest.fixture
def store():
    blob_store = BlobStore()
    yield blob_store
    blob_store.close()
    assert not os.path.lexists(blob_store.directory)


@pytest.fixture
def np():
    return pytest.importorskip("numpy")


@pytest.fixture(scope="module")
def spawn_executor():
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as executor:
        yield executor


def test_small_object_round_trips(store):
    value = {"a": 1, "b": [1.5, "x", None]}
    assert load(store.put(value)) == value


def test_large_object_without_buffers_round_trips(store):
    value = list(range(200_000))
    ref = store.put(value)
    assert ref.buffers == ()
    assert load(ref) == value


def test_serialize_returns_inline_bytes_below_threshold(store):
    payload = store.serialize({"k": "v"})
    assert isinstance(payload, bytes)
    assert load(payload) == {"k": "v"}


def test_serialize_returns_ref_at_threshold(store):
    value = b"x" * 1000
    assert isinstance(store.serialize(value, threshold=100), BlobRef)
    assert load(store.serialize(value, threshold=100)) == value


def test_dumps_inline_is_a_plain_pickle():
    assert pickle.loads(dumps_inline((1, "two"))) == (1, "two")


def test_blob_ref_pickles_small(store):
    ref = store.put(bytearray(1 << 20))
    assert len(pickle.dumps(ref, protocol=5)) < 256


def test_array_comes_back_equal_and_writable(store, np):
    array = np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000)
    loaded = load(store.put(array))
    assert loaded.flags.writeable
    np.testing.assert_array_equal(loaded, array)


def test_write_to_loaded_array_does_not_change_another_load(store, np):
    ref = store.put(np.zeros(500_000))
    first = load(ref)
    first[:] = 7.0
    assert not load(ref).any()


def test_loaded_array_is_a_view_of_the_mapping(store, np):
    loaded = load(store.put(np.ones(100_000)))
    base = loaded
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview)
    assert isinstance(base.obj, mmap.mmap)


def test_fortran_empty_and_several_arrays_round_trip(store, np):
    value = {
        "f": np.asfortranarray(np.arange(60.0).reshape(3, 4, 5)),
        "empty": np.empty((0, 3)),
        "ints": np.arange(10_000, dtype=np.int16),
    }
    loaded = load(store.put(value))
    assert loaded["f"].flags.f_contiguous
    for key, array in value.items():
        np.testing.assert_array_equal(loaded[key], array)


def test_small_array_serializes_inline_and_stays_writable(store, np):
    payload = store.serialize(np.arange(10))
    assert isinstance(payload, bytes)
    loaded = load(payload)
    assert loaded.flags.writeable
    np.testing.assert_array_equal(loaded, np.arange(10))


def test_loaded_array_survives_owner_unlinking_the_segment(np):
    blob_store = BlobStore()
    loaded = load(blob_store.put(np.arange(300_000)))
    gc.collect()
    blob_store.close()
    np.testing.assert_array_equal(loaded, np.arange(300_000))


def test_segment_file_mode_is_0600(store):
    ref = store.put(bytearray(100_000))
    assert stat.S_IMODE(os.stat(ref.segment).st_mode) == 0o600


def test_release_then_put_reuses_the_segment(store):
    ref = store.put(bytearray(100_000))
    store.release(ref)
    assert store.put(bytearray(90_000)).segment == ref.segment


def test_segment_is_not_reused_while_a_reader_maps_it(store, np):
    ref = store.put(np.ones(100_000))
    held = load(ref)
    store.release(ref)
    other = store.put(np.full(100_000, 5.0))
    assert other.segment != ref.segment
    assert (held == 1.0).all()


def test_segment_is_reused_once_the_reader_drops_its_array(store, np):
    ref = store.put(np.ones(100_000))
    held = load(ref)
    store.release(ref)
    store.release(store.put(np.ones(100_000)))  # a second free segment, newer
    del held
    gc.collect()
    reused = {store.put(np.ones(100_000)).segment for _ in range(2)}
    assert ref.segment in reused


def test_load_of_a_reused_segment_raises_stale(store):
    ref = store.put(bytearray(100_000))
    store.release(ref)
    store.put(bytearray(100_000))
    with pytest.raises(StaleBlobError):
        load(ref)


def test_load_of_an_unlinked_segment_raises_stale():
    blob_store = BlobStore()
    ref = blob_store.put(bytearray(100_000))
    blob_store.close()
    with pytest.raises(StaleBlobError):
        load(ref)


def test_double_release_raises_key_error(store):
    ref = store.put(bytearray(100_000))
    store.release(ref)
    with pytest.raises(KeyError):
        store.release(ref)


def test_free_list_is_capped_and_excess_is_unlinked():
    with BlobStore(max_free_bytes=200_000) as blob_store:
        refs = [blob_store.put(bytearray(150_000)) for _ in range(2)]
        for ref in refs:
            blob_store.release(ref)
        assert blob_store.free_bytes <= 200_000
        assert not os.path.exists(refs[0].segment)
        assert os.path.exists(refs[1].segment)


def test_release_of_a_segment_above_the_cap_keeps_the_pool():
    with BlobStore(max_free_bytes=300_000) as blob_store:
        small = blob_store.put(bytearray(100_000))
        big = blob_store.put(bytearray(400_000))
        blob_store.release(small)
        blob_store.release(big)
        assert not os.path.exists(big.segment)
        assert os.path.exists(small.segment)


def test_close_leaves_nothing_with_the_store_prefix():
    blob_store = BlobStore()
    blob_store.release(blob_store.put(bytearray(100_000)))  # in the free list
    blob_store.put(bytearray(100_000))  # live
    blob_store.writer().write(bytearray(100_000))  # written, never adopted
    blob_store.prewarm(1 << 20)
    blob_store.close()
    assert _files_with_prefix(blob_store.prefix, blob_store.directory) == []


def test_put_after_close_raises(store):
    store.close()
    with pytest.raises(RuntimeError):
        store.put(b"x")


def test_prewarm_creates_segments_that_put_then_uses(store):
    assert store.prewarm(1 << 20) == 1
    (prewarmed,) = _files_with_prefix(store.prefix, store.directory)
    assert store.free_bytes == 1 << 20
    ref = store.put(bytearray(800_000))
    assert os.path.basename(ref.segment) == prewarmed


def test_prewarm_stops_at_the_free_bytes_cap():
    with BlobStore(max_free_bytes=1 << 20) as blob_store:
        assert blob_store.prewarm(8 << 20, segment_size=1 << 19) == 2
        assert blob_store.free_bytes == 1 << 20


def test_prewarm_in_background_thread_while_puts_run(store, np):
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def churn(seed: int) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(50):
                array = np.full(20_000 + i, seed + i)
                ref = store.put(array)
                np.testing.assert_array_equal(load(ref), array)
                store.release(ref)
        except BaseException as exc:
            errors.append(exc)

    def warm() -> None:
        barrier.wait(timeout=10)
        store.prewarm(16 << 20, segment_size=1 << 18)

    threads = [threading.Thread(target=churn, args=(s,)) for s in (1, 1000)]
    threads.append(threading.Thread(target=warm))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert not any(thread.is_alive() for thread in threads)


def test_writer_blob_is_adopted_loaded_and_pooled(store, np):
    ref = store.writer().write(np.arange(50_000))
    store.adopt(ref)
    np.testing.assert_array_equal(load(ref), np.arange(50_000))
    store.release(ref)
    assert store.put(np.arange(50_000)).segment == ref.segment


def test_writer_uses_a_leased_segment(store):
    store.release(store.put(bytearray(100_000)))
    lease = store.lease(100_000, holder=os.getpid())
    assert lease is not None
    writer = store.writer()
    writer.grant(lease)
    ref = writer.write(bytearray(120_000))
    assert ref.segment == lease.segment
    store.adopt(ref)
    assert load(ref) == bytearray(120_000)


def test_lease_returns_none_when_nothing_is_free(store):
    assert store.lease(100_000, holder=1) is None


def test_reclaim_returns_leases_and_unlinks_unadopted_segments(store):
    store.release(store.put(bytearray(100_000)))
    lease = store.lease(100_000, holder=os.getpid())
    orphan = store.writer().write(bytearray(100_000))  # named with our pid
    store.reclaim(os.getpid())
    assert not os.path.exists(orphan.segment)
    assert store.put(bytearray(100_000)).segment == lease.segment


def test_reclaim_keeps_adopted_segments(store):
    ref = store.writer().write(bytearray(100_000))
    store.adopt(ref)
    store.reclaim(os.getpid())
    assert load(ref) == bytearray(100_000)


def test_writers_of_one_process_name_segments_by_owner(store):
    # processes=False: worker threads share a pid. Each writer has its own
    # owner, so their fresh segments never share a name, and one worker's
    # reclaim (it left) takes its own segments and leases only.
    first, second = store.writer("t1"), store.writer("t2")
    one, two = first.write(bytearray(100_000)), second.write(bytearray(100_000))
    assert os.path.basename(one.segment) == f"{store.prefix}t1.0"
    assert os.path.basename(two.segment) == f"{store.prefix}t2.0"
    store.release(store.put(bytearray(100_000)))
    lease = store.lease(100_000, holder="t2")
    store.reclaim("t1")
    assert not os.path.exists(one.segment)
    assert load(two) == bytearray(100_000)
    assert lease is not None
    assert os.path.exists(lease.segment)
    assert store.put(bytearray(100_000)).segment != lease.segment  # still t2's
    assert pickle.loads(pickle.dumps(second)).owner == "t2"


def test_adopt_rejects_a_segment_of_another_store(store):
    with BlobStore() as other:
        ref = other.put(bytearray(100_000))
        with pytest.raises(ValueError, match="not a segment of this store"):
            store.adopt(ref)


def test_writer_is_picklable_without_its_leases(store):
    writer = store.writer()
    clone = pickle.loads(pickle.dumps(writer))
    assert (clone.prefix, clone.directory) == (writer.prefix, writer.directory)


def test_sweep_removes_dead_pid_segments_and_keeps_live_ones():
    token = os.urandom(4).hex()
    dead = os.path.join(shm.SHM_DIR, f"localsched-{DEAD_PID}-{token}-0")
    live = os.path.join(shm.SHM_DIR, f"localsched-{os.getpid()}-{token}-0")
    for path in (dead, live):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    try:
        sweep_stale_segments()
        assert not os.path.exists(dead)
        assert os.path.exists(live)
    finally:
        for path in (dead, live):
            if os.path.exists(path):
                os.unlink(path)


def test_sweep_ignores_files_that_are_not_segments(tmp_path):
    unrelated = tmp_path / f"other-{DEAD_PID}-x"
    unrelated.write_bytes(b"")
    assert sweep_stale_segments([str(tmp_path)]) == []
    assert unrelated.exists()


def test_falls_back_to_private_tempdir_when_shm_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(segment_files, "SHM_DIR", str(tmp_path / "no-shm"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(segment_files, "_fallback_warned", False)
    with pytest.warns(SharedMemoryWarning):
        blob_store = BlobStore()
    with blob_store:
        assert blob_store.directory.startswith(str(tmp_path))
        assert stat.S_IMODE(os.stat(blob_store.directory).st_mode) == 0o700
        assert load(blob_store.put(bytearray(100_000))) == bytearray(100_000)
    assert not os.path.exists(blob_store.directory)
    assert os.listdir(tmp_path) == []


def test_full_shm_evicts_the_pool_then_falls_back_to_disk(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(segment_files, "_fallback_warned", False)
    real_pwrite = os.pwrite
    failures = iter([True, True])

    def full_pwrite(fd: int, data: object, offset: int) -> int:
        if next(failures, False):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    with BlobStore() as blob_store:
        blob_store.release(blob_store.put(bytearray(100_000)))
        monkeypatch.setattr(os, "pwrite", full_pwrite)
        with pytest.warns(SharedMemoryWarning):
            ref = blob_store.put(bytearray(100_000))
        assert blob_store.free_bytes == 0
        assert ref.segment.startswith(str(tmp_path))
        assert load(ref) == bytearray(100_000)
    assert _files_with_prefix(blob_store.prefix, shm.SHM_DIR, str(tmp_path)) == []


def test_child_process_loads_a_blob_written_by_the_parent(store, np, spawn_executor):
    array = np.random.default_rng(0).standard_normal((500, 300))
    ref = store.put(array)
    np.testing.assert_array_equal(spawn_executor.submit(load, ref).result(60), array)


def test_parent_adopts_and_loads_a_blob_written_by_a_child(store, np, spawn_executor):
    array = np.arange(250_000, dtype=np.int32)
    ref = spawn_executor.submit(BlobWriter.write, store.writer(), array).result(60)
    assert f"-{os.getpid()}-" in ref.segment  # named after the owner, so sweep works
    store.adopt(ref)
    loaded = load(ref)
    np.testing.assert_array_equal(loaded, array)
    assert loaded.flags.writeable
