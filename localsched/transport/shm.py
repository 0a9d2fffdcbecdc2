"""Values in shared memory: pickle-5 blobs in pooled /dev/shm segments.

Theory of operation
-------------------
A value above :data:`INLINE_THRESHOLD` is pickled once with protocol 5. Its
out-of-band buffers (numpy arrays, ...) are not copied by pickle; each one is
written with ``pwrite`` straight into a segment file, so a large array costs one
kernel copy. A segment holds exactly one blob::

    0          16           64                 aligned to 64 ...
    | magic+id | (padding)  | pickle stream    | buffer 0 | buffer 1 | ...

and a :class:`BlobRef` (about 120 bytes pickled) names the segment and where each
part lives; the ref travels over pipes, the bytes never do.

::

    worker process                 scheduler process (owner)         any process
    BlobWriter.write(obj) ──ref──▶ BlobStore.adopt(ref)               load(ref)
    (lease or fresh segment)       put / release / lease / prewarm    (private map)
                                   free list by size class ──▶ reuse

Ownership. A segment has one owner at a time. The :class:`BlobStore` in the
scheduler process owns what it creates, what it adopts and its free list; a worker
owns a segment it created or was leased only until the store adopts the ref.
Every name starts with the store's prefix ``localsched-<pid>-<token>-``, where
``pid`` is the store's process, so :meth:`BlobStore.close` removes everything the
cluster made (adopted or not), and :func:`sweep_stale_segments` removes the files
of clusters whose process is gone.

Reuse is what makes this fast: copying into fresh tmpfs pages costs a page
allocation per 4 KiB, reused pages are a plain copy (see ``benchmarks/bench_shm.py``).
It is also the one real hazard: a ``MAP_PRIVATE`` mapping still sees later writes to
pages the reader has not touched itself, so rewriting a segment that a reader still
maps would change that reader's arrays. Readers therefore hold a shared ``flock``
for as long as their mapping lives (CPython's mmap keeps a dup of the descriptor,
and flock locks belong to the open file description), and the owner reuses a
segment only if it gets the exclusive lock without waiting. Unlinking needs no
such care: an unlinked file stays valid for whoever still maps it.

We write with ``pwrite`` rather than through a shared mapping: the kernel skips
zeroing fully written fresh pages, the GIL is released during the copy, and a full
/dev/shm fails with ``ENOSPC`` instead of killing the process with ``SIGBUS``.
``multiprocessing.shared_memory`` is avoided because on 3.11 it registers every
segment with the resource tracker, which warns about and unlinks segments whose
ownership moved to another process (gh-82300; ``track=False`` arrives in 3.13).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import mmap
import os
import pickle
import re
import secrets
import stat
import struct
import tempfile
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cloudpickle

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType

__all__ = [
    "INLINE_THRESHOLD",
    "BlobRef",
    "BlobStore",
    "BlobWriter",
    "SegmentLease",
    "SharedMemoryWarning",
    "StaleBlobError",
    "dumps_inline",
    "load",
    "sweep_stale_segments",
]

#: Values whose pickle plus buffers total fewer bytes travel inline in messages.
INLINE_THRESHOLD = 64 * 1024
SHM_DIR = "/dev/shm"
NAME_PREFIX = "localsched-"

_MiB = 1 << 20
_ALIGN = 64  # buffers start on a cache line; numpy wants at least the item size
_HEADER_OFFSET = 64
_STAMP = struct.Struct("<8sQ")
_MAGIC = b"LSBLOB01"
_MIN_CLASS = mmap.PAGESIZE
_REUSE_ATTEMPTS = 4  # free segments tried per put before creating a fresh one
_MAX_IO = 1 << 30  # Linux moves at most 2 GiB - 4 KiB per read/write call
_NAME_RE = re.compile(r"localsched-(\d+)-")
_fallback_warned = False


class StaleBlobError(LookupError):
    """The segment a :class:`BlobRef` points to was released or reused."""


class SharedMemoryWarning(UserWarning):
    """/dev/shm is unusable or full, so segments go to a disk-backed directory."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobRef:
    """Where one serialized value lives; small enough to send in any message.

    Attributes
    ----------
    segment : str
        Absolute path of the segment file.
    blob_id : int
        Random 64-bit stamp, also written at the start of the segment, so a ref
        to a value whose segment was reused is detected instead of misread.
    header : tuple of (int, int)
        Offset and length of the pickle stream.
    buffers : tuple of (int, int)
        Offset and length of each out-of-band buffer, in pickle order.
    nbytes : int
        Bytes of the segment the value uses, from offset 0.
    """

    segment: str
    blob_id: int
    header: tuple[int, int]
    buffers: tuple[tuple[int, int], ...]
    nbytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentLease:
    """A free segment handed by the store to one writer for one value.

    Attributes
    ----------
    segment : str
        Absolute path of the segment file.
    capacity : int
        Size class of the segment; the writer uses it only for values of this class.
    """

    segment: str
    capacity: int


