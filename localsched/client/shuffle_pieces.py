"""What a shuffle's ``group`` task returns on localsched: one frame, not ``n``.

dask's task shuffle splits each input partition with ``shuffle_group``: it
sorts the rows by output partition (``groupsort_indexer``, a stable counting
sort), takes them (``df.take``) and returns a dict of ``n`` row slices of that
one sorted frame, one per output partition. Each slice of a 2-D block is a
strided view, so pickling the dict copies every piece and writes ``n`` frames
with ``n`` headers; each reader then rebuilds all ``n`` frames (0.3-0.8 ms of
pandas each) to keep one.

:func:`shuffle_group_pieces` computes the same sort and returns
:class:`ShufflePieces`: the sorted frame and the offsets of its pieces. It
pickles as one frame whose column blocks are contiguous (protocol 5 keeps them
out of band: written once into shared memory, mapped by readers), and
``pieces[i]`` is the same row slice that dask's dict holds at ``i``. The
client puts it in place of dask's function (:func:`localsched.client.
dask_shuffle.pack_shuffle_groups`) only where every reader of the group is a
``getitem``, so every value the graph computes from it is dask's.

This module runs on workers: it imports pandas and dask when a task calls it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["ShufflePieces", "group_function", "select_piece", "shuffle_group_pieces"]


class ShufflePieces(Mapping[int, Any]):
    """Output partition -> piece, for one input partition of a shuffle.

    Parameters
    ----------
    frame
        The input partition's rows, sorted (stably) by output partition.
    offsets
        ``k + 1`` row offsets: piece ``i`` is ``frame.iloc[offsets[i]:offsets[i + 1]]``.
    ignore_index
        Pieces get a fresh ``RangeIndex``, as dask's with ``ignore_index``.
    keys
        The output partitions held (dask's ``_filter``), ``range(k)`` for all.
    """

    __slots__ = ("frame", "ignore_index", "keys_", "offsets")

    def __init__(
        self, frame: Any, offsets: Any, ignore_index: bool, keys: range | frozenset[int]
    ) -> None:
        self.frame = frame
        self.offsets = offsets
        self.ignore_index = ignore_index
        self.keys_ = keys

    def __getitem__(self, i: int) -> Any:
        if i not in self.keys_:
            raise KeyError(i)
        piece = self.frame.iloc[int(self.offsets[i]) : int(self.offsets[i + 1])]
        return piece.reset_index(drop=True) if self.ignore_index else piece

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.keys_) if type(self.keys_) is frozenset else self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            ShufflePieces,
            (self.frame, self.offsets, self.ignore_index, self.keys_),
        )

    def __repr__(self) -> str:
        return f"<ShufflePieces: {len(self)} pieces of {len(self.frame)} rows>"


def select_piece(pieces: Mapping[int, Any], i: int) -> Any:
    """``pieces[i]`` (dask's ``split``), as a new object: the worker may hand one
    ``pieces`` to many tasks (``localsched.worker.shared_inputs``), and what a
    task does to its piece must not reach the others. A ``ShufflePieces``
    slice is new (pandas copies it on write); a piece of dask's own dict
    (frames that are not pandas) is copied shallowly."""
    piece = pieces[i]
    return piece if type(pieces) is ShufflePieces else copy.copy(piece)


def group_function() -> Callable[..., Any] | None:
    """dask's ``group`` function of the task shuffle (the one
    :func:`shuffle_group_pieces` replaces), or None if dask moved it or pandas
    lost the sort both use: then the client leaves dask's groups alone."""
    import sys

    module = sys.modules.get("dask.dataframe.dask_expr._shuffle")
    simple = getattr(module, "SimpleShuffle", None)
    function = getattr(simple, "_shuffle_group", None)
    # The sort dask's pandas backend uses too (a private name of pandas').
    algos = getattr(getattr(sys.modules.get("pandas"), "_libs", None), "algos", None)
    if not hasattr(algos, "groupsort_indexer"):
        return None
    return function if callable(function) else None


def shuffle_group_pieces(
    df: Any,
    _filter: Any,
    cols: Any,
    stage: int,
    k: int,
    npartitions: int,
    ignore_index: bool,
    nfinal: int,
) -> Any:
    """dask's ``SimpleShuffle._shuffle_group`` (same arguments), returning
    :class:`ShufflePieces` for a pandas DataFrame and dask's own dict otherwise.

    The output index of each row is computed as ``dask.dataframe.shuffle.
    shuffle_group`` does; ``tests/runtime/test_dask_shuffle.py`` compares the
    pieces with dask's for every branch, so a change in dask shows there.
    """
    import numpy as np
    import pandas as pd

    if type(df) is not pd.DataFrame:
        original = group_function()
        if original is None:  # unreachable: the client checked before rewriting
            raise RuntimeError("dask's shuffle_group moved")
        return original(df, _filter, cols, stage, k, npartitions, ignore_index, nfinal)
    from dask.dataframe.dispatch import hash_object_dispatch

    if isinstance(cols, str):
        cols = [cols]
    if cols and cols[0] == "_partitions":
        index = df[cols[0]]
    else:
        index = hash_object_dispatch(df[cols] if cols else df, index=False)
        if nfinal and nfinal != npartitions:
            index = index % int(nfinal)
    kind = np.min_scalar_type(npartitions * 2)
    index = (index % npartitions).astype(kind) // k**stage % k
    codes = np.asarray(index).astype(np.intp, copy=False)
    indexer, counts = pd._libs.algos.groupsort_indexer(codes, k)
    keys: range | frozenset[int] = range(k)
    if _filter is not None:
        keys = frozenset(int(i) for i in _filter if 0 <= i < k)
    return ShufflePieces(df.take(indexer), counts.cumsum(), ignore_index, keys)
