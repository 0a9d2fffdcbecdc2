"""Throughput of the shared-memory data plane for one 200 MB numpy array.

Run: ``PYTHONPATH=. python benchmarks/bench_shm.py [--mb 200] [--repeat 5]``.
Prints GB/s (1e9 bytes per second), best and median of the repeats:

- put into a fresh segment, a prewarmed one and a reused one (same process);
- load alone (map and unpickle: lazy, touches no page) and load plus reading
  one byte per page (which pays the page faults); a 1 MiB put+load+release cycle;
- the same array handed to a child process (spawn) through a multiprocessing Pipe
  versus as a BlobRef over that Pipe, end to end: the child has the array and has
  touched every page before it acknowledges;
- where a scatter and a reader spend (``--profile``): hashing the value for its
  key (BLAKE2b, XXH3-128), writing into fresh, ``fallocate``-d and reused
  pages, with one thread and two, and reading every page of a load as it is
  (lazy faults), after ``MADV_POPULATE_READ``, and with ``MAP_POPULATE``;
- spilling: moving the value from /dev/shm to a disk file (``BlobStore.spill``:
  copy in the kernel, then swap the segment for a link), and load plus touch of
  the spilled value (page cache, warm: it was just written).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from typing import TYPE_CHECKING

import numpy as np

from localsched.transport.shm import BlobStore, load

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

PAGE = 4096


def touch(array: np.ndarray) -> int:
    return int(array.reshape(-1).view(np.uint8)[::PAGE].sum())


def child(conn: Connection) -> None:
    while True:
        message = conn.recv()
        if message is None:
            return
        array = load(message) if not isinstance(message, np.ndarray) else message
        conn.send(touch(array))


def rate(nbytes: int, seconds: list[float]) -> str:
    best = nbytes / min(seconds) / 1e9
    median = nbytes / statistics.median(seconds) / 1e9
    return f"{best:6.2f} GB/s best, {median:6.2f} median"


def timed(function: Callable[[], object], repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def time_puts(store: BlobStore, array: np.ndarray, repeat: int) -> list[float]:
    """Time put alone; release (which may unlink) happens outside the clock."""
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        ref = store.put(array)
        seconds.append(time.perf_counter() - start)
        store.release(ref)
    return seconds


def bench_in_process(array: np.ndarray, repeat: int) -> None:
    nbytes = array.nbytes
    with BlobStore(max_free_bytes=0) as store:  # cap 0: every release unlinks
        fresh = time_puts(store, array, repeat)
    print(f"put, fresh segment      {rate(nbytes, fresh)}")
    prewarmed = []
    for _ in range(repeat):
        with BlobStore() as store:
            store.prewarm(nbytes)
            prewarmed += time_puts(store, array, 1)
    print(f"put, prewarmed segment  {rate(nbytes, prewarmed)}")
    with BlobStore() as store:
        store.release(store.put(array))
        reused = time_puts(store, array, repeat)
        print(f"put, reused segment     {rate(nbytes, reused)}")
        ref = store.put(array)
        lazy = timed(lambda: load(ref), repeat)
        print(f"load (map, lazy)        {min(lazy) * 1e6:8.1f} us best")
        loaded = timed(lambda: touch(load(ref)), repeat)
        print(f"load + touch each page  {rate(nbytes, loaded)}")
        small = array[: 1 << 20]
        cycles = timed(lambda: small_cycle(store, small), 200)
        print(f"1 MiB put+load+release  {min(cycles) * 1e6:8.1f} us best")


def small_cycle(store: BlobStore, array: np.ndarray) -> None:
    ref = store.put(array)
    load(ref)
    store.release(ref)


def bench_spill(array: np.ndarray, repeat: int) -> None:
    nbytes = array.nbytes
    spills, reads = [], []
    with tempfile.TemporaryDirectory() as base:
        for _ in range(repeat):
            with BlobStore(spill_directory=base) as store:
                ref = store.put(array)
                start = time.perf_counter()
                store.spill(1)
                spills.append(time.perf_counter() - start)
                reads += timed(lambda: touch(load(ref)), 1)  # noqa: B023 - called now
    print(f"spill to disk           {rate(nbytes, spills)}  ({base})")
    print(f"load + touch, spilled   {rate(nbytes, reads)}")


def bench_to_child(array: np.ndarray, repeat: int) -> None:
    nbytes, expected = array.nbytes, touch(array)
    ctx = multiprocessing.get_context("spawn")
    parent, child_end = ctx.Pipe()
    process = ctx.Process(target=child, args=(child_end,))
    process.start()

    def through_pipe() -> None:
        parent.send(array)
        assert parent.recv() == expected

    def through_shm() -> None:
        ref = store.put(array)
        parent.send(ref)
        assert parent.recv() == expected
        store.release(ref)

    try:
        through_pipe()  # warm the child up: imports, first allocation
        print(f"to child via Pipe       {rate(nbytes, timed(through_pipe, repeat))}")
        with BlobStore() as store:
            through_shm()
            shm_reused = rate(nbytes, timed(through_shm, repeat))
            print(f"to child via shm, reuse {shm_reused}")
            store.max_free_bytes = 0  # from now on every put gets fresh pages
            print(f"to child via shm, fresh {rate(nbytes, timed(through_shm, repeat))}")
    finally:
        parent.send(None)
        process.join(30)


def bench_profile(array: np.ndarray, repeat: int) -> None:
    """The measurements behind the data plane's design (docs/benchmarks.md)."""
    import hashlib
    import mmap
    import os
    from concurrent.futures import ThreadPoolExecutor

    from localsched.transport import hashing

    nbytes = array.nbytes
    blake = timed(lambda: hashlib.blake2b(array, digest_size=16).digest(), repeat)
    print(f"hash, BLAKE2b-128       {rate(nbytes, blake)}")
    if hashing.xxhash is not None:
        xxh = timed(lambda: hashing.xxhash.xxh3_128(array).digest(), repeat)
        print(f"hash, XXH3-128          {rate(nbytes, xxh)}")
    pool = ThreadPoolExecutor(2)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as directory:
        path = os.path.join(directory, "segment")

        def write(threads: int, prepare: str) -> float:
            if prepare != "reused" and os.path.exists(path):
                os.unlink(path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if prepare == "fallocated":
                os.posix_fallocate(fd, 0, nbytes)
            view, step = memoryview(array).cast("B"), -(-nbytes // threads)

            def part(i: int) -> None:
                done, end = i * step, min(nbytes, (i + 1) * step)
                while done < end:
                    done += os.pwrite(fd, view[done:end], done)

            start = time.perf_counter()
            list(pool.map(part, range(threads)))
            elapsed = time.perf_counter() - start
            os.close(fd)
            return elapsed

        for prepare in ("fresh", "fallocated", "reused"):
            for threads in (1, 2):
                seconds = [write(threads, prepare) for _ in range(repeat)]
                print(f"pwrite {prepare:<10} x{threads}  {rate(nbytes, seconds)}")

        def read(advice: str) -> None:
            fd = os.open(path, os.O_RDONLY)
            flags = mmap.MAP_PRIVATE
            if advice == "MAP_POPULATE":
                flags |= mmap.MAP_POPULATE
            prot = mmap.PROT_READ | mmap.PROT_WRITE  # as load(): private, writable
            mapping = mmap.mmap(fd, nbytes, flags=flags, prot=prot)
            os.close(fd)
            if advice == "MADV_POPULATE_READ":
                mapping.madvise(getattr(mmap, "MADV_POPULATE_READ", 22))
            touch(np.frombuffer(mapping, np.uint8))
            mapping.close()

        for advice in ("lazy faults", "MADV_POPULATE_READ", "MAP_POPULATE"):
            seconds = timed(lambda: read(advice), repeat)  # noqa: B023 - called now
            print(f"read pages, {advice:<18} {rate(nbytes, seconds)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="only the profile")
    args = parser.parse_args()
    array = np.random.default_rng(0).integers(0, 255, args.mb * 1_000_000, np.uint8)
    print(f"{args.mb} MB uint8 array, {args.repeat} repeats")
    if args.profile:
        bench_profile(array, args.repeat)
        return
    bench_in_process(array, args.repeat)
    bench_spill(array, args.repeat)
    bench_to_child(array, args.repeat)


if __name__ == "__main__":
    main()