@dataclass(slots=True, eq=False)
class _Segment:
    path: str
    capacity: int  #: power-of-two size class; values of this class fit
    allocated: int  #: bytes of tmpfs memory the file holds (high-water mark)


def dumps_inline(obj: object) -> bytes:
    """Pickle ``obj`` in-band (protocol 5, cloudpickle) for sending in a message.

    Parameters
    ----------
    obj : object
        Any value cloudpickle can serialize.

    Returns
    -------
    bytes
        A complete pickle; :func:`load` or :func:`pickle.loads` reads it back.
    """
    return cloudpickle.dumps(obj, protocol=5)


def load(payload: BlobRef | bytes | bytearray | memoryview) -> object:
    """Rebuild a value from an inline pickle or from shared memory.

    Buffers are not copied: arrays come back as views of a private copy-on-write
    mapping, so they are writable and writes stay in this process. The mapping (and
    the shared lock that stops the owner from reusing the segment) lives exactly as
    long as some returned object references it. Unlinking the segment meanwhile is
    safe.

    Parameters
    ----------
    payload : BlobRef or bytes-like
        What :meth:`BlobStore.serialize` or :meth:`BlobWriter.serialize` returned.

    Returns
    -------
    object
        The value.

    Raises
    ------
    StaleBlobError
        The segment was unlinked or now holds another value.
    """
    if not isinstance(payload, BlobRef):
        return pickle.loads(payload)
    try:
        fd = os.open(payload.segment, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise StaleBlobError(f"{payload.segment} was released") from None
    try:
        # Blocks only while the owner rewrites a reused segment; see module docs.
        fcntl.flock(fd, fcntl.LOCK_SH)
        offset, length = payload.header
        head = _pread_all(fd, offset + length)
        if len(head) < offset + length or _STAMP.unpack_from(head) != (
            _MAGIC,
            payload.blob_id,
        ):
            raise StaleBlobError(f"{payload.segment} now holds another value")
        stream = memoryview(head)[offset:]
        if not payload.buffers:
            return pickle.loads(stream)
        # The mmap object dups fd, and with it the flock: it is released when the
        # last view of the mapping is garbage, not when we close fd below.
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


def sweep_stale_segments(directories: Iterable[str] | None = None) -> list[str]:
    """Remove segments left behind by cluster processes that no longer exist.

    A segment is removed when the pid in its name (``localsched-<pid>-...``) is not
    a live process. Files of other users and of live processes are kept; a reused
    pid errs on the side of keeping.

    Parameters
    ----------
    directories : iterable of str, optional
        Where to look; default /dev/shm and the disk fallback directory.

    Returns
    -------
    list of str
        Paths removed.
    """
    if directories is None:
        directories = [SHM_DIR, _fallback_path()]
    removed: list[str] = []
    uid = os.getuid()
    for directory in directories:
        for entry in _scan(directory, NAME_PREFIX):
            match = _NAME_RE.match(entry.name)
            if match is None or _pid_alive(int(match.group(1))):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile, by its owner or another sweep
            if stat.S_ISREG(st.st_mode) and st.st_uid == uid:
                _unlink_quietly([entry.path])
                removed.append(entry.path)
    return removed


class BlobStore:
    """Owner of shared-memory segments: writes, adopts, pools and unlinks them.

    Lives in the scheduler process. Methods are thread-safe; copies run outside the
    lock, so a background :meth:`prewarm` does not stall :meth:`put`.

    Parameters
    ----------
    token : str, optional
        Alphanumeric cluster token used in segment names; random by default.
    directory : str, optional
        Where segments go. Default /dev/shm, or a private temporary directory
        (with one :class:`SharedMemoryWarning`) when /dev/shm is missing or has less
        than ``min_shm_bytes`` free.
    max_free_bytes : int, optional
        Cap on memory held by released segments kept for reuse. Default
        ``min(1 GiB, free space / 4)``.
    min_shm_bytes : int
        Below this much free space /dev/shm counts as too small (Docker's default is
        64 MB).

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
        min_shm_bytes: int = 128 * _MiB,
    ) -> None:
        token = secrets.token_hex(4) if token is None else token
        if not token.isalnum():
            raise ValueError(f"token must be alphanumeric, got {token!r}")
        self.prefix = f"{NAME_PREFIX}{os.getpid()}-{token}-"
        self.directory = directory or _choose_directory(min_shm_bytes)
        if max_free_bytes is None:
            max_free_bytes = min(1 << 30, _free_space(self.directory) // 4)
        self.max_free_bytes = max_free_bytes
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._closed = False
        self._live: dict[str, tuple[int, _Segment]] = {}  # path -> (blob_id, segment)
        self._leased: dict[str, tuple[int, _Segment]] = {}  # path -> (holder, segment)
        self._free: dict[int, dict[str, _Segment]] = {}  # capacity -> LIFO bucket
        self._free_lru: dict[str, _Segment] = {}  # oldest first: eviction order
        self._free_bytes = 0
        # Shared with the finalizer, which must not hold a reference to self.
        self._directories = [self.directory]
        self._finalizer = weakref.finalize(
            self, _unlink_prefix, self.prefix, self._directories, os.getpid()
        )

    @property
    def free_bytes(self) -> int:
        """Memory held by released segments waiting for reuse."""
        return self._free_bytes

    def writer(self) -> BlobWriter:
        """Return a picklable :class:`BlobWriter` for this store's worker processes."""
        return BlobWriter(self.prefix, self.directory)

    def put(self, obj: object) -> BlobRef:
        """Serialize ``obj`` into one segment (one copy per buffer) and own it.

        Parameters
        ----------
        obj : object
            Any value cloudpickle can serialize.

        Returns
        -------
        BlobRef
            Readable by :func:`load` in any process until :meth:`release`.

        Raises
        ------
        RuntimeError
            The store is closed.
        """
        header, buffers = _pickle(obj)
        return self._store_pickled(header, buffers)

    def serialize(
        self, obj: object, threshold: int = INLINE_THRESHOLD
    ) -> bytes | BlobRef:
        """Pickle ``obj`` inline if it is small, else :meth:`put` it.

        Parameters
        ----------
        obj : object
            The value.
        threshold : int
            Values with fewer bytes (pickle plus buffers) are returned inline.

        Returns
        -------
        bytes or BlobRef
            Either way, :func:`load` reads it back.
        """
        return _serialize(obj, threshold, self._store_pickled)

    def release(self, ref: BlobRef) -> None:
        """Give up a value: keep its segment for reuse, or unlink it past the cap.

        A no-op once the store is closed.

        Raises
        ------
        KeyError
            ``ref`` is not a live value of this store (double release).
        """
        with self._lock:
            if self._closed:
                return
            entry = self._live.get(ref.segment)
            if entry is None or entry[0] != ref.blob_id:
                raise KeyError(f"not a live blob of this store: {ref.segment}")
            del self._live[ref.segment]
            self._add_free(entry[1])
            victims = self._trim(self.max_free_bytes)
        _unlink_quietly(victims)

    def adopt(self, ref: BlobRef) -> None:
        """Take ownership of a value a :class:`BlobWriter` wrote in another process.

        Raises
        ------
        ValueError
            The segment is not named by this store or is already owned by it.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("BlobStore is closed")
            if ref.segment in self._live:
                raise ValueError(f"already adopted: {ref.segment}")
            leased = self._leased.pop(ref.segment, None)
            if leased is not None:
                segment = leased[1]
            elif self._is_ours(ref.segment):
                segment = _Segment(ref.segment, _size_class(ref.nbytes), 0)
            else:
                raise ValueError(f"not a segment of this store: {ref.segment}")
            segment.allocated = max(segment.allocated, ref.nbytes)
            self._live[ref.segment] = (ref.blob_id, segment)

    def lease(self, nbytes: int, holder: int) -> SegmentLease | None:
        """Hand a free segment fitting ``nbytes`` to a writer, or None if none is free.

        Parameters
        ----------
        nbytes : int
            Expected size of the value the writer will produce.
        holder : int
            pid of the writer's process, for :meth:`reclaim`.
        """
        with self._lock:
            found = None if self._closed else self._take_free(_size_class(nbytes))
            if found is None:
                return None
            segment, fd = found
            os.close(fd)  # the writer re-takes the exclusive lock when it writes
            self._leased[segment.path] = (holder, segment)
        return SegmentLease(segment=segment.path, capacity=segment.capacity)

    def reclaim(self, holder: int) -> None:
        """Recover after writer ``holder`` exited: return its leases to the pool and
        unlink segments it created that were never adopted.

        Messages the writer sent must be handled (adopted) before this is called.
        """
        orphan_prefix = f"{self.prefix}{holder}."
        with self._lock:
            if self._closed:
                return
            for path, (who, segment) in list(self._leased.items()):
                if who == holder:
                    del self._leased[path]
                    if os.path.exists(path):
                        self._add_free(segment)
            victims = self._trim(self.max_free_bytes)
            live = set(self._live)
        for directory in list(self._directories):
            victims += [
                e.path for e in _scan(directory, orphan_prefix) if e.path not in live
            ]
        _unlink_quietly(victims)

    def prewarm(self, nbytes: int, segment_size: int | None = None) -> int:
        """Pre-fault free segments so the next puts run at reused-page speed.

        Safe to run in a background thread. Stops at the free-bytes cap, when
        /dev/shm is full, or when the store closes.

        Parameters
        ----------
        nbytes : int
            Free bytes wanted in the size class of ``segment_size``.
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
                bucket = self._free.get(capacity, {})
                if (
                    self._closed
                    or sum(s.allocated for s in bucket.values()) >= nbytes
                    or self._free_bytes + capacity > self.max_free_bytes
                ):
                    return created
                path = self._new_path(self.directory)
            try:
                fd = _create_file(path)
                try:
                    # tmpfs allocates (and zeroes) every page now, not on first write.
                    os.posix_fallocate(fd, 0, capacity)
                finally:
                    os.close(fd)
            except OSError as exc:
                _unlink_quietly([path])
                if exc.errno == errno.ENOSPC:
                    return created
                raise
            with self._lock:
                if self._closed:
                    _unlink_quietly([path])
                    return created
                self._add_free(_Segment(path, capacity, capacity))
            created += 1

    def close(self) -> None:
        """Unlink every segment with this store's prefix, adopted or not. Idempotent.

        Readers that still map a segment keep their data.
        """
        with self._lock:
            self._closed = True
            self._live.clear()
            self._leased.clear()
            self._free.clear()
            self._free_lru.clear()
            self._free_bytes = 0
        self._finalizer()

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<BlobStore {self.prefix}* in {self.directory}: {len(self._live)} live,"
            f" {self._free_bytes} bytes free>"
        )

    # Internals. _take_free, _add_free, _remove_free, _trim and _new_path expect
    # self._lock to be held.

    def _store_pickled(self, header: bytes, buffers: list[memoryview]) -> BlobRef:
        spans, nbytes = _layout(len(header), buffers)
        for attempt in range(3):
            with self._lock:
                if self._closed:
                    raise RuntimeError("BlobStore is closed")
                found = self._take_free(_size_class(nbytes)) if attempt == 0 else None
                if found is None:
                    directory = self.directory if attempt < 2 else self._fallback()
                    path = self._new_path(directory)
            if found is not None:
                segment, fd = found
            else:
                segment = _Segment(path, _size_class(nbytes), 0)
                fd = _create_file(path)
            try:
                ref = _write_blob(fd, segment.path, header, buffers, spans, nbytes)
            except OSError as exc:
                _unlink_quietly([segment.path])
                if exc.errno != errno.ENOSPC or attempt == 2:
                    raise
                with self._lock:  # memory the pool holds is the first to give back
                    victims = self._trim(0)
                _unlink_quietly(victims)
                continue
            finally:
                os.close(fd)  # also drops the exclusive lock of a reused segment
            with self._lock:
                if self._closed:
                    _unlink_quietly([segment.path])
                    raise RuntimeError("BlobStore is closed")
                segment.allocated = max(segment.allocated, nbytes)
                self._live[segment.path] = (ref.blob_id, segment)
            return ref
        raise AssertionError("unreachable")

    def _take_free(self, capacity: int) -> tuple[_Segment, int] | None:
        bucket = self._free.get(capacity)
        if not bucket:
            return None
        newest = itertools.islice(reversed(bucket.values()), _REUSE_ATTEMPTS)
        for segment in list(newest):
            try:
                fd = _lock_exclusive(segment.path)
            except FileNotFoundError:
                self._remove_free(segment)
                continue
            if fd is not None:  # None: a reader still maps it; try it again later
                self._remove_free(segment)
                return segment, fd
        return None

    def _add_free(self, segment: _Segment) -> None:
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

    def _new_path(self, directory: str) -> str:
        return os.path.join(directory, f"{self.prefix}{next(self._seq)}")

    def _fallback(self) -> str:
        directory = _fallback_path(create=True)
        if directory not in self._directories:
            self._directories.append(directory)
            _warn_fallback(f"{self.directory} is full")
        return directory

    def _is_ours(self, path: str) -> bool:
        directory, name = os.path.split(path)
        allowed = {*self._directories, _fallback_path()}
        return name.startswith(self.prefix) and directory in allowed


