"""The write path the store and its writers share (see :mod:`.shm`).

:class:`BlobRef` says where a written value's parts are; :class:`_BlobSink`
pickles a value, picks a file (a reused segment, mapped if it can be, or a
fresh one), writes it and retries on a full /dev/shm. Kept apart from
:mod:`.shm` so that :mod:`.blob_writer` can subclass it.
"""

from __future__ import annotations

import abc
import errno
import os
import secrets
from dataclasses import dataclass

from localsched.transport import pickling
from localsched.transport.blob_format import (
    _HEADER_OFFSET,
    _layout,
    _pickle,
    _write_blob,
)
from localsched.transport.hashing import Hasher
from localsched.transport.segment_files import (
    _check_fits_in_memory,
    _create_file,
    _unlink_quietly,
    claim_directory,
)
from localsched.transport.segment_maps import SegmentMaps
from localsched.transport.spill import is_memory_backed

__all__ = ["INLINE_THRESHOLD", "BlobRef", "SegmentLease", "dumps_inline"]

#: Values whose pickle plus buffers take fewer bytes travel inline in messages.
INLINE_THRESHOLD = 64 * 1024


#: Values at least this large are checked against the memory available before
#: they are written (reading /proc/meminfo costs about 20 us).
_CHECK_MEMORY_FROM = 8 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobRef:
    """Where one serialized value lives; small enough for any message."""

    segment: str  #: absolute path of the segment file
    blob_id: int  #: random stamp, also written at the start of the segment
    header: tuple[int, int]  #: (offset, length) of the pickle stream
    buffers: tuple[tuple[int, int], ...]  #: (offset, length) of each buffer
    nbytes: int  #: bytes the value uses, from offset 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentLease:
    """A free segment the store hands to one writer (see :meth:`BlobStore.lease`)."""

    segment: str  #: absolute path of the segment file
    capacity: int  #: size class; the writer uses it for values of this class only


def dumps_inline(obj: object) -> bytes:
    """Pickle ``obj`` in-band (cloudpickle, protocol 5); :func:`load` reads it."""
    return pickling.dumps(obj, protocol=5)


class _BlobSink(abc.ABC):
    """Write path shared by the store and the writer: pick a file, write, retry."""

    directory: str
    fallback_directory: str
    #: Populated mappings of the segments this process reuses (segment_maps).
    maps: SegmentMaps
    _memory_backed: bool | None = None

    def serialize(
        self, obj: object, threshold: int = INLINE_THRESHOLD
    ) -> bytes | BlobRef:
        """Pickle ``obj`` inline if it is small, else write it to shared memory.

        Parameters
        ----------
        obj : object
            Any value cloudpickle can serialize.
        threshold : int
            Values with fewer bytes (pickle plus buffers) are returned inline.

        Returns
        -------
        bytes or BlobRef
            Either way, :func:`load` reads it back.
        """
        header, buffers = _pickle(obj)
        if len(header) + sum(b.nbytes for b in buffers) >= threshold:
            return self._write_pickled(header, buffers)
        # Without buffers the stream is already a whole pickle; with them, pickling
        # again in-band is cheap at this size and keeps inline payloads plain.
        return header if not buffers else dumps_inline(obj)

    def write_hashed(self, obj: object, hasher: Hasher) -> tuple[BlobRef, str]:
        """Write ``obj`` to shared memory, hashing its buffers as they are copied.

        Each piece is hashed right after its copy, from the cache: the key of a
        large scattered value costs no second pass over memory (a hash in a
        thread running beside the copy read the value from memory again).

        Parameters
        ----------
        obj : object
            The value.
        hasher : Hasher
            Fed ``obj``'s pickle stream, then (a copy of it, once per write
            attempt) each out-of-band buffer, in order.

        Returns
        -------
        tuple of BlobRef and str
            The ref, and the hex digest of ``hasher`` fed the buffers.
        """
        header, buffers = _pickle(obj)
        hasher.update(header)  # the dtype and shape tell equal bytes apart
        ref, fed = self._write(header, buffers, hasher)
        assert fed is not None
        return ref, fed.hexdigest()

    def _write_pickled(self, header: bytes, buffers: list[memoryview]) -> BlobRef:
        return self._write(header, buffers, None)[0]

    def _write(
        self, header: bytes, buffers: list[memoryview], hasher: Hasher | None
    ) -> tuple[BlobRef, Hasher | None]:
        spans, nbytes = _layout(len(header), buffers)
        if nbytes >= _CHECK_MEMORY_FROM and self._is_memory_backed():
            _check_fits_in_memory(nbytes)
        # Attempt 0 may reuse a segment; after ENOSPC, 1 is fresh once the store
        # gave back its free pool, and 2 goes to the disk fallback directory.
        for attempt in range(3):
            path, fd = self._open_target(nbytes, attempt)
            # A reused segment may be mapped, populated: a copy, not a pwrite.
            found = self.maps.acquire(path, fd, nbytes) if attempt == 0 else None
            fed = None if hasher is None else hasher.copy()  # a retry starts over
            try:
                blob_id = _write_blob(fd, header, buffers, spans, found, fed)
                size = os.fstat(fd).st_size
            except BaseException as exc:
                self._on_failed(path, nbytes)
                if not isinstance(exc, OSError) or exc.errno != errno.ENOSPC:
                    raise
                if attempt == 2:
                    raise
                self._on_full()
                continue
            finally:
                if found is not None:
                    self.maps.release(found)
                os.close(fd)  # also drops the exclusive lock of a reused segment
            ref = BlobRef(
                segment=path,
                blob_id=blob_id,
                header=(_HEADER_OFFSET, len(header)),
                buffers=spans,
                nbytes=nbytes,
            )
            return self._on_written(ref, size), fed
        raise AssertionError("unreachable")

    def _fresh(self, name: str, attempt: int) -> tuple[str, int]:
        directory = self.directory if attempt < 2 else self._fallback()
        path = os.path.join(directory, name)
        try:
            return path, _create_file(path)
        except FileExistsError:
            # Only ours can be there (a private directory): a file an earlier
            # process of the same pid left. Another name keeps the same prefix.
            path = f"{path}.{secrets.token_hex(4)}"
            return path, _create_file(path)

    def _fallback(self) -> str:
        # Only the store warns (also for a worker's fallback, seen on adopt):
        # one warning for the cluster, not one per worker process.
        return claim_directory(self.fallback_directory)

    def _on_failed(self, path: str, nbytes: int) -> None:
        """Writing a value into ``path`` failed: drop the file."""
        self._unlink([path])

    def _unlink(self, paths: list[str]) -> None:
        """Unmap and unlink files (a mapping would keep an unlinked file's memory)."""
        self.maps.drop(paths)
        _unlink_quietly(paths)

    def _is_memory_backed(self) -> bool:
        backed = self._memory_backed
        if backed is None:
            backed = self._memory_backed = is_memory_backed(self.directory)
        return backed

    @abc.abstractmethod
    def _open_target(self, nbytes: int, attempt: int) -> tuple[str, int]:
        """A file for an ``nbytes`` blob, opened and locked: ``(path, fd)``."""

    def _on_full(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """/dev/shm is full: the store gives back its free pool (writers can't)."""

    def _on_written(self, ref: BlobRef, size: int) -> BlobRef:
        return ref
