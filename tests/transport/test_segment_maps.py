"""Kept, populated mappings of reused segments and the copy into them.

``transport/segment_maps.py``: a reused segment is written through a shared
mapping made off the write path; the copy may use several threads; a mapping
never outlives its file (that would keep the file's memory from the system).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading

import pytest

from localsched.transport import segment_maps
from localsched.transport.segment_maps import (
    PARALLEL_COPY_FROM,
    BackgroundMapper,
    SegmentMaps,
    copy_into,
)
from localsched.transport.shm import BlobStore, bytes_copied, load
from localsched.transport.shm_pool import WARM_FROM
from tests.runtime.helpers import DEADLINE, poll

np = pytest.importorskip("numpy")

BIG = WARM_FROM + 1


def _mapped_paths() -> set[str]:
    """Files this process maps, as /proc/self/maps names them (a file unlinked
    while mapped ends with " (deleted)")."""
    with open("/proc/self/maps") as f:
        fields = [line.split(None, 5) for line in f]
    return {parts[5].strip() for parts in fields if len(parts) == 6}


def _mapped_under(directory: str) -> set[str]:
    return {p for p in _mapped_paths() if p.startswith(directory)}


def _at(buffer: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buffer)


def _file(tmp_path, nbytes: int) -> str:
    path = str(tmp_path / "segment")
    with open(path, "wb") as f:
        f.truncate(nbytes)
    return path


# -- copy_into ----------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_a_large_copy_by_several_threads_equals_the_source(threads):
    # Not a multiple of a page nor of the thread count: uneven last piece.
    nbytes = PARALLEL_COPY_FROM + 3 * mmap.PAGESIZE + 17
    source = np.random.default_rng(threads).integers(0, 255, nbytes, np.uint8)
    destination = ctypes.create_string_buffer(nbytes + 4096)
    before = bytes_copied()
    copy_into(_at(destination), len(destination), 64, memoryview(source), threads)
    assert bytes_copied() - before == nbytes
    copied = np.frombuffer(destination, np.uint8, nbytes, 64)
    assert np.array_equal(copied, source)
    assert destination.raw[:64] == bytes(64)  # nothing before the offset
    assert not any(destination.raw[64 + nbytes :])  # nor after


def test_a_small_and_a_read_only_source_are_copied_too():
    destination = ctypes.create_string_buffer(1 << 16)
    address, length = _at(destination), len(destination)
    copy_into(address, length, 10, memoryview(b"abc"))  # read-only: a plain copy
    copy_into(address, length, 100, memoryview(bytearray(b"xyz")))
    copy_into(address, length, 200, memoryview(b""))
    assert destination.raw[10:13] == b"abc"
    assert destination.raw[100:103] == b"xyz"


def test_a_copy_that_would_overflow_the_mapping_is_refused():
    destination = ctypes.create_string_buffer(mmap.PAGESIZE)
    with pytest.raises(ValueError, match="overflow"):
        copy_into(_at(destination), mmap.PAGESIZE, 1, memoryview(bytes(4096)))


def test_copy_threads_is_between_one_and_four():
    assert 1 <= segment_maps.copy_threads() <= 4


# -- SegmentMaps ----------------------------------------------------------------


def test_a_mapping_is_handed_out_only_for_the_same_file_and_a_value_that_fits(
    tmp_path,
):
    path = _file(tmp_path, 1 << 20)
    maps = SegmentMaps()
    assert maps.map(path, 1 << 20)
    assert path in maps
    fd = os.open(path, os.O_RDWR)
    try:
        found = maps.acquire(path, fd, 1 << 20)
        assert found is not None
        copy_into(found.address, found.length, 0, memoryview(b"hello"))
        maps.release(found)
        assert maps.acquire(path, fd, (1 << 20) + 1) is None  # too large
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        assert f.read(5) == b"hello"  # shared: the file has it
    # Another file now at the path (same name, other inode): not that mapping.
    os.unlink(path)
    path = _file(tmp_path, 1 << 20)
    fd = os.open(path, os.O_RDWR)
    try:
        assert maps.acquire(path, fd, 10) is None
    finally:
        os.close(fd)
    maps.clear()
    assert not _mapped_under(str(tmp_path))


def test_map_allocates_the_pages_and_refuses_what_is_not_a_regular_file(tmp_path):
    path = _file(tmp_path, 1 << 20)  # a hole: no page allocated
    maps = SegmentMaps()
    assert maps.map(path, 1 << 20)
    assert os.stat(path).st_blocks * 512 >= 1 << 20  # no hole left to SIGBUS on
    link = str(tmp_path / "link")
    os.symlink(path, link)  # a spilled segment's path is a link: never mapped
    assert not maps.map(link, 1 << 20)
    assert not maps.map(str(tmp_path / "missing"), 1 << 20)
    maps.clear()


def test_a_mapping_dropped_while_a_writer_copies_closes_when_it_is_done(tmp_path):
    path = _file(tmp_path, 1 << 20)
    maps = SegmentMaps()
    assert maps.map(path, 1 << 20)
    fd = os.open(path, os.O_RDWR)
    try:
        found = maps.acquire(path, fd, 100)
    finally:
        os.close(fd)
    assert found is not None
    maps.drop([path])
    assert path not in maps
    assert not found.closed
    copy_into(found.address, found.length, 0, memoryview(b"abc"))  # still mapped
    maps.release(found)
    assert found.closed
    assert not _mapped_under(str(tmp_path))


def test_prune_unmaps_unlinked_and_replaced_files_and_the_oldest_go_past_the_cap(
    tmp_path,
):
    maps = SegmentMaps(max_maps=2)
    paths = [str(tmp_path / f"s{i}") for i in range(3)]
    for path in paths:
        with open(path, "wb") as f:
            f.truncate(1 << 16)
        assert maps.map(path, 1 << 16)
    assert paths[0] not in maps  # least recently used, past max_maps
    os.unlink(paths[1])
    os.replace(paths[0], paths[2])  # another file at the path
    assert maps.prune() == 2
    assert not len(maps)
    assert not _mapped_under(str(tmp_path))


def test_the_background_mapper_maps_requests_prunes_and_exits_when_idle(tmp_path):
    path = _file(tmp_path, 1 << 20)
    maps = SegmentMaps()
    mapper = BackgroundMapper(maps)
    mapper.request(path)
    assert poll(lambda: path in maps, DEADLINE)
    os.unlink(path)  # the store unlinked it: the memory must go back
    assert poll(lambda: path not in maps, DEADLINE)
    assert poll(lambda: mapper._thread is None, DEADLINE)  # nothing left: exits
    assert not _mapped_under(str(tmp_path))
    again = _file(tmp_path, 1 << 20)
    mapper.request(again)  # starts again
    assert poll(lambda: again in maps, DEADLINE)
    mapper.stop()
    assert not len(maps)
    assert not any(t.name == "localsched-segment-maps" for t in threading.enumerate())


# -- the store and its writers --------------------------------------------------


def test_a_put_into_a_mapped_free_segment_copies_through_the_mapping():
    with BlobStore() as store:
        first = np.arange(BIG, dtype=np.uint8)
        ref = store.put(first)
        store.release(ref)
        assert store.map_free() == 1
        assert ref.segment in store.maps
        second = np.full(BIG, 3, np.uint8)
        before = bytes_copied()
        again = store.put(second)
        assert again.segment == ref.segment  # reused
        # One copy of each byte, as through pwrite: the buffer once, the stamp
        # and pickle stream once.
        assert BIG <= bytes_copied() - before < BIG + 4096
        assert np.array_equal(load(again), second)
        assert again.segment in store.maps  # kept for the next reuse
        directory = store.directory
    assert not _mapped_under(directory)


def test_the_store_unmaps_a_segment_before_it_goes(tmp_path):
    with BlobStore(max_free_bytes=4 * BIG, spill_directory=str(tmp_path)) as store:
        refs = [store.put(np.ones(BIG, np.uint8)) for _ in range(3)]
        for ref in refs[:2]:
            store.release(ref)
        assert store.map_free() == 2
        store.trim_idle(float("inf"))  # the pool goes back to the system
        assert not len(store.maps)
        # A live segment mapped since it was free, then spilled: unmapped.
        store.release(refs[2])
        store.map_free()
        kept = store.put(np.full(BIG, 5, np.uint8))
        assert kept.segment in store.maps
        assert store.spill(BIG) >= BIG
        assert kept.segment not in store.maps
        assert load(kept)[0] == 5
        assert not {p for p in _mapped_under(store.directory) if "deleted" in p}
        directory = store.directory
    assert not _mapped_under(directory)


def test_a_writer_maps_its_lease_writes_through_it_and_lets_go_once_unlinked():
    store = BlobStore()
    directory = store.directory
    try:
        store.release(store.put(np.ones(BIG, np.uint8)))
        writer = store.writer()
        lease = store.lease(BIG, holder=os.getpid())
        assert lease is not None
        writer.grant(lease)
        assert poll(lambda: lease.segment in writer.maps, DEADLINE)
        value = np.arange(BIG, dtype=np.uint8)
        ref = writer.write(value)
        assert ref.segment == lease.segment
        store.adopt(ref)
        assert np.array_equal(load(ref), value)
        assert lease.segment in writer.maps  # kept: it may be leased back
    finally:
        store.close()  # unlinks everything: the writer's mapper lets go
    assert poll(lambda: not len(writer.maps), DEADLINE)
    assert not _mapped_under(directory)


def test_the_keeper_maps_a_large_segment_as_it_is_freed():
    with BlobStore(idle_seconds=30) as store:
        ref = store.put(np.ones(BIG, np.uint8))
        store.release(ref)
        assert poll(lambda: ref.segment in store.maps, DEADLINE)
        small = store.put(bytearray(1 << 20))
        store.release(small)
        store.map_free()
        assert small.segment not in store.maps  # below WARM_FROM: pwrite is fine


def test_an_own_lease_is_only_a_segment_that_writer_filled_last():
    with BlobStore() as store:
        scattered = store.put(bytearray(100_000))  # the store's own put
        writer = store.writer(owner="w1")
        other = store.writer(owner="w2")
        mine, theirs = writer.write(bytearray(100_000)), other.write(b"x" * 100_000)
        for ref in (mine, theirs):
            assert store.adopt(ref) is False  # fresh files: no lease used
        for ref in (scattered, mine, theirs):
            store.release(ref)
        lease = store.lease(100_000, "w1", own=True)
        assert lease is not None
        assert lease.segment == mine.segment
        assert store.lease(100_000, "w1", own=True) is None  # the rest are not its
        writer.grant(lease)
        again = writer.write(bytearray(100_000))
        assert again.segment == mine.segment
        assert store.adopt(again) is True  # written into its lease
        store.release(again)
        # Filled through a lease, it is still the writer's own.
        assert store.lease(100_000, "w1", own=True).segment == mine.segment
        # Without own, any free segment of the size class.
        assert store.lease(100_000, "w3") is not None


def test_a_copy_that_hashes_feeds_every_byte_in_order():
    from localsched.transport.hashing import content_hasher
    from localsched.transport.segment_files import HASH_CHUNK, _pwrite_all

    nbytes = 3 * HASH_CHUNK + 123
    source = np.random.default_rng(0).integers(0, 255, nbytes, np.uint8)
    expected = content_hasher(b"seed")
    expected.update(source.tobytes())
    for read_only in (False, True):
        value = memoryview(source.tobytes() if read_only else source)
        destination = ctypes.create_string_buffer(nbytes + 64)
        hasher = content_hasher(b"seed")
        copy_into(_at(destination), len(destination), 64, value, hasher=hasher)
        assert hasher.hexdigest() == expected.hexdigest()
        assert destination.raw[64:] == source.tobytes()
    with open(os.devnull, "wb") as sink:
        hasher = content_hasher(b"seed")
        _pwrite_all(sink.fileno(), memoryview(source), 0, hasher)
    assert hasher.hexdigest() == expected.hexdigest()


def test_a_forked_child_does_not_inherit_a_mapping(tmp_path):
    path = _file(tmp_path, 1 << 20)
    maps = SegmentMaps()
    assert maps.map(path, 1 << 20)
    assert path in _mapped_paths()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write, b"1" if path in _mapped_paths() else b"0")
        finally:
            os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"0"
    finally:
        os.close(read)
        os.waitpid(child, 0)
        maps.clear()
