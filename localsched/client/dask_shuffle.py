"""dask's task-based shuffle over shared memory: one blob per input partition.

dask's ``"tasks"`` shuffle (``dataframe.shuffle.method``, which a current
localsched client sets) splits each input partition ``j`` into a dict of
pieces (``group-…, j``), selects each piece with a ``getitem`` task
(``split-…, i, j``) and concatenates the pieces of each output partition
(``_concat``)::

    input j ─▶ group j ─▶ split i,j ─▶ concat i          (n² split tasks)

Under dask.distributed a split is a dict lookup in a worker's memory. Here each
result crosses processes through shared memory: a split unpickled the whole
dict to keep one piece (16 ms for 20 small DataFrames, pandas rebuilding each),
pickled and wrote that piece into a blob of its own (about 1.5 ms for 100 kB,
most of it pandas' pickling and a fresh file), and the concat read ``n`` of
them back, so the pieces, not the data, set the cost. :func:`inline_splits`
puts each split inside its one reader instead::

    input j ─▶ group j ─▶ concat i = _concat([group_0[i], group_1[i], ...])

and :func:`reads_inputs_only` tells the client that such a concat (and a lone
split) never changes its inputs, so the worker unpickles each group dict once
for all the concats it runs (:mod:`localsched.worker.shared_inputs`). A piece
is then never pickled at all: the group dicts are written once and mapped.

Both functions look at dask's task-spec nodes only (``dask._task_spec``), and
the rewrite keeps every value the graph computes the same: a split that only
one task reads is computed inside that task instead of on its own. The result
equals dask's (``tests/runtime/test_dask_shuffle.py``).
"""

from __future__ import annotations

import operator
from collections.abc import Hashable
from typing import Any

__all__ = [
    "inline_splits",
    "is_selection",
    "pack_shuffle_groups",
    "reads_inputs_only",
]

Key = Hashable


def _is_concat(func: Any) -> bool:
    # dask.dataframe.core._concat, named so that dask.dataframe is not imported.
    return (
        getattr(func, "__name__", None) == "_concat"
        and getattr(func, "__module__", None) == "dask.dataframe.core"
    )


def _is_list_builder(node: Any) -> bool:
    """dask's node for a list of nodes (``List``): ``_identity_cast(*items,
    typ=list)``. A private name of dask's: if it goes, nothing is rewritten."""
    from dask import _task_spec

    return (
        type(node) is _task_spec.Task
        and node.func is getattr(_task_spec, "_identity_cast", None)
        and node.kwargs.get("typ") is list
        and len(node.kwargs) == 1
    )


def _is_reference(arg: Any) -> bool:
    from dask._task_spec import Alias, TaskRef

    return type(arg) in (TaskRef, Alias)


def is_selection(node: Any) -> bool:
    """``getitem(dependency, constant)``, computing nothing else (a nested task
    could change the value it reads)."""
    from dask._task_spec import GraphNode, Task

    if type(node) is not Task or node.func is not operator.getitem or node.kwargs:
        return False
    # dask wraps a container holding references in a node (``List``...), so
    # any other argument is a constant.
    return all(
        _is_reference(arg) or not isinstance(arg, GraphNode) for arg in node.args
    )


def reads_inputs_only(node: Any) -> bool:
    """Whether ``node`` returns a value without changing its inputs: a
    selection, or dask's ``_concat`` of references and selections."""
    if is_selection(node):
        return True
    if not _is_concat(getattr(node, "func", None)) or not node.args:
        return False
    pieces, *rest = node.args
    return (
        _is_list_builder(pieces)
        and all(_is_reference(arg) or is_selection(arg) for arg in pieces.args)
        and not any(_is_reference(arg) for arg in rest)
        and not node.kwargs
    )


def inline_splits(nodes: dict[Any, Any], wanted: set[Key]) -> dict[Any, Any]:
    """``nodes`` with each selection that only one ``_concat`` reads computed
    inside that concat (see the module docstring); other nodes are unchanged.

    Parameters
    ----------
    nodes
        dask task-spec nodes by key (``convert_legacy_graph``'s output).
    wanted
        Keys the caller wants: never inlined, since they need results of their
        own.
    """
    from dask._task_spec import Task

    readers: dict[Key, int] = {}
    for node in nodes.values():
        for dep in node.dependencies:
            readers[dep] = readers.get(dep, 0) + 1

    def inlinable(arg: Any) -> bool:
        if not _is_reference(arg):
            return False
        key = arg.key
        return (
            key not in wanted and readers.get(key) == 1 and is_selection(nodes.get(key))
        )

    out = dict(nodes)
    for key, node in nodes.items():
        if type(node) is not Task or not _is_concat(node.func) or not node.args:
            continue
        pieces = node.args[0]
        if not _is_list_builder(pieces) or not any(map(inlinable, pieces.args)):
            continue
        args = []
        for arg in pieces.args:
            if inlinable(arg):
                split = nodes[arg.key]
                args.append(Task(None, operator.getitem, *split.args))
                out.pop(arg.key, None)
            else:
                args.append(arg)
        listed = Task(None, pieces.func, *args, **pieces.kwargs)
        out[key] = Task(key, node.func, listed, *node.args[1:], **node.kwargs)
    return out


def pack_shuffle_groups(nodes: dict[Any, Any], wanted: set[Key]) -> dict[Any, Any]:
    """``nodes`` with each task shuffle ``group`` node computing
    :class:`~localsched.client.shuffle_pieces.ShufflePieces` (one sorted frame
    and offsets) instead of dask's dict of pieces.

    Only groups that every reader selects from (``getitem`` with a constant:
    dask's ``split`` nodes) and that the caller does not want are changed:
    ``pieces[i]`` equals the dict's ``[i]``, so every other value stays dask's.
    With no ``group`` function where dask kept it, nothing changes.
    """
    from dask._task_spec import Task

    from localsched.client.shuffle_pieces import group_function, shuffle_group_pieces

    original = group_function()
    if original is None:
        return nodes
    groups = {
        key
        for key, node in nodes.items()
        if type(node) is Task and node.func is original and key not in wanted
    }
    if not groups:
        return nodes
    for node in nodes.values():
        if groups.isdisjoint(node.dependencies):
            continue
        selects = (
            is_selection(node)
            and len(node.args) == 2
            and _is_reference(node.args[0])
            and not _is_reference(node.args[1])
        )
        if not selects:
            groups -= node.dependencies  # read otherwise: keep dask's dict
    out = dict(nodes)
    for key in groups:
        node = nodes[key]
        out[key] = Task(key, shuffle_group_pieces, *node.args, **node.kwargs)
    return out
