"""Spilling shared-memory values to disk (``BlobStore.spill``, ``spill.py``), and
the store's memory accounting and limits the memory monitor relies on."""

from __future__ import annotations

import errno
import multiprocessing
import os
import stat
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor

import pytest

from localsched.transport import janitor, segment_files, shm, spill
from localsched.transport.shm import (
    BlobStore,
    BlobWriter,
    SharedMemoryWarning,
    load,
    sweep_stale_segments,
)

np = pytest.importorskip("numpy")

MiB = 1 << 20


def _ours(prefix: str, *directories: str) -> list[str]:
    return sorted(
        os.path.join(directory, name)
        for directory in directories
        if os.path.isdir(directory)
        for name in os.listdir(directory)
        if name.startswith(prefix)
    )


@pytest.fixture
def store(tmp_path):
    blob_store = BlobStore(spill_directory=str(tmp_path))
    yield blob_store
    blob_store.close()
    assert not os.path.lexists(blob_store.directory)
    assert os.listdir(tmp_path) == []  # the spill directory went too


def arrays(n: int, size: int = MiB) -> list[np.ndarray]:
    return [np.full(size // 8, i, dtype=np.float64) for i in range(n)]


def test_spilled_value_reads_back_identical_from_disk(store):
    values = arrays(3)
    refs = [store.put(v) for v in values]
    assert store.spill(1) >= MiB
    assert os.path.islink(refs[0].segment)  # the oldest went first
    copy = os.path.realpath(refs[0].segment)
    assert copy.startswith(store.spill_directory)
    assert not spill.is_memory_backed(os.path.dirname(copy))
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
    for ref, value in zip(refs, values, strict=True):
        loaded = load(ref)
        np.testing.assert_array_equal(loaded, value)
        loaded[:] = -1  # writable, private: the next read is unchanged
        np.testing.assert_array_equal(load(ref), value)


def test_spill_takes_least_recently_used_first(store):
    refs = [store.put(v) for v in arrays(4)]
    store.touch(refs[0])
    store.touch(refs[2])
    store.spill(2 * MiB)  # two segments: 1 and 3, never used since written
    spilled = [i for i, ref in enumerate(refs) if os.path.islink(ref.segment)]
    assert spilled == [1, 3]
    store.spill(MiB)
    assert os.path.islink(refs[0].segment)
    assert not os.path.islink(refs[2].segment)


def test_spill_gives_back_the_pool_before_live_values(store):
    store.release(store.put(arrays(1)[0]))
    live = store.put(arrays(1, size=2 * MiB)[0])  # another size class: no reuse
    assert store.free_bytes > 0
    freed = store.spill(1)
    assert freed > 0
    assert store.free_bytes == 0
    assert not os.path.islink(live.segment)
    assert store.spill_count == 0


def test_memory_accounting_follows_put_spill_and_release(store):
    refs = [store.put(v) for v in arrays(3)]
    written = store.memory_bytes
    assert written >= 3 * MiB
    assert store.spillable_bytes == written
    freed = store.spill(MiB)
    assert store.memory_bytes == written - freed
    assert store.spilled_bytes == freed
    for ref in refs:
        store.release(ref)
    assert store.spilled_bytes == 0
    # Released values not spilled wait in the pool: still memory, still freeable.
    assert store.memory_bytes == store.free_bytes == store.spillable_bytes


def test_releasing_a_spilled_value_removes_link_and_copy(store):
    ref = store.put(arrays(1)[0])
    store.spill(1)
    copy = os.path.realpath(ref.segment)
    store.release(ref)
    assert not os.path.lexists(ref.segment)
    assert not os.path.exists(copy)
    assert store.free_bytes == 0  # a spilled segment is never reused


def test_ref_sent_before_the_spill_still_loads_in_another_process(store):
    value = np.arange(300_000, dtype=np.int64)
    ref = store.put(value)  # as if already inside a task message
    store.spill(1)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as executor:
        loaded = executor.submit(load, ref).result(60)
    np.testing.assert_array_equal(loaded, value)


def test_readers_racing_a_spill_always_see_the_value(store):
    values = arrays(6, size=2 * MiB)
    refs = [store.put(v) for v in values]
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for ref, value in zip(refs, values, strict=True):
                try:
                    assert float(load(ref)[-1]) == float(value[-1])
                except BaseException as exc:  # report in the main thread
                    errors.append(exc)
                    return

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for _ in refs:
            store.spill(MiB)  # one segment at a time, under the readers' feet
    finally:
        stop.set()
        for reader in readers:
            reader.join(30)
    assert errors == []
    assert all(os.path.islink(ref.segment) for ref in refs)


def test_reader_mapping_before_the_spill_keeps_its_data(store):
    value = np.arange(200_000, dtype=np.float64)
    ref = store.put(value)
    early = load(ref)
    store.spill(1)
    np.testing.assert_array_equal(early, value)
    np.testing.assert_array_equal(load(ref), value)


@pytest.mark.parametrize("reuse", [False, True], ids=["released", "reused"])
def test_value_released_during_its_copy_is_not_spilled(store, monkeypatch, reuse):
    ref = store.put(arrays(1)[0])
    other = np.full(MiB // 8, 42.0)
    real_copy = shm.copy_segment
    reused = []

    def copy_then_release(path: str, directory: str) -> str:
        copy = real_copy(path, directory)
        store.release(ref)  # as a client thread may, while the copy ran
        if reuse:
            reused.append(store.put(other))  # same size class: same segment
        return copy

    monkeypatch.setattr(shm, "copy_segment", copy_then_release)
    assert store.spill(1) == 0
    assert store.spill_count == 0
    assert os.listdir(store.spill_directory) == []
    assert not os.path.islink(ref.segment)
    if reuse:
        assert reused[0].segment == ref.segment
        np.testing.assert_array_equal(load(reused[0]), other)


def test_value_released_and_unlinked_before_its_copy_is_skipped(store, monkeypatch):
    refs = [store.put(v) for v in arrays(2)]
    store.max_free_bytes = 0  # a release unlinks the segment
    real_copy = shm.copy_segment

    def release_first(path: str, directory: str) -> str:
        if path == refs[0].segment and os.path.exists(path):
            store.release(refs[0])  # as a client thread may, just before
        return real_copy(path, directory)

    monkeypatch.setattr(shm, "copy_segment", release_first)
    assert store.spill(2 * MiB) > MiB  # no error: the next value was spilled
    assert os.path.islink(refs[1].segment)
    assert store.spill_count == 1


def test_spill_stops_at_its_time_limit_after_one_value(store):
    refs = [store.put(v) for v in arrays(3)]
    assert MiB < store.spill(10 * MiB, time_limit=0.0) < 2 * MiB  # one value
    assert [os.path.islink(ref.segment) for ref in refs] == [True, False, False]


def test_failed_spill_changes_nothing(store, monkeypatch):
    value = arrays(1)[0]
    ref = store.put(value)

    def disk_full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "sendfile", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.spill(1)
    assert not os.path.islink(ref.segment)
    assert os.listdir(store.spill_directory) == []
    assert store.spill_count == 0
    np.testing.assert_array_equal(load(ref), value)


def test_spill_on_a_disk_backed_store_does_nothing(tmp_path):
    with BlobStore(directory=str(tmp_path)) as disk_store:
        disk_store.put(arrays(1)[0])
        assert disk_store.memory_bytes == 0
        assert disk_store.spill(MiB) == 0


def test_close_removes_spilled_copies_and_links(tmp_path):
    blob_store = BlobStore(spill_directory=str(tmp_path))
    refs = [blob_store.put(v) for v in arrays(2)]
    blob_store.spill(10 * MiB)
    copies = [os.path.realpath(ref.segment) for ref in refs]
    assert all(os.path.exists(copy) for copy in copies)
    blob_store.close()
    assert not any(os.path.lexists(p) for p in [*copies, *(r.segment for r in refs)])


def test_janitor_removes_spilled_copies_too(tmp_path):
    with BlobStore(spill_directory=str(tmp_path)) as blob_store:
        ref = blob_store.put(arrays(1)[0])
        blob_store.spill(1)
        copy = os.path.realpath(ref.segment)
        removed = janitor.remove_segments(blob_store.directory)
        spill_directory = blob_store.spill_directory
        assert {ref.segment, copy, spill_directory} <= set(removed)
        assert not os.path.exists(copy)
        assert not os.path.exists(spill_directory)


def test_sweep_removes_spilled_segments_of_dead_stores(tmp_path):
    dead = 2**31 - 1
    token = os.urandom(4).hex()
    copy = tmp_path / f"localsched-{dead}-{token}-0"
    copy.write_bytes(b"x")
    link = os.path.join(segment_files.SHM_DIR, copy.name)
    os.symlink(copy, link)
    try:
        removed = sweep_stale_segments([segment_files.SHM_DIR, str(tmp_path)])
        assert set(removed) == {link, str(copy)}
    finally:
        for path in (link, copy):
            if os.path.lexists(path):
                os.unlink(path)


def test_reclaim_keeps_a_spilled_value_written_by_a_worker(store):
    value = np.arange(100_000, dtype=np.int64)
    ref = BlobWriter(store.prefix, store.directory).write(value)
    store.adopt(ref)
    store.spill(1)
    store.reclaim(os.getpid())  # the writer (this pid) "exited"
    np.testing.assert_array_equal(load(ref), value)


def test_is_memory_backed():
    assert spill.is_memory_backed("/dev/shm")
    assert not spill.is_memory_backed(os.path.dirname(os.path.abspath(__file__)))


def test_spill_directory_is_private_and_ignores_a_squatted_old_name(tmp_path):
    # The old fixed name, made first by another user, used to block spilling.
    squatted = tmp_path / f"localsched-spill-{os.getuid()}"
    squatted.mkdir()
    os.chown(squatted, 65534, 65534)
    with BlobStore(spill_directory=str(tmp_path)) as blob_store:
        ref = blob_store.put(arrays(1)[0])
        assert blob_store.spill(1) >= MiB
        spill_directory = blob_store.spill_directory
        assert os.path.dirname(spill_directory) == str(tmp_path)
        assert spill_directory != str(squatted)
        st = os.lstat(spill_directory)
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o700
        assert os.path.realpath(ref.segment).startswith(spill_directory + "/")
    assert os.listdir(tmp_path) == [squatted.name]


# -- limits ------------------------------------------------------------------------


def test_value_larger_than_available_memory_fails_clearly(store, monkeypatch):
    monkeypatch.setattr(segment_files, "_memory_available", lambda: 10 * MiB)
    with pytest.raises(
        MemoryError, match=r"takes 16\.00 MiB, more than the 10\.00 MiB"
    ):
        store.put(np.zeros(2 * MiB))
    writer = store.writer()
    with pytest.raises(MemoryError, match="not copied into shared memory"):
        writer.write(np.zeros(2 * MiB))
    assert _ours(store.prefix, store.directory) == []


def test_memory_available_reads_meminfo():
    available = segment_files._memory_available()
    assert 0 < available < 1 << 50


def test_small_dev_shm_falls_back_to_disk_with_one_warning(monkeypatch, tmp_path):
    real_free_space = segment_files._free_space

    def small_shm(directory: str) -> int:
        if directory == segment_files.SHM_DIR:
            return 32 * MiB  # Docker gives 64 MB, some of it used
        return real_free_space(directory)

    monkeypatch.setattr(segment_files, "_free_space", small_shm)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(segment_files, "_fallback_warned", False)
    with pytest.warns(SharedMemoryWarning) as caught:
        first, second = BlobStore(), BlobStore()
    with first, second:
        assert first.directory.startswith(str(tmp_path))
        assert first.memory_bytes == 0
        assert load(first.put(bytearray(MiB))) == bytearray(MiB)
    assert len(caught) == 1
    assert "less than 134217728 bytes free" in str(caught[0].message)


def test_worker_falling_back_is_reported_once_by_the_store(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(segment_files, "_fallback_warned", False)
    real_pwrite = os.pwrite

    def full(fd: int, data: object, offset: int) -> int:
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    with BlobStore() as blob_store:
        writer = blob_store.writer()
        monkeypatch.setattr(os, "pwrite", full)
        refs = [writer.write(bytearray(MiB)) for _ in range(3)]  # no warning here
        monkeypatch.setattr(os, "pwrite", real_pwrite)
        with pytest.warns(SharedMemoryWarning) as caught:
            [blob_store.adopt(ref) for ref in refs]
        assert len(caught) == 1
        assert all(ref.segment.startswith(str(tmp_path)) for ref in refs)
        assert blob_store.memory_bytes == 0  # on disk: not memory
        for ref in refs:
            blob_store.release(ref)
        assert blob_store.free_bytes == 0  # not pooled either
