"""How a value is laid out in a segment and written (see :mod:`.shm`).

::

    0: magic + blob_id   64: pickle stream   then each buffer, 64-byte aligned
"""

from __future__ import annotations

import mmap
import pickle
import secrets
import struct

from localsched.transport import pickling
from localsched.transport.segment_files import _Hasher, _pwrite_all
from localsched.transport.segment_maps import _Map, copy_into

_ALIGN = 64  # buffers start on a cache line, which satisfies any numpy dtype
_HEADER_OFFSET = 64
_STAMP = struct.Struct("<8sQ")
_MAGIC = b"LSBLOB01"


def _pickle(obj: object) -> tuple[bytes, list[memoryview]]:
    buffers: list[memoryview] = []

    def keep_out_of_band(buffer: pickle.PickleBuffer) -> bool:
        buffers.append(buffer.raw())
        return False  # false means out-of-band: pickle must not copy it

    header = pickling.dumps(obj, protocol=5, buffer_callback=keep_out_of_band)
    return header, buffers


def _layout(
    header_len: int, buffers: list[memoryview]
) -> tuple[tuple[tuple[int, int], ...], int]:
    end = _HEADER_OFFSET + header_len
    spans = []
    for buffer in buffers:
        # No padding before an empty buffer: the value must end on a written byte,
        # or a reader's mmap of nbytes would reach past the end of the file.
        start = -(-end // _ALIGN) * _ALIGN if buffer.nbytes else end
        spans.append((start, buffer.nbytes))
        end = start + buffer.nbytes
    return tuple(spans), end


def _size_class(nbytes: int) -> int:
    return max(mmap.PAGESIZE, 1 << (nbytes - 1).bit_length())


def _write_blob(
    fd: int,
    header: bytes,
    buffers: list[memoryview],
    spans: tuple[tuple[int, int], ...],
    mapping: _Map | None = None,
    hasher: _Hasher | None = None,
) -> int:
    """Write a stamp, the pickle stream and the buffers; return the stamp's id.

    The buffers are copied through ``mapping`` if given (a populated shared
    mapping of ``fd``'s file, see :mod:`.segment_maps`), else with ``pwrite``,
    and fed to ``hasher`` (if given) as they are copied.
    """
    blob_id = secrets.randbits(64)
    _pwrite_all(fd, _STAMP.pack(_MAGIC, blob_id), 0)
    _pwrite_all(fd, header, _HEADER_OFFSET)
    for (offset, _), buffer in zip(spans, buffers, strict=True):
        if mapping is None:
            _pwrite_all(fd, buffer, offset, hasher)
        else:
            copy_into(mapping.address, mapping.length, offset, buffer, hasher=hasher)
    return blob_id
