"""Writable mappings of reused segments, kept populated, and the copy into them.

Writing a large value into a segment whose pages are already allocated still
costs a kernel entry per 4 KiB page with ``pwrite`` (the page-cache lookup of
each page), about twice a plain ``memcpy`` on this machine (200 MB: 33-36 ms
against 18-21 ms, measured in docs/benchmarks.md), and a ``memcpy`` into a
mapping whose page tables are not filled yet is slower still (114-174 ms: a
fault per page). Mapping costs too: populating the page tables of 256 MiB takes
30-45 ms and unmapping them 12-21 ms. So a mapping pays only if it is made off
the writer's path and kept for the next write into the same segment, which is
how segments are reused: a store's free segment is taken by its next put of
that size, and a freed result's segment is leased back to the worker that
wrote it (see ``SchedulerRuntime._lease_back``).

:class:`SegmentMaps` holds such mappings for one process, by path:

- :meth:`SegmentMaps.map` (off the write path: a background thread) allocates
  the file's pages (``posix_fallocate``: a write through the mapping can then
  never meet a hole, which would raise ``SIGBUS`` on a full /dev/shm) and maps
  them shared; the store's process fills the page tables at once
  (``MADV_POPULATE_WRITE``), a worker leaves that to its first write into the
  lease (filling them in a worker's thread slowed the task running beside it:
  the first 200 MB result after a lease took 0.1-0.2 s instead of 0.04);
- :meth:`SegmentMaps.acquire` hands one to a writer, only for the very file the
  writer holds locked (same inode) and only if the value fits; the writer then
  :func:`copy_into` it and calls :meth:`SegmentMaps.release`;
- :meth:`SegmentMaps.drop` unmaps, at once or, if a writer is copying into it,
  when the writer releases it; the owner drops a mapping before it unlinks the
  file, and a process that does not own the file calls :meth:`SegmentMaps.prune`
  (a mapping of an unlinked file would keep its memory from the system).

Mapping and unmapping go through libc with ``ctypes``, which releases the GIL
for the call: CPython's ``mmap`` module holds it while the kernel fills or
clears the page tables (measured: the other threads of the process stalled
80-130 ms per 256 MiB), which would stall a worker's task thread, or the
scheduler thread next to a store, for as long.

The mappings are ``MAP_SHARED`` views of files the process may write only while
it holds the exclusive ``flock`` (see :mod:`localsched.transport.shm`); a
mapping never gives anyone else a way into the file.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import stat
import threading
from dataclasses import dataclass

from localsched.transport.segment_files import _COPIED, HASH_CHUNK, _Hasher

__all__ = [
    "PARALLEL_COPY_FROM",
    "PRUNE_SECONDS",
    "BackgroundMapper",
    "SegmentMaps",
    "copy_into",
    "copy_threads",
]

logger = logging.getLogger(__name__)

#: Buffers at least this large are copied by several threads (see copy_into).
PARALLEL_COPY_FROM = 32 << 20
_MAP_FAILED = ctypes.c_void_p(-1).value
_MADV_DONTFORK = getattr(mmap, "MADV_DONTFORK", 10)
_MADV_POPULATE_WRITE = 23  # Linux 5.14+; not in the mmap module


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mmap_call, munmap_call = libc.mmap, libc.munmap
    except (OSError, AttributeError):
        return None
    mmap_call.restype = ctypes.c_void_p
    mmap_call.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    munmap_call.restype = ctypes.c_int
    munmap_call.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.restype = ctypes.c_int
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


#: libc, for mmap and munmap without the GIL; None where it cannot be loaded
#: (then nothing is mapped, and every write uses ``pwrite``).
_LIBC = _libc()


def _map_shared(fd: int, length: int, populate: bool = True) -> int:
    """Map ``length`` bytes of ``fd`` shared, writable, populated; the address."""
    if _LIBC is None:
        raise OSError("libc is not available")
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    # Mapped unpopulated first: the madvise below takes the process's memory
    # map lock for writing, and behind it every page fault of the process's
    # other threads waits; issued while a populate still ran (MAP_POPULATE),
    # it stalled a worker's task for about a second.
    address = _LIBC.mmap(None, length, prot, mmap.MAP_SHARED, fd, 0)
    if address is None or address == _MAP_FAILED:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    # A child forked later (user code's fork) must not inherit it: it would
    # keep the segment's memory after the owner unlinks it.
    _LIBC.madvise(address, length, _MADV_DONTFORK)
    # Page tables filled under the lock taken for reading (page faults go on);
    # kernels before 5.14 refuse it, and the writer then faults pages in.
    if populate:
        _LIBC.madvise(address, length, _MADV_POPULATE_WRITE)
    return int(address)


def _unmap(address: int, length: int) -> None:
    # Never raises: it runs where a release or an unlink must go on (munmap
    # fails only for an address that is not a mapping, a bug).
    if _LIBC is not None and _LIBC.munmap(address, length) != 0:
        error = ctypes.get_errno()
        logger.error("munmap(%#x, %d) failed: %s", address, length, os.strerror(error))


def copy_threads() -> int:
    """Threads a large copy uses: one per CPU this process may run on, at most 4
    (a copy is bound by memory bandwidth beyond that)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _address(buffer: memoryview) -> tuple[int, object] | None:
    """The address of a writable contiguous buffer and the object keeping it
    exported; None for a read-only one (ctypes cannot point into it)."""
    if buffer.readonly:
        return None
    holder = (ctypes.c_char * buffer.nbytes).from_buffer(buffer)
    return ctypes.addressof(holder), holder