class BlobWriter:
    """Writes values into shared memory from a worker process, for a store to adopt.

    Picklable: send ``store.writer()`` to a worker when it starts. Each value goes
    into a granted lease of its size class when one is free (reused pages are
    faster), else into a fresh segment named ``<store prefix><pid>.<n>``. The
    worker owns the segment until the store adopts the ref; the store unlinks it on
    :meth:`BlobStore.reclaim` or :meth:`BlobStore.close` if that never happens.

    Parameters
    ----------
    prefix : str
        The store's :attr:`BlobStore.prefix`.
    directory : str
        The store's :attr:`BlobStore.directory`.
    """

    def __init__(self, prefix: str, directory: str) -> None:
        self.prefix = prefix
        self.directory = directory
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._leases: dict[int, list[SegmentLease]] = {}

    def __reduce__(self) -> tuple[type[BlobWriter], tuple[str, str]]:
        return (BlobWriter, (self.prefix, self.directory))

    def grant(self, lease: SegmentLease) -> None:
        """Accept a segment from :meth:`BlobStore.lease` for a later :meth:`write`."""
        with self._lock:
            self._leases.setdefault(lease.capacity, []).append(lease)

    def write(self, obj: object) -> BlobRef:
        """Serialize ``obj`` into shared memory; send the ref to the store to adopt.

        Returns
        -------
        BlobRef
            Hand it to :meth:`BlobStore.adopt` in the store's process.
        """
        header, buffers = _pickle(obj)
        return self._store_pickled(header, buffers)

    def serialize(
        self, obj: object, threshold: int = INLINE_THRESHOLD
    ) -> bytes | BlobRef:
        """Pickle ``obj`` inline if it is small, else :meth:`write` it.

        See :meth:`BlobStore.serialize`.
        """
        return _serialize(obj, threshold, self._store_pickled)

    def _store_pickled(self, header: bytes, buffers: list[memoryview]) -> BlobRef:
        spans, nbytes = _layout(len(header), buffers)
        target = self._take_lease(_size_class(nbytes))
        if target is None:
            target = self._fresh(self.directory)
        path, fd = target
        try:
            return _write_blob(fd, path, header, buffers, spans, nbytes)
        except OSError as exc:
            _unlink_quietly([path])
            if exc.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)
        directory = _fallback_path(create=True)
        _warn_fallback(f"{self.directory} is full")
        path, fd = self._fresh(directory)
        try:
            return _write_blob(fd, path, header, buffers, spans, nbytes)
        except BaseException:
            _unlink_quietly([path])
            raise
        finally:
            os.close(fd)

    def _take_lease(self, capacity: int) -> tuple[str, int] | None:
        with self._lock:
            leases = self._leases.get(capacity, [])
            for i, lease in enumerate(leases):
                try:
                    fd = _lock_exclusive(lease.segment)
                except FileNotFoundError:
                    fd = None
                if fd is not None:
                    del leases[i]
                    return lease.segment, fd
        return None

    def _fresh(self, directory: str) -> tuple[str, int]:
        name = f"{self.prefix}{os.getpid()}.{next(self._seq)}"
        path = os.path.join(directory, name)
        return path, _create_file(path)


