"""dask's task-based shuffle over shared memory: one blob per input partition.

dask's ``"tasks"`` shuffle (``dataframe.shuffle.method``, which a current
localsched client sets) splits each input partition ``j`` into a dict of
pieces (``group-…, j``), selects each piece with a ``getitem`` task
(``split-…, i, j``) and concatenates the pieces of each output partition
(``_concat``), after the blockwise steps that compute each row's output
partition and before those that use the result::

    input j ─▶ assign ─▶ index ─▶ group j ─▶ split i,j ─▶ concat i ─▶ drop column

Under dask.distributed a result stays in a worker's memory. Here each crosses
processes through shared memory (pickled, written, mapped, unpickled), so the
number of results and of frames in them, not the data, set the cost. The
client rewrites the graph in three steps, each keeping every value a wanted
key gets equal to dask's:

1. :func:`pack_shuffle_groups`: a ``group`` computes the same sort as dask's
   and returns :class:`~localsched.client.shuffle_pieces.ShufflePieces` (the
   sorted partition and its offsets: one frame to write and to read, not ``n``
   strided slices), and its splits select with ``select_piece``.
2. :func:`inline_splits`: a split that only one concat reads runs inside it
   (``n²`` fewer tasks, and no piece is ever pickled).
3. :func:`fuse_shuffle_chains`: the blockwise steps before a ``group`` (a
   chain, or the partition's steps only it reads, as ``set_index``'s) and
   after a ``concat`` (and a merge of two shuffled sides) run in the same task
   as it, each as a nested task where its reader referred to it once, so only
   the task's result is stored::

    input j ─▶ [assign, index, group j] ─▶ [concat i of every pieces[i], drop column]

:func:`reads_inputs_only` tells the worker which tasks never change their
inputs (a selection, a concat of them, a chain that reads its inputs only
through ``select_piece``): it unpickles each group once for all such tasks
(:mod:`localsched.worker.shared_inputs`).

The functions look at dask's task-spec nodes only (``dask._task_spec``); where
a private name of dask's they rely on moved, they change nothing. The results
equal dask's (``tests/runtime/test_dask_shuffle.py``).
"""

from __future__ import annotations

import operator
from collections.abc import Hashable, Iterable
from typing import Any

from localsched.client.shuffle_pieces import (
    group_function,
    select_piece,
    shuffle_group_pieces,
)