def copy_into(
    address: int,
    length: int,
    offset: int,
    buffer: memoryview,
    threads: int | None = None,
    hasher: _Hasher | None = None,
) -> None:
    """Copy ``buffer`` to ``length`` writable bytes at ``address``, at ``offset``.

    ``ctypes.memmove`` releases the GIL, so the pieces of a buffer of
    :data:`PARALLEL_COPY_FROM` bytes or more are copied at the same time by
    ``threads`` threads (default :func:`copy_threads`). A read-only source is
    copied by the caller's thread, holding the GIL.

    Parameters
    ----------
    address, length : int
        Where the destination memory starts (a :class:`SegmentMaps` mapping),
        and its size.
    offset : int
        Where the copy starts in the destination.
    buffer : memoryview
        A C-contiguous buffer (a pickle buffer's ``raw()``).
    threads : int, optional
        Threads for a large copy; 1 copies in the caller's thread.
    hasher : optional
        Fed the bytes as they are copied, in pieces of ``HASH_CHUNK``, each
        hashed from the cache right after its copy (then one thread copies).
    """
    view = memoryview(buffer).cast("B")
    nbytes = view.nbytes
    if offset < 0 or offset + nbytes > length:
        raise ValueError(f"{nbytes} bytes at {offset} overflow the mapping")
    _COPIED.add(nbytes)
    if nbytes == 0:
        return
    source = _address(view)
    try:
        if hasher is not None:
            _copy_hashing(address + offset, view, source, hasher)
        elif source is None:
            _window(address + offset, nbytes)[:] = view
        else:
            _copy(address + offset, source[0], nbytes, threads)
    finally:
        del source  # the export ends: the caller may let go of the buffer


def _window(address: int, nbytes: int) -> memoryview:
    """A writable view of raw memory (for a source ctypes cannot point into)."""
    return memoryview((ctypes.c_char * nbytes).from_address(address)).cast("B")


def _copy_hashing(
    destination: int,
    view: memoryview,
    source: tuple[int, object] | None,
    hasher: _Hasher,
) -> None:
    for start in range(0, view.nbytes, HASH_CHUNK):
        piece = view[start : start + HASH_CHUNK]
        if source is None:  # read-only: a copy holding the GIL
            _window(destination + start, piece.nbytes)[:] = piece
        else:
            ctypes.memmove(destination + start, source[0] + start, piece.nbytes)
        hasher.update(piece)


