"""``sizeof``: a result's size in memory, as dask counts it (``TaskState.nbytes``).

dask's workers report ``dask.sizeof.sizeof(result)``, not the size of its
serialized form; ``Client.nbytes`` and the scheduler's memory figures add those
up. When the worker process has imported dask (every task from a dask
collection does), its ``sizeof`` is used, extensions registered by libraries
included. Otherwise, rather than paying dask's import for the first result of a
dask-free task, the same rules for Python's own types apply here: a container
counts itself plus its items (sampling ten of a larger one, as dask does),
bytes count their length, a numpy array its data.
"""

from __future__ import annotations

import itertools
import logging
import random
import sys
from array import array
from typing import Any

__all__ = ["sizeof"]

logger = logging.getLogger(__name__)

#: What a value whose size cannot be measured counts for (distributed's
#: ``safe_sizeof`` default).
DEFAULT_SIZE = 1_000_000

_SAMPLES = 10


def sizeof(value: Any) -> int:
    """Bytes ``value`` takes in memory, by dask's rules; never raises."""
    try:
        if "dask" in sys.modules:
            from dask.sizeof import sizeof as dask_sizeof

            return int(dask_sizeof(value))
        return _sizeof(value)
    except Exception:
        logger.warning("Sizeof calculation failed; defaulting to %d", DEFAULT_SIZE)
        return DEFAULT_SIZE


#: Types whose size ``sys.getsizeof`` gives, tested first (most results).
_ATOMS = frozenset({int, float, str, bool, type(None), complex})


def _sizeof(value: Any) -> int:
    kind = type(value)
    if kind in _ATOMS:
        return sys.getsizeof(value)
    if kind is bytes or kind is bytearray:
        return len(value)
    if kind is memoryview:
        return int(value.nbytes)
    if kind is array:
        return int(value.itemsize * len(value))
    if kind in (list, tuple, set, frozenset):
        return sys.getsizeof(value) + _items(value)
    if kind is dict:
        empty = sys.getsizeof([])
        return (
            sys.getsizeof(value)
            + sys.getsizeof(list(value))
            - empty
            + _items(list(value))
            + sys.getsizeof(list(value.values()))
            - empty
            + _items(list(value.values()))
        )
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        if 0 in value.strides:  # a broadcast view holds one row of data
            value = value[tuple(slice(None) if s else slice(1) for s in value.strides)]
        return int(value.nbytes)
    return sys.getsizeof(value)


def _items(seq: Any) -> int:
    """The items' sizes, estimated from ten of them when there are more."""
    n = len(seq)
    if n <= _SAMPLES:
        return sum(map(_sizeof, seq))
    if isinstance(seq, set | frozenset):
        samples: Any = itertools.islice(seq, _SAMPLES)
    else:
        samples = random.sample(seq, _SAMPLES)
    return int(n / _SAMPLES * sum(map(_sizeof, samples)))
