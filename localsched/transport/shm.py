"""Values in shared memory: pickle-5 blobs in pooled /dev/shm segments.

A value above :data:`INLINE_THRESHOLD` is pickled once with protocol 5; each
out-of-band buffer (a numpy array's data) is ``pwrite``-n straight into a segment
file, one kernel copy per buffer. A segment holds one blob, and a :class:`BlobRef`
(about 120 bytes pickled) says where its parts are; refs travel over pipes::

    0: magic + blob_id   64: pickle stream   then each buffer, 64-byte aligned

    worker process                 scheduler process (owner)          any process
    BlobWriter.write(obj) ──ref──▶ BlobStore.adopt(ref)                load(ref)
    (leased or fresh segment)      put / release / lease / prewarm     (private map)

Ownership: one owner per segment. The :class:`BlobStore` owns what it creates,
adopts or keeps on its free list; a worker owns what it wrote or was leased until
the store adopts the ref. Every segment lives in the store's private directory
(0700, an unguessable name: no other user can create or squat a name in it, see
:mod:`~localsched.transport.segment_files`), so :meth:`BlobStore.close` removes
everything the cluster made, adopted or not, by removing the directory, and
:func:`sweep_stale_segments` removes what clusters that died left behind. Names
in it start with ``localsched-<store pid>-<token>-``; a worker's own add
``<worker pid>.``, which is how :meth:`BlobStore.reclaim` finds them.

Reuse is the one hazard. A ``MAP_PRIVATE`` mapping still sees later writes to the
pages its process has not written itself (Linux behaviour, left unspecified by
POSIX), so rewriting a segment a reader still maps would change that reader's
arrays. A reader holds a shared ``flock`` while its mapping lives (CPython's mmap
dups the descriptor, and flock locks belong to the open file description); the
owner reuses a segment only if it gets the exclusive lock without waiting, and a
stamp (``blob_id``) turns a stale ref into :class:`StaleBlobError` instead of wrong
data. Unlinking needs no such care: a mapped file outlives its name.

Spilling (:meth:`BlobStore.spill`, least recently used first) copies a live
segment to a disk file and swaps the segment for a symbolic link to it (see
:mod:`localsched.transport.spill`): refs keep their path, and readers, even those
holding a ref sent before the spill, follow the link to an identical copy.

Writes into fresh segments use ``pwrite`` rather than a shared mapping: the
kernel does not zero fresh pages it fills completely, the GIL is released during
the copy, and a full /dev/shm fails with ``ENOSPC`` instead of killing us with
``SIGBUS``. A reused segment of 8 MiB or more is written through a shared
mapping kept from earlier, its pages allocated and its page tables filled
(:mod:`~localsched.transport.segment_maps`): half the time of a ``pwrite``.
``multiprocessing.shared_memory`` is avoided because on 3.11 the resource tracker
warns about and unlinks segments whose owner changed (gh-82300).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import mmap
import os
import pickle
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass

from localsched.transport.blob_format import (
    _MAGIC,
    _STAMP,
    _pickle,
    _size_class,
)
from localsched.transport.blob_sink import (
    INLINE_THRESHOLD,
    BlobRef,
    SegmentLease,
    _BlobSink,
    dumps_inline,
)
from localsched.transport.blob_writer import BlobWriter
from localsched.transport.finalizers import Finalizer
from localsched.transport.segment_files import (
    _COPIED,
    FALLBACK_LINK,
    NAME_PREFIX,
    SHM_DIR,
    SPILL_LINK,
    SharedMemoryWarning,
    _choose_parent,
    _create_file,
    _free_space,
    _lock_exclusive,
    _scan,
    _unlink_quietly,
    _warn_fallback,
    attach_directory,
    bytes_copied,
    make_private_directory,
    point_link,
    private_directory_name,
    remove_cluster_directory,
    sweep_stale_segments,
)
from localsched.transport.segment_maps import SegmentMaps
from localsched.transport.shm_pool import WARM_FROM, PoolKeeper
from localsched.transport.spill import copy_segment, is_memory_backed, link_to_copy

__all__ = [
    "INLINE_THRESHOLD",
    "SHM_DIR",
    "BlobRef",
    "BlobStore",
    "BlobWriter",
    "SegmentLease",
    "SharedMemoryWarning",
    "StaleBlobError",
    "bytes_copied",
    "dumps_inline",
    "load",
    "sweep_stale_segments",
]

_REUSE_ATTEMPTS = 4  # free segments tried per put before creating a fresh one


class StaleBlobError(LookupError):
    """The segment a :class:`BlobRef` points to was released or reused."""


@dataclass(slots=True, eq=False)
class _Segment:
    path: str
    capacity: int  #: power-of-two size class; any value of this class fits
    allocated: int  #: file size: the memory it holds, whether live or free
    spill_path: str = ""  #: its copy on disk once spilled (``path`` is a link)
    freed_at: float = 0.0  #: monotonic time it joined the free list
    writer: str = ""  #: the writer (holder) that filled it last; "": the store


def load(payload: BlobRef | bytes | bytearray | memoryview) -> object:
    """Rebuild a value from an inline pickle or from shared memory, without copying.

    Arrays are views of a private copy-on-write mapping made for this call:
    writable, and their writes are seen by no one else, not even another load. The
    mapping (and the lock that stops the owner reusing the segment) lives as long
    as some returned object uses it; the owner may unlink the segment meanwhile.

    Parameters
    ----------
    payload : BlobRef or bytes-like
        What ``serialize``, ``put``, ``write`` or :func:`dumps_inline` returned.

    Returns
    -------
    object
        The value.

    Raises
    ------
    StaleBlobError
        The segment was unlinked or holds another value now.
    """
    if not isinstance(payload, BlobRef):
        return pickle.loads(payload)
    try:
        fd = os.open(payload.segment, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise StaleBlobError(f"{payload.segment} was released") from None
    try:
        # Waits only while the owner rewrites a reused segment (module docstring).
        fcntl.flock(fd, fcntl.LOCK_SH)
        offset, length = payload.header
        head = os.pread(fd, offset + length, 0)
        while len(head) < offset + length and (
            more := os.pread(fd, offset + length - len(head), len(head))
        ):
            head += more  # only for pickle streams above 2 GiB
        _COPIED.add(len(head))
        if len(head) < offset + length or _STAMP.unpack_from(head) != (
            _MAGIC,
            payload.blob_id,
        ):
            raise StaleBlobError(f"{payload.segment} holds another value now")
        stream = memoryview(head)[offset:]
        if not payload.buffers:
            return pickle.loads(stream)
        # The mmap keeps a dup of fd, and with it the lock, until the last view of
        # the mapping is garbage; closing fd below does not release it. (3.13's
        # trackfd=False would break that.)
        mapping = mmap.mmap(
            fd,
            payload.nbytes,
            flags=mmap.MAP_PRIVATE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
        )
    finally:
        os.close(fd)
    view = memoryview(mapping)
    return pickle.loads(stream, buffers=[view[o : o + n] for o, n in payload.buffers])


class BlobStore(_BlobSink):
    """Owner of shared-memory segments: writes, adopts, pools and unlinks them.

    Lives in the scheduler process. Methods are thread-safe, and copies run outside
    the lock, so :meth:`prewarm` can run in a background thread.

    Parameters
    ----------
    token : str, optional
        Alphanumeric cluster token used in segment names; random by default.
    directory : str, optional
        Where the store makes its private directory (:attr:`directory`):
        default /dev/shm, or the temporary directory (one
        :class:`SharedMemoryWarning`) if /dev/shm is missing or has less than
        ``min_shm_bytes`` free (Docker's default is 64 MB). If it is full later,
        segments go to a private directory in the temporary directory.
    max_free_bytes : int, optional
        Cap on memory kept in released segments; default min(1 GiB, free / 4).
    min_shm_bytes : int
        Free space below which /dev/shm counts as too small.
    spill_directory : str, optional
        Where :meth:`spill` makes its private directory of spilled segments
        (default: the temporary directory).
    idle_seconds : float
        If positive, a background thread keeps the free pool (see
        :mod:`~localsched.transport.shm_pool`): it pre-allocates as many
        segments of a size as values of that size (8 MiB or more) were written
        in the last ``idle_seconds``, and unlinks free segments unused for that
        long. Default 0: off (the pool then only has its cap; a
        :class:`~localsched.LocalCluster` uses ``POOL_IDLE_SECONDS``).

    Attributes
    ----------
    directory : str
        The store's private directory (0700, unguessable name), removed with
        everything in it by :meth:`close`.
    fallback_directory : str
        Private directory for segments when :attr:`directory` is full, made by
        the first process that needs it (the same as :attr:`directory` if that
        is on disk already).

    Examples
    --------
    >>> with BlobStore() as store:
    ...     ref = store.put(bytearray(1 << 20))
    ...     len(load(ref))
    1048576
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        directory: str | None = None,
        max_free_bytes: int | None = None,
        min_shm_bytes: int = 128 << 20,
        spill_directory: str | None = None,
        idle_seconds: float = 0.0,
    ) -> None:
        token = secrets.token_hex(4) if token is None else token
        if not token.isalnum():
            raise ValueError(f"token must be alphanumeric, got {token!r}")
        self.prefix = f"{NAME_PREFIX}{os.getpid()}-{token}-"
        self.directory = make_private_directory(
            directory or _choose_parent(min_shm_bytes)
        )
        self._memory_backed = is_memory_backed(self.directory)
        # Removes the directory, and the fallback and spill directories it links
        # to, once the store is closed or garbage (never a forked child's). Not
        # weakref.finalize: its exit hook ran before the cluster's (see
        # localsched.transport.finalizers).
        self._finalizer = Finalizer(
            self, _remove_directory, self.directory, os.getpid()
        )
        if self._memory_backed:
            # Named now, made on first use; the link lets close() find it.
            self.fallback_directory = os.path.join(
                tempfile.gettempdir(), private_directory_name()
            )
            point_link(
                os.path.join(self.directory, FALLBACK_LINK), self.fallback_directory
            )
        else:
            self.fallback_directory = self.directory
        if max_free_bytes is None:
            max_free_bytes = min(1 << 30, _free_space(self.directory) // 4)
        self.max_free_bytes = max_free_bytes
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._closed = False
        self.maps = SegmentMaps()
        # path -> (blob_id, segment), least recently used first (see touch).
        self._live: dict[str, tuple[int, _Segment]] = {}
        #: path -> (holder, segment)
        self._leased: dict[str, tuple[int | str, _Segment]] = {}
        self._free: dict[int, dict[str, _Segment]] = {}  # capacity -> LIFO bucket
        self._free_lru: dict[str, _Segment] = {}  # oldest first: eviction order
        self._free_bytes = 0
        self._live_memory_bytes = 0  # live segments in RAM (not spilled)
        self._leased_bytes = 0
        self._spill_base = spill_directory
        self._spill_directory = ""  # created by the first spill
        #: Bytes of live values on disk now, and totals since the store opened.
        self.spilled_bytes = 0
        self.spill_count = 0
        self.spilled_total_bytes = 0
        # Where segments of this store can be: reclaim scans them, adopt checks.
        self._directories = {self.directory, self.fallback_directory}
        self.idle_seconds = idle_seconds
        self._keeper: PoolKeeper | None = None
        if idle_seconds > 0:
            self._keeper = PoolKeeper(self, idle_seconds)

    @property
    def free_bytes(self) -> int:
        """Memory held by released segments waiting for reuse."""
        return self._free_bytes

    @property
    def memory_bytes(self) -> int:
        """RAM the store's segments hold: live values not spilled, leased and
        pooled segments; 0 for a disk-backed directory (the page cache there is
        the kernel's to evict)."""
        if not self._memory_backed:
            return 0
        return self._live_memory_bytes + self._leased_bytes + self._free_bytes

    @property
    def spillable_bytes(self) -> int:
        """Of :attr:`memory_bytes`, what :meth:`spill` can give back."""
        if not self._memory_backed:
            return 0
        return self._live_memory_bytes + self._free_bytes

    @property
    def spill_directory(self) -> str:
        """Directory of spilled segments ("" until the first spill)."""
        return self._spill_directory

    def trim_idle(self, before: float) -> int:
        """Unlink free segments that joined the free list before monotonic time
        ``before`` and were not taken since; return how many."""
        with self._lock:
            victims = []
            for segment in list(self._free_lru.values()):  # oldest first
                if segment.freed_at >= before:
                    break
                self._remove_free(segment)
                victims.append(segment.path)
        self._unlink(victims)
        return len(victims)

    def touch(self, ref: BlobRef) -> None:
        """Mark a value as just used: it is spilled after those used before it."""
        with self._lock:
            entry = self._live.pop(ref.segment, None)
            if entry is not None:
                self._live[ref.segment] = entry

    def spill(self, nbytes: int, time_limit: float | None = None) -> int:
        """Give back at least ``nbytes`` of RAM if possible: first the pool of
        released segments, then live values, least recently used first, moved to
        disk files that readers map as before (module docstring).

        Copies run outside the store's lock; a value released (or its segment
        reused) during its copy is simply not spilled. Call it from one thread.

        Parameters
        ----------
        nbytes : int
            RAM wanted back.
        time_limit : float, optional
            Seconds after which to stop (once one value is spilled), so that a
            caller on the scheduler thread keeps scheduling; the rest is for
            the next call.

        Returns
        -------
        int
            Bytes of RAM given back (may exceed ``nbytes`` by one segment).

        Raises
        ------
        OSError
            The spill directory cannot be written (e.g. the disk is full); what
            was spilled before the error stays spilled.
        """
        started = time.monotonic()
        with self._lock:
            if self._closed or not self._memory_backed or nbytes <= 0:
                return 0
            pooled = self._free_bytes
            self._unlink(self._trim(max(0, pooled - nbytes)))
            freed = pooled - self._free_bytes
            if freed < nbytes and not self._spill_directory:
                self._spill_directory = attach_directory(
                    self.directory,
                    SPILL_LINK,
                    self._spill_base or tempfile.gettempdir(),
                )
            candidates = []
            wanted = nbytes - freed
            for path, (blob_id, segment) in self._live.items():
                if wanted <= 0:
                    break
                if self._is_pooled_kind(segment):
                    candidates.append((path, blob_id, segment))
                    wanted -= segment.allocated
        spilled_here = 0
        for path, blob_id, segment in candidates:
            if (
                time_limit is not None
                and spilled_here
                and time.monotonic() - started > time_limit
            ):
                break
            try:
                copy = copy_segment(path, self._spill_directory)
            except FileNotFoundError:
                continue  # released and unlinked since it was picked
            with self._lock:
                if self._closed or self._live.get(path) != (blob_id, segment):
                    _unlink_quietly([copy])  # released, maybe reused, meanwhile
                    continue
                link_to_copy(path, copy)
                self.maps.drop([path])  # the tmpfs file is gone: its memory too
                segment.spill_path = copy
                self._live_memory_bytes -= segment.allocated
                self.spilled_bytes += segment.allocated
                self.spilled_total_bytes += segment.allocated
                self.spill_count += 1
            spilled_here += 1
            freed += segment.allocated
        return freed

    def writer(self, owner: str | None = None) -> BlobWriter:
        """Return a picklable :class:`BlobWriter` for this store's worker processes.

        ``owner`` names its segments (default: the pid of the process writing);
        writers sharing one process (``processes=False`` workers) need distinct
        owners, the holders :meth:`lease` and :meth:`reclaim` know them by.
        """
        return BlobWriter(self.prefix, self.directory, self.fallback_directory, owner)

    def put(self, obj: object) -> BlobRef:
        """Serialize ``obj`` into one segment, one copy per buffer, and own it.

        Raises
        ------
        RuntimeError
            The store is closed.
        """
        return self._write_pickled(*_pickle(obj))

    def release(self, ref: BlobRef) -> None:
        """Drop a value: keep its segment for reuse, or unlink it beyond the cap.

        A no-op once the store is closed.

        Raises
        ------
        KeyError
            ``ref`` is not a live value of this store (a double release).
        """
        with self._lock:
            if self._closed:
                return
            entry = self._live.get(ref.segment)
            if entry is None or entry[0] != ref.blob_id:
                raise KeyError(f"not a live blob of this store: {ref.segment}")
            del self._live[ref.segment]
            segment = entry[1]
            if segment.spill_path:
                self.spilled_bytes -= segment.allocated
                victims = [ref.segment, segment.spill_path]  # never reused
            elif not self._is_pooled_kind(segment):
                victims = [ref.segment]  # a worker's fallback file
            else:
                self._live_memory_bytes -= segment.allocated
                if segment.allocated > self.max_free_bytes:
                    victims = [ref.segment]  # keeping it would evict the rest
                else:
                    self._add_free(segment)
                    victims = self._trim(self.max_free_bytes)
                    if self._keeper is not None and segment.allocated >= WARM_FROM:
                        self._keeper.freed()
        self._unlink(victims)

    def adopt(self, ref: BlobRef) -> bool:
        """Take ownership of a value a :class:`BlobWriter` wrote in another process.

        Returns
        -------
        bool
            Whether the value was written into a segment the store had leased
            (the writer used up one of its leases).

        Raises
        ------
        ValueError
            The segment is already owned, or was not named by this store.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("BlobStore is closed")
            if ref.segment in self._live:
                raise ValueError(f"already adopted: {ref.segment}")
            leased = self._leased.pop(ref.segment, None)
            if leased is not None:
                segment = leased[1]
                self._leased_bytes -= segment.allocated
                segment.allocated = max(segment.allocated, ref.nbytes)
                segment.writer = str(leased[0])
            elif self._is_ours(ref.segment):
                segment = _Segment(ref.segment, _size_class(ref.nbytes), ref.nbytes)
                # A writer's own file: <prefix><holder>.<n>
                name = os.path.basename(ref.segment)[len(self.prefix) :]
                segment.writer = name.split(".", 1)[0] if "." in name else ""
            else:
                raise ValueError(f"not a segment of this store: {ref.segment}")
            self._live[ref.segment] = (ref.blob_id, segment)
            if self._is_pooled_kind(segment):
                self._live_memory_bytes += segment.allocated
                if self._keeper is not None and segment.allocated >= WARM_FROM:
                    self._keeper.busy()
                return leased is not None
        # A worker found the directory full and wrote to the disk fallback.
        _warn_fallback(f"{self.directory} is full", self.fallback_directory)
        return False

    def lease(
        self, nbytes: int, holder: int | str, *, own: bool = False
    ) -> SegmentLease | None:
        """Hand a free segment for an ``nbytes`` value to the writer ``holder``
        (its owner: its process's pid unless the writer was given one).

        With ``own``, only a segment that writer filled last: refilling a
        producer's leases must not take the segments the store's own puts
        (a ``scatter``) reuse, nor another worker's.

        Returns None when no free segment of that size class is reusable now.
        """
        with self._lock:
            writer = str(holder) if own else None
            capacity = _size_class(nbytes)
            found = None if self._closed else self._take_free(capacity, writer)
            if found is None:
                return None
            segment, fd = found
            os.close(fd)  # the writer takes the exclusive lock again to write
            self._leased[segment.path] = (holder, segment)
            self._leased_bytes += segment.allocated
        return SegmentLease(segment=segment.path, capacity=segment.capacity)

    def reclaim(self, holder: int | str) -> None:
        """After writer ``holder`` exited: pool its leases, unlink what it wrote but
        the store never adopted. Adopt the refs it sent before calling this.

        Never raises for a file it cannot remove (that is logged): it runs on
        the scheduler thread.
        """
        with self._lock:
            if self._closed:
                return
            for path, (who, segment) in list(self._leased.items()):
                if who == holder:
                    del self._leased[path]
                    self._leased_bytes -= segment.allocated
                    if os.path.exists(path):
                        self._add_free(segment)
            victims = self._trim(self.max_free_bytes)
            # By name: a spilled value's copy in the spill directory is live too.
            live = {os.path.basename(path) for path in self._live}
        for directory in self._directories:
            entries = _scan(directory, f"{self.prefix}{holder}.")
            victims += [e.path for e in entries if e.name not in live]
        self._unlink(victims)

    def prewarm(self, nbytes: int, segment_size: int | None = None) -> int:
        """Fill the free list with pre-allocated segments, so puts skip page faults.

        Thread-safe; stops at ``max_free_bytes``, when /dev/shm is full, or on close.

        Parameters
        ----------
        nbytes : int
            Free bytes wanted in the size class of ``segment_size``, in
            segments no reader maps now.
        segment_size : int, optional
            Size of the values expected; default ``nbytes`` (one segment).

        Returns
        -------
        int
            Number of segments created.
        """
        capacity = _size_class(segment_size or nbytes)
        created = 0
        while True:
            with self._lock:
                if (
                    self._closed
                    or self._reusable_bytes(capacity) >= nbytes
                    or self._free_bytes + capacity > self.max_free_bytes
                ):
                    return created
                path = self._new_path(self.directory)
            try:
                fd = _create_file(path)
                try:
                    os.posix_fallocate(fd, 0, capacity)  # tmpfs allocates pages now
                finally:
                    os.close(fd)
            except OSError as exc:
                self._unlink([path])
                if exc.errno == errno.ENOSPC:
                    return created
                raise
            self.maps.map(path, capacity)  # and its page tables
            with self._lock:
                if self._closed:
                    self._unlink([path])
                    return created
                self._add_free(_Segment(path, capacity, capacity))
            created += 1

    def map_free(self, min_bytes: int = WARM_FROM) -> int:
        """Map the free segments of at least ``min_bytes`` not mapped yet, so
        that the puts that reuse them copy into populated pages
        (:mod:`~localsched.transport.segment_maps`); return how many.

        Thread-safe; costs milliseconds per segment (run it in the background).
        """
        with self._lock:
            todo = [
                (segment.path, segment.allocated)
                for segment in self._free_lru.values()
                if segment.allocated >= min_bytes and segment.path not in self.maps
            ]
        mapped = 0
        for path, length in todo:
            if self._closed or not self.maps.map(path, length):
                continue
            with self._lock:
                # Unlinked meanwhile (trimmed, released beyond the cap): that
                # drop came before this mapping, so drop it here.
                gone = path not in self._free_lru and path not in self._live
            if gone:
                self.maps.drop([path])
            else:
                mapped += 1
        return mapped

    def close(self) -> None:
        """Remove the store's directories and every segment, adopted or not.
        Idempotent; never raises for a file it cannot remove (that is logged).

        Readers that still map a segment keep their data.
        """
        with self._lock:
            self._closed = True
            keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.stop()  # before the files go: it may be making one
        self.maps.clear()  # a put copying now unmaps when it is done
        with self._lock:
            for table in (self._live, self._leased, self._free, self._free_lru):
                table.clear()
            self._free_bytes = self._leased_bytes = self._live_memory_bytes = 0
            self.spilled_bytes = 0
        self._finalizer()

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<BlobStore {self.prefix}* in {self.directory}: {len(self._live)} live,"
            f" {self._free_bytes} bytes free, {self.spilled_bytes} bytes spilled>"
        )

    # _take_free, _add_free, _remove_free, _trim, _new_path: caller holds _lock.

    def _open_target(self, nbytes: int, attempt: int) -> tuple[str, int]:
        with self._lock:
            if self._closed:
                raise RuntimeError("BlobStore is closed")
            found = self._take_free(_size_class(nbytes)) if attempt == 0 else None
            if found is not None:
                return found[0].path, found[1]
            name = f"{self.prefix}{next(self._seq)}"
        return self._fresh(name, attempt)

    def _on_full(self) -> None:
        with self._lock:  # memory the pool holds is the first to give back
            victims = self._trim(0)
        self._unlink(victims)

    def _on_written(self, ref: BlobRef, size: int) -> BlobRef:
        with self._lock:
            if self._closed:
                self._unlink([ref.segment])
                raise RuntimeError("BlobStore is closed")
            segment = _Segment(ref.segment, _size_class(ref.nbytes), size)
            self._live[ref.segment] = (ref.blob_id, segment)
            if self._is_pooled_kind(segment):
                self._live_memory_bytes += size
                self._note_use(segment.capacity)
        return ref

    def _fallback(self) -> str:
        directory = super()._fallback()
        _warn_fallback(f"{self.directory} is full", directory)
        return directory

    def _take_free(
        self, capacity: int, writer: str | None = None
    ) -> tuple[_Segment, int] | None:
        """A free segment of the class, locked; if ``writer`` is not None, only
        one that writer filled last."""
        bucket = self._free.get(capacity, {})
        candidates = reversed(bucket.values())
        if writer is not None:
            candidates = (s for s in candidates if s.writer == writer)
        newest = itertools.islice(candidates, _REUSE_ATTEMPTS)
        for segment in list(newest):
            try:
                fd = _lock_exclusive(segment.path)
            except OSError:  # gone, or unusable: never pooled again
                self._remove_free(segment)
                self._unlink([segment.path])
                continue
            if fd is not None:  # None: a reader still maps it; it stays for later
                self._remove_free(segment)
                return segment, fd
        return None

    def _note_use(self, capacity: int) -> None:
        if capacity >= WARM_FROM and self._keeper is not None:
            self._keeper.note(capacity)

    def _reusable_bytes(self, capacity: int) -> int:
        """Free bytes of a size class that no reader maps now (a reader keeps a
        value's segment from reuse while its task's worker holds the value)."""
        total = 0
        for segment in self._free.get(capacity, {}).values():
            try:
                fd = _lock_exclusive(segment.path)
            except OSError:
                continue  # gone: _take_free drops it
            if fd is not None:
                os.close(fd)
                total += segment.allocated
        return total

    def _add_free(self, segment: _Segment) -> None:
        segment.freed_at = time.monotonic()
        self._free.setdefault(segment.capacity, {})[segment.path] = segment
        self._free_lru[segment.path] = segment
        self._free_bytes += segment.allocated

    def _remove_free(self, segment: _Segment) -> None:
        del self._free[segment.capacity][segment.path]
        del self._free_lru[segment.path]
        self._free_bytes -= segment.allocated

    def _trim(self, limit: int) -> list[str]:
        victims = []
        while self._free_bytes > limit:
            segment = next(iter(self._free_lru.values()))
            self._remove_free(segment)
            victims.append(segment.path)
        return victims

    def _is_pooled_kind(self, segment: _Segment) -> bool:
        """In the store's directory and not spilled: counted, pooled on release."""
        return not segment.spill_path and os.path.dirname(segment.path) == (
            self.directory
        )

    def _new_path(self, directory: str) -> str:
        return os.path.join(directory, f"{self.prefix}{next(self._seq)}")

    def _is_ours(self, path: str) -> bool:
        directory, name = os.path.split(path)
        return name.startswith(self.prefix) and directory in self._directories


def _remove_directory(directory: str, owner_pid: int) -> None:
    # A forked child inherits this finalizer; only the owner may remove the files.
    if os.getpid() == owner_pid:
        remove_cluster_directory(directory)