def _copy(dst: int, src: int, nbytes: int, threads: int | None) -> None:
    count = threads if threads is not None else copy_threads()
    if nbytes < PARALLEL_COPY_FROM or count <= 1:
        ctypes.memmove(dst, src, nbytes)
        return
    # Pieces on page boundaries, so that no two threads write one page.
    piece = -(-nbytes // count)
    piece = -(-piece // mmap.PAGESIZE) * mmap.PAGESIZE
    helpers = [
        threading.Thread(
            target=ctypes.memmove,
            args=(dst + at, src + at, min(piece, nbytes - at)),
            name="localsched-copy",
            daemon=True,
        )
        for at in range(piece, nbytes, piece)
    ]
    for helper in helpers:
        helper.start()
    try:
        ctypes.memmove(dst, src, min(piece, nbytes))
    finally:
        for helper in helpers:
            helper.join()


@dataclass(eq=False)
class _Map:
    address: int  #: where the mapping starts
    length: int  #: its size in bytes
    inode: tuple[int, int]  #: (st_dev, st_ino) of the file mapped
    closed: bool = False  #: unmapped
    users: int = 0  #: writers copying into it now
    dropped: bool = False  #: close when the last user releases it


class SegmentMaps:
    """Populated shared mappings of segment files this process writes into.

    Thread-safe. Parameters of the methods are segment paths; see the module
    docstring for who calls what.

    Parameters
    ----------
    max_maps : int
        Mappings kept at most; mapping one more drops the least recently used.
    populate : bool
        Fill a new mapping's page tables at once (else the first write does).
    """

    def __init__(self, max_maps: int = 16, populate: bool = True) -> None:
        self.max_maps = max_maps
        self.populate = populate
        self._lock = threading.Lock()
        self._maps: dict[str, _Map] = {}  # least recently used first

    def __len__(self) -> int:
        return len(self._maps)

    def __contains__(self, path: object) -> bool:
        return path in self._maps

    def map(self, path: str, length: int) -> bool:
        """Allocate the first ``length`` bytes of ``path`` and map them populated.

        Keeps an existing mapping of the same file if it is long enough. Costs
        milliseconds (a page-table entry per page): call it off the write path.

        Returns
        -------
        bool
            Whether ``path`` is mapped now; False if the file is gone, is not
            a regular file (a spilled segment's link), or cannot be allocated
            (a full /dev/shm: the writer then uses ``pwrite``).
        """
        if length <= 0:
            return False
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            inode = (st.st_dev, st.st_ino)
            with self._lock:
                known = self._maps.get(path)
                if (
                    known is not None
                    and known.inode == inode
                    and known.length >= length
                ):
                    return True
            if not stat.S_ISREG(st.st_mode):
                return False
            # Allocating what is allocated already only looks the pages up;
            # a hole left would make a write through the mapping SIGBUS when
            # /dev/shm is full, instead of failing here with ENOSPC.
            os.posix_fallocate(fd, 0, length)
            address = _map_shared(fd, length, self.populate)
        except (OSError, ValueError):
            return False
        finally:
            os.close(fd)
        victims = []
        with self._lock:
            old = self._maps.pop(path, None)
            if old is not None:
                victims.append(old)
            self._maps[path] = _Map(address, length, inode)
            while len(self._maps) > self.max_maps:
                victims.append(self._maps.pop(next(iter(self._maps))))
        for victim in victims:
            self._close(victim)
        return True

    def acquire(self, path: str, fd: int, nbytes: int) -> _Map | None:
        """The mapping of ``path`` if it maps the file open as ``fd`` (locked
        exclusively by the caller) and holds ``nbytes``; release it after use."""
        st = os.fstat(fd)
        with self._lock:
            found = self._maps.get(path)
            if (
                found is None
                or found.inode != (st.st_dev, st.st_ino)
                or found.length < nbytes
            ):
                return None
            found.users += 1
            del self._maps[path]  # most recently used last
            self._maps[path] = found
            return found

    def release(self, found: _Map) -> None:
        """A writer is done copying into ``found``."""
        with self._lock:
            found.users -= 1
            close = found.dropped and not found.users
        if close:
            self._close(found)

    def drop(self, paths: list[str] | tuple[str, ...]) -> None:
        """Unmap these paths (once no writer copies into them)."""
        victims = []
        with self._lock:
            for path in paths:
                found = self._maps.pop(path, None)
                if found is not None:
                    found.dropped = True
                    if not found.users:
                        victims.append(found)
        for victim in victims:
            self._close(victim)

    def prune(self) -> int:
        """Unmap what no longer maps the file at its path (unlinked, spilled,
        replaced); return how many."""
        with self._lock:
            known = [(path, found.inode) for path, found in self._maps.items()]
        gone = []
        for path, inode in known:
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                gone.append(path)
                continue
            if (st.st_dev, st.st_ino) != inode:
                gone.append(path)
        self.drop(gone)
        return len(gone)

    def clear(self) -> None:
        """Unmap everything (once no writer copies into it)."""
        with self._lock:
            paths = list(self._maps)
        self.drop(paths)

    @staticmethod
    def _close(found: _Map) -> None:
        found.closed = True
        _unmap(found.address, found.length)


#: How often a :class:`BackgroundMapper` checks that what it maps still exists.
PRUNE_SECONDS = 1.0


class BackgroundMapper:
    """Maps segments a writer was given (leases) in a thread, and prunes.

    A worker does not own the segments it is leased: the store may unlink one
    after the worker wrote it (trimming an idle pool, spilling), and the
    worker's mapping would then keep its memory. So while it maps anything,
    the thread checks every :data:`PRUNE_SECONDS` and unmaps what was unlinked
    (:meth:`SegmentMaps.prune`); it exits once nothing is mapped or asked for,
    and :meth:`request` starts it again.

    Parameters
    ----------
    maps : SegmentMaps
        Where the mappings go.
    """

    def __init__(self, maps: SegmentMaps) -> None:
        self.maps = maps
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: list[str] = []
        self._thread: threading.Thread | None = None
        self._stopped = False

    def request(self, path: str) -> None:
        """Map ``path`` (its whole file) soon, in the thread."""
        with self._lock:
            if self._stopped:
                return
            self._queue.append(path)
            self._wake.notify()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="localsched-segment-maps", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        """Stop the thread, wait for it, and unmap everything."""
        with self._lock:
            self._stopped = True
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self.maps.clear()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue and not self._stopped:
                    self._wake.wait(PRUNE_SECONDS)
                queue, self._queue = self._queue, []
                if self._stopped or (not queue and not len(self.maps)):
                    self._thread = None  # request() starts another
                    return
            for path in queue:
                try:
                    length = os.stat(path, follow_symlinks=False).st_size
                except OSError:
                    continue  # gone already: the writer will not get it
                self.maps.map(path, length)
            self.maps.prune()