def _pickle(obj: object) -> tuple[bytes, list[memoryview]]:
    buffers: list[memoryview] = []

    def keep_out_of_band(buffer: pickle.PickleBuffer) -> bool:
        buffers.append(buffer.raw())
        return False  # false means out-of-band: pickle must not copy it

    header = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep_out_of_band)
    return header, buffers


def _serialize(
    obj: object,
    threshold: int,
    store: Callable[[bytes, list[memoryview]], BlobRef],
) -> bytes | BlobRef:
    header, buffers = _pickle(obj)
    if len(header) + sum(b.nbytes for b in buffers) >= threshold:
        return store(header, buffers)
    # Without buffers the stream is already a complete pickle; with them, pickling
    # again in-band is cheap at this size and keeps inline payloads plain pickles.
    return header if not buffers else dumps_inline(obj)


def _layout(
    header_len: int, buffers: list[memoryview]
) -> tuple[tuple[tuple[int, int], ...], int]:
    end = _HEADER_OFFSET + header_len
    spans = []
    for buffer in buffers:
        # An empty buffer is not padded: the value's end must be a written byte,
        # or a reader's mmap of nbytes would reach past the end of the file.
        start = -(-end // _ALIGN) * _ALIGN if buffer.nbytes else end
        spans.append((start, buffer.nbytes))
        end = start + buffer.nbytes
    return tuple(spans), end


def _size_class(nbytes: int) -> int:
    return max(_MIN_CLASS, 1 << (nbytes - 1).bit_length())


def _write_blob(
    fd: int,
    path: str,
    header: bytes,
    buffers: list[memoryview],
    spans: tuple[tuple[int, int], ...],
    nbytes: int,
) -> BlobRef:
    blob_id = secrets.randbits(64)
    _pwrite_all(fd, _STAMP.pack(_MAGIC, blob_id), 0)
    _pwrite_all(fd, header, _HEADER_OFFSET)
    for (offset, _), buffer in zip(spans, buffers, strict=True):
        _pwrite_all(fd, buffer, offset)
    return BlobRef(
        segment=path,
        blob_id=blob_id,
        header=(_HEADER_OFFSET, len(header)),
        buffers=spans,
        nbytes=nbytes,
    )


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < view.nbytes:
        done += os.pwrite(fd, view[done : done + _MAX_IO], offset + done)


def _pread_all(fd: int, nbytes: int) -> bytes:
    chunks = []
    done = 0
    while done < nbytes:
        chunk = os.pread(fd, min(nbytes - done, _MAX_IO), done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _create_file(path: str) -> int:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask, so we can reopen it
    return fd


def _lock_exclusive(path: str) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlink_quietly(paths: Iterable[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _unlink_prefix(prefix: str, directories: list[str], owner_pid: int) -> None:
    # A forked child inherits this finalizer; only the owner may remove the files.
    if os.getpid() == owner_pid:
        for directory in directories:
            _unlink_quietly([e.path for e in _scan(directory, prefix)])


def _scan(directory: str, prefix: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return [e for e in entries if e.name.startswith(prefix)]
    except FileNotFoundError:
        return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except (OverflowError, ValueError):
        return False
    return True


def _free_space(directory: str) -> int:
    try:
        st = os.statvfs(directory)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _choose_directory(min_bytes: int) -> str:
    if os.access(SHM_DIR, os.W_OK | os.X_OK) and _free_space(SHM_DIR) >= min_bytes:
        return SHM_DIR
    directory = _fallback_path(create=True)
    _warn_fallback(f"{SHM_DIR} is missing or has less than {min_bytes} bytes free")
    return directory


def _fallback_path(create: bool = False) -> str:
    path = os.path.join(tempfile.gettempdir(), f"localsched-shm-{os.getuid()}")
    if create:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
        # A shared /tmp lets anyone pre-create this name; refuse one we do not own.
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise PermissionError(f"{path} is not a directory owned by this user")
        if st.st_mode & 0o077:
            os.chmod(path, 0o700)
    return path


def _warn_fallback(reason: str) -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"{reason}; shared-memory segments go to {_fallback_path()}, which is"
            " disk-backed and slower (give the machine a larger /dev/shm)",
            SharedMemoryWarning,
            stacklevel=3,
        )