__all__ = [
    "fuse_shuffle_chains",
    "inline_splits",
    "is_selection",
    "pack_shuffle_groups",
    "reads_inputs_only",
    "skip_aliases",
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


#: Functions of a selection: ``dependency[constant]``.
SELECTORS = (operator.getitem, select_piece)


def is_selection(node: Any) -> bool:
    """``getitem(dependency, constant)`` (or ``select_piece``), computing
    nothing else (a nested task could change the value it reads)."""
    from dask._task_spec import GraphNode, Task

    if type(node) is not Task or node.func not in SELECTORS or node.kwargs:
        return False
    # dask wraps a container holding references in a node (``List``...), so
    # any other argument is a constant.
    return all(
        _is_reference(arg) or not isinstance(arg, GraphNode) for arg in node.args
    )


def reads_inputs_only(node: Any) -> bool:
    """Whether ``node`` returns a value without changing its inputs: a
    selection, dask's ``_concat`` of references and selections (its value is
    pickled as soon as it is made), or a task that reads every input only
    through ``select_piece``, which returns a new object (a fused chain)."""
    if is_selection(node):
        return True
    if _is_concat(getattr(node, "func", None)) and node.args:
        pieces, *rest = node.args
        if (
            _is_list_builder(pieces)
            and all(_is_reference(arg) or is_selection(arg) for arg in pieces.args)
            and not any(_is_reference(arg) for arg in rest)
            and not node.kwargs
        ):
            return True
    return bool(node.dependencies) and _selects_pieces_only(node)


def _selects_pieces_only(node: Any) -> bool:
    """Whether every reference in ``node`` (nested tasks included) is the
    ``pieces`` of a ``select_piece(pieces, constant)``."""
    from dask._task_spec import GraphNode, Task

    if _is_reference(node):
        return False
    if isinstance(node, list | tuple | set | frozenset):
        return all(map(_selects_pieces_only, node))
    if isinstance(node, dict):
        return all(map(_selects_pieces_only, node.values()))
    if not isinstance(node, GraphNode):
        return True  # a constant
    if type(node) is not Task:
        return not node.dependencies  # another node kind: only without inputs
    if node.func is select_piece:
        return is_selection(node) and not _is_reference(node.args[1])
    return all(map(_selects_pieces_only, (*node.args, *node.kwargs.values())))


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
                args.append(Task(None, split.func, *split.args))
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
    Their ``split`` nodes then call ``select_piece``. With no ``group``
    function where dask kept it, nothing changes.
    """
    from dask._task_spec import Task

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
    for key, node in nodes.items():
        if not groups.isdisjoint(node.dependencies):
            out[key] = Task(key, select_piece, *node.args)
    return out


def fuse_shuffle_chains(nodes: dict[Any, Any], keep: set[Key]) -> dict[Any, Any]:
    """``nodes`` with each linear chain through a shuffle's ``group`` or
    ``_concat`` node computed as one task, keyed by the chain's last key.

    A chain is a run of tasks where each one is the only reader of the one
    before and that one its only dependency: the blockwise steps that feed a
    ``group`` (``assign``, the partitioning index...) and those that follow a
    ``_concat`` (dropping the ``_partitions`` column, ``sort_index``...). Run
    apart, each step pickles its whole partition into shared memory for the
    next one to map and unpickle; fused, only the chain's result is stored.
    Each step becomes a nested task of the next one
    (``GraphNode.substitute``), so the chain's value is the same.

    A task of partition ``i`` that reads several shuffle outputs of partition
    ``i`` (``merge``'s two sides), each read by it alone, computes them too:
    they are made from pieces of the groups, which the worker shares, so no
    output partition is stored before the join. Keys in ``keep`` (wanted or
    annotated) are never fused away.
    """
    from dask._task_spec import Task

    original = _group_functions()

    def is_task(key: Key) -> bool:
        node = nodes.get(key)
        return type(node) is Task and not node.block_fusion

    readers: dict[Key, list[Key]] = {}
    for key, node in nodes.items():
        for dep in node.dependencies:
            readers.setdefault(dep, []).append(key)
    previous: dict[Key, Key] = {}  # a step -> the step before it in its chain
    for key, node in nodes.items():
        if not is_task(key) or len(node.dependencies) != 1:
            continue
        (dep,) = node.dependencies
        single = len(readers.get(dep, ())) == 1 and _count_references(node, dep) == 1
        if is_task(dep) and dep not in keep and single:
            previous[key] = dep
    followed = set(previous.values())
    out = dict(nodes)
    #: Shuffle outputs: the (fused) tasks that end with or after a ``_concat``.
    outputs = {k for k, node in nodes.items() if is_task(k) and _is_concat(node.func)}
    for last in previous:
        if last in followed:
            continue  # not the end of its chain
        chain = [last]
        while chain[-1] in previous:
            chain.append(previous[chain[-1]])
        chain.reverse()
        if not any(
            _is_concat(nodes[k].func) or nodes[k].func in original for k in chain
        ):
            continue
        fused = nodes[chain[0]]
        for key in chain[1:]:
            fused = nodes[key].substitute({fused.key: fused})
        for key in chain[:-1]:
            out.pop(key, None)
            outputs.discard(key)
        out[last] = fused
        if any(_is_concat(nodes[k].func) for k in chain):
            outputs.add(last)
    _fuse_into_groups(out, keep, original)
    for key, node in list(out.items()):
        if type(node) is not Task or node.block_fusion or len(node.dependencies) < 2:
            continue
        inputs = {
            dep: out[dep]
            for dep in node.dependencies
            if dep in outputs
            and _same_partition(dep, key)
            and dep not in keep
            and readers.get(dep) == [key]
            and _count_references(node, dep) == 1
        }
        if inputs:
            out[key] = node.substitute(inputs)
            for dep in inputs:
                del out[dep]
    return out


def _fuse_into_groups(out: dict[Any, Any], keep: set[Key], groups: Any) -> None:
    """Compute in each (fused) ``group`` task of input partition ``i`` the
    tasks of keys ``(name, i)`` that only it reads, directly or through them.

    The steps before a group are not always a chain: ``set_index`` reads the
    partition twice (its column for ``set_partitions_pre``, and the partition
    to assign the result to), a diamond that linear fusion leaves as three
    tasks storing their results. Only keys of the group's own partition are
    taken, so a reduction feeding the shuffle keeps its parallel tasks.
    """
    from dask._task_spec import Task

    readers: dict[Key, set[Key]] = {}
    for key, node in out.items():
        for dep in node.dependencies:
            readers.setdefault(dep, set()).add(key)
    for key in list(out):
        node = out.get(key)  # None: fused into an earlier group
        if type(node) is not Task or node.func not in groups:
            continue
        if type(key) is not tuple or len(key) != 2:
            continue
        pending = set(node.dependencies)
        while pending:
            dep = pending.pop()
            inner = out.get(dep)
            if (
                type(inner) is not Task
                or inner.block_fusion
                or dep in keep
                or not _same_partition(dep, key)
                or readers.get(dep) != {key}
                or _count_references(out[key], dep) != 1
            ):
                continue
            out[key] = out[key].substitute({dep: inner})
            del out[dep]
            for source in inner.dependencies:
                readers[source].discard(dep)
                readers[source].add(key)
                pending.add(source)


def _same_partition(key: Key, other: Key) -> bool:
    """Whether two keys are ``(name, i)`` of the same partition ``i``: a task
    only computes inputs of its own partition (a final concat of every
    partition, as ``compute`` adds, must not run the whole layer)."""
    return (
        type(key) is tuple
        and type(other) is tuple
        and len(key) == len(other) == 2
        and key[1] == other[1]
    )


def _count_references(node: Any, key: Key) -> int:
    """How many times ``node`` (nested tasks and containers included) refers
    to ``key``. A nested task is computed wherever it appears, so a step is
    only put in place of a reference that occurs once: it must run once."""
    from dask._task_spec import Alias, GraphNode, Task, TaskRef

    if type(node) is TaskRef:
        return int(node.key == key)
    if type(node) is Alias:
        return int(node.target == key)
    if isinstance(node, list | tuple | set | frozenset):
        return sum(_count_references(item, key) for item in node)
    if isinstance(node, dict):
        return sum(_count_references(item, key) for item in node.values())
    if isinstance(node, Task):
        return _count_references((*node.args, *node.kwargs.values()), key)
    if isinstance(node, GraphNode):
        return int(key in node.dependencies)
    return 0


def _group_functions() -> tuple[Any, ...]:
    original = group_function()
    if original is None:
        return (shuffle_group_pieces,)
    return (shuffle_group_pieces, original)


def skip_aliases(
    nodes: dict[Any, Any], computed: Iterable[Key], keep: set[Key]
) -> dict[Any, Any]:
    """``nodes`` without the ``Alias`` nodes of ``computed`` keys (futures
    already computed) that are not in ``keep``: their readers read the
    computed key instead.

    A persisted dask collection used again is a graph of aliases to its
    futures (dask-expr's ``FromGraph`` renames them): run as tasks, each
    alias would map its partition and write a copy of it to shared memory
    before the first real step starts (20 copies of 1.6 MB before a shuffle
    of the benchmark's frame). An alias's value is its target's, so reading
    the target gives every task the same value. Other aliases stay tasks.
    """
    from dask._task_spec import Alias

    computed = set(computed)
    target = {
        key: node.target
        for key, node in nodes.items()
        if type(node) is Alias and key not in keep and node.target in computed
    }
    if not target:
        return nodes
    out = {}
    for key, node in nodes.items():
        if key not in target:
            reads_alias = not target.keys().isdisjoint(node.dependencies)
            out[key] = node.substitute(target) if reads_alias else node
    return out
