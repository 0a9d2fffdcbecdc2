"""Fast content hashes, for keys derived from data (``scatter(hash=True)``, pure calls).

xxhash's XXH3-128 when the ``xxhash`` package is installed (as dask's
``tokenize`` prefers it), else BLAKE2b-128. A key only needs to tell values
apart, not to resist an attacker, and XXH3 hashes a 200 MB array in about 12 ms
where BLAKE2b takes 0.5-0.8 s on this machine (measured: docs/benchmarks.md).
The choice is made once per process; every process of a cluster shares the
interpreter environment, so equal values get equal keys everywhere.
"""

from __future__ import annotations

import hashlib
import importlib
from types import ModuleType
from typing import Protocol

__all__ = ["ALGORITHM", "Hasher", "content_hasher"]


class Hasher(Protocol):
    """What both hash objects offer."""

    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...

    def copy(self) -> Hasher: ...


def _find_xxhash() -> ModuleType | None:
    try:
        return importlib.import_module("xxhash")
    except ImportError:
        return None


#: The xxhash module, None without it (a test sets None to check the fallback).
xxhash = _find_xxhash()

#: The hash :func:`content_hasher` uses in this process.
ALGORITHM = "blake2b-128" if xxhash is None else "xxh3-128"


def content_hasher(seed: bytes = b"") -> Hasher:
    """A new 128-bit hash object, fed ``seed`` first.

    Parameters
    ----------
    seed : bytes
        Bytes hashed before anything else (say, a function's token).

    Returns
    -------
    Hasher
        ``update`` with bytes-like objects, then ``hexdigest`` (32 hex digits).
    """
    if xxhash is None:
        return hashlib.blake2b(seed, digest_size=16)
    hasher: Hasher = xxhash.xxh3_128(seed)
    return hasher
