"""The worker's side of the store: :class:`BlobWriter` (see :mod:`.shm`)."""

from __future__ import annotations

import itertools
import os
import threading

from localsched.transport.blob_format import _pickle, _size_class
from localsched.transport.blob_sink import BlobRef, SegmentLease, _BlobSink
from localsched.transport.segment_files import _lock_exclusive, _unlink_quietly
from localsched.transport.segment_maps import BackgroundMapper, SegmentMaps
from localsched.transport.shm_pool import WARM_FROM

__all__ = ["BlobWriter"]

#: Leased segments a writer remembers having written (see BlobWriter.discard);
#: a dropped value is one of the last few written, far fewer than this.
_WRITTEN_LEASES_KEPT = 1024
#: Segments a writer keeps mapped: its leases (at most 4, see the runtime's
#: MAX_LEASES_PER_WORKER) and the few it wrote last.
_WRITER_MAPS = 8


class BlobWriter(_BlobSink):
    """Writes values into shared memory in a worker process, for the store to adopt.

    Picklable (leases stay behind): send ``store.writer()`` to a worker as it
    starts. A value goes into a granted lease of its size class if one is free
    (reused pages are faster), else into a fresh segment named
    ``<store prefix><owner>.<n>``, the owner being the writing process's pid
    unless one is given (workers that are threads of one process each need
    their own: their names must not collide, nor one's reclaim take another's).
    The worker owns it until the store adopts the ref (also a ref from
    :meth:`serialize`); :meth:`BlobStore.reclaim` or
    :meth:`BlobStore.close` unlink it if that never happens.

    Parameters
    ----------
    prefix : str
        :attr:`BlobStore.prefix` of the store.
    directory : str
        :attr:`BlobStore.directory` of the store.
    fallback_directory : str, optional
        :attr:`BlobStore.fallback_directory` of the store; default
        ``directory`` (a full directory then fails the write with ``ENOSPC``).
    owner : str, optional
        Names its segments; default the pid of the process that writes.
    """

    def __init__(
        self,
        prefix: str,
        directory: str,
        fallback_directory: str | None = None,
        owner: str | None = None,
    ) -> None:
        self.prefix = prefix
        self.owner = owner
        self.directory = directory
        self.fallback_directory = fallback_directory or directory
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._leases: dict[int, list[SegmentLease]] = {}
        # Leased segments written lately, newest last: a value dropped before
        # the store adopted it goes back to the leases, not to unlink().
        self._written_leases: dict[str, SegmentLease] = {}
        # Leases are mapped in a thread as they arrive; a mapping stays for the
        # next lease of the same segment (the store leases a freed result's
        # segment back to its writer) until the store unlinks the file.
        self.maps = SegmentMaps(max_maps=_WRITER_MAPS, populate=False)
        self._mapper = BackgroundMapper(self.maps)

    def __reduce__(
        self,
    ) -> tuple[type[BlobWriter], tuple[str, str, str, str | None]]:
        return (
            BlobWriter,
            (self.prefix, self.directory, self.fallback_directory, self.owner),
        )

    def grant(self, lease: SegmentLease) -> None:
        """Accept a segment from :meth:`BlobStore.lease` for a later :meth:`write`."""
        with self._lock:
            self._leases.setdefault(lease.capacity, []).append(lease)
        if lease.capacity >= WARM_FROM:
            self._mapper.request(lease.segment)

    def write(self, obj: object) -> BlobRef:
        """Serialize ``obj`` into shared memory; the store must :meth:`adopt` the ref.

        Returns
        -------
        BlobRef
            Send it to the store's process for :meth:`BlobStore.adopt`.
        """
        return self._write_pickled(*_pickle(obj))

    def discard(self, ref: BlobRef) -> None:
        """Drop a value the store will never adopt (its task was forgotten).

        A segment the store leased stays leased: it goes back to the leases for
        the next value of its size, so the store's count of leased segments
        stays true (unlinking it would leave the store counting a file that no
        longer exists). A segment this writer made is unlinked. Call it for a
        ref of this writer only.
        """
        self._on_failed(ref.segment, ref.nbytes)

    def _on_failed(self, path: str, nbytes: int) -> None:
        with self._lock:
            lease = self._written_leases.pop(path, None)
        if lease is None:
            _unlink_quietly([path])  # made here: nobody else counts it
        else:
            self.grant(lease)  # still leased: the store counts it as such

    def _open_target(self, nbytes: int, attempt: int) -> tuple[str, int]:
        with self._lock:
            leases = self._leases.get(_size_class(nbytes), []) if attempt == 0 else []
            for lease in list(leases):
                try:
                    fd = _lock_exclusive(lease.segment)
                except OSError:
                    leases.remove(lease)  # the store closed or reclaimed it
                    continue
                if fd is not None:  # None: a stale reader holds it; keep for later
                    leases.remove(lease)
                    written = self._written_leases
                    written.pop(lease.segment, None)
                    written[lease.segment] = lease
                    if len(written) > _WRITTEN_LEASES_KEPT:  # adopted long ago
                        del written[next(iter(written))]
                    return lease.segment, fd
        owner = os.getpid() if self.owner is None else self.owner
        return self._fresh(f"{self.prefix}{owner}.{next(self._seq)}", attempt)
