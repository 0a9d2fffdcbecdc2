"""Running dask graphs: from a graph (or collection) to task specs, and back.

``client.get``, ``client.compute``, ``client.persist`` and ``dask.compute``
while a client is active all come here. A graph is turned into dask's task-spec
nodes (``dask._task_spec``: ``Task``, ``Alias``, ``DataNode``; classic tuple
tasks are converted by ``convert_legacy_graph``), ordered by ``dask.order`` and
handed to the scheduler core by reference, in chunks of increasing size in
graph order::

    graph ──convert──▶ nodes ──dask.order──▶ chunk 1 ──pickle──▶ UpdateGraph ─▶ core
                                             chunk 2 ──pickle──▶ UpdateGraph ─▶ core
                                             ...

so the first tasks run while the rest of the graph is still being pickled.
Every chunk lists as wanted the keys that later chunks depend on (the core culls
tasks nobody wants); once the whole graph is in, those holds are released.

The worker stays dask-free until a dask task arrives: every node becomes a call
of :func:`run_graph_node` (pickled once per client, like any function) with the
node and a ``{dependency: TaskRef}`` dict the worker fills in. A localsched
``Future`` inside a node (``delayed(f)(future)``, persisted collections) becomes
a dependency: that node travels pickled on its own and resolves the future from
the dict when the task unpickles it.

Only :func:`run_graph_node` and :func:`dependency_value` run on workers; this
module imports dask lazily so that importing them costs nothing.
"""

from __future__ import annotations

import io
import pickle
import threading
import time
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from localsched.client.computation_code import computation_code
from localsched.client.dask_shuffle import (
    fuse_shuffle_chains,
    inline_splits,
    pack_shuffle_groups,
    reads_inputs_only,
    skip_aliases,
)
from localsched.transport.protocol import TaskRef
from localsched.worker.shared_inputs import READS_INPUTS_ONLY

if TYPE_CHECKING:
    from localsched.client.client import Client
    from localsched.client.future import Future
    from localsched.client.graph import TaskSpec

Key = Hashable

#: Tasks in the first chunk posted to the core; later chunks grow by
#: ``CHUNK_GROWTH`` up to ``MAX_CHUNK``. Small first: the workers start on it
#: while the rest is pickled. Large later: one event per chunk.
FIRST_CHUNK = 512
CHUNK_GROWTH = 4
MAX_CHUNK = 32_768

MISSING_DASK = "dask graphs and collections need dask: pip install 'localsched[dask]'"

__all__ = [
    "GraphOptions",
    "actor_keys",
    "dependency_value",
    "pack_results",
    "run_graph_node",
    "submit_graph",
]


# -- on the worker ---------------------------------------------------------------

_running = threading.local()


def run_graph_node(node: Any, values: dict[Key, Any]) -> Any:
    """Execute one dask graph node, given its dependencies' values.

    The worker has replaced the ``TaskRef`` values of ``values`` by the
    dependencies' results. A node holding localsched futures comes pickled
    (``bytes``) and is unpickled here, so that those futures resolve to their
    values (see :func:`dependency_value`).
    """
    if type(node) is bytes:
        _running.values = values
        try:
            node = pickle.loads(node)
        finally:
            _running.values = None
    return node(values)


def run_selection_node(node: Any, values: dict[Key, Any]) -> Any:
    """:func:`run_graph_node` for nodes that only read their inputs (see
    :func:`~localsched.client.dask_shuffle.reads_inputs_only`): the worker may
    hand the same unpickled dependency to many of them (see
    :mod:`localsched.worker.shared_inputs`), as dask's task shuffle needs."""
    return run_graph_node(node, values)


setattr(run_selection_node, READS_INPUTS_ONLY, True)


def dependency_value(key: Key) -> Any:
    """What a localsched ``Future`` inside a graph node unpickles to."""
    values = _running.values
    if values is None:
        raise RuntimeError(f"The value of {key!r} is only known inside its task")
    return values[key]


# -- in the client ---------------------------------------------------------------


@dataclass(slots=True)
class GraphOptions:
    """``get``/``compute``/``persist`` keywords, as dask.distributed takes them."""

    workers: Any = None
    allow_other_workers: bool | None = None
    resources: Mapping[str, float] | None = None
    retries: int | None = None
    priority: int = 0
    fifo_timeout: float = 60.0
    #: Annotations for every task (``dask.annotate`` around the call).
    annotations: dict[str, Any] = field(default_factory=dict)
    #: Keys whose results are actors (``actors=``); True: every wanted key.
    actors: frozenset[Key] | bool = frozenset()


def actor_keys(actors: Any) -> frozenset[Key] | bool:
    """``actors=`` of ``get``/``compute``/``persist`` as dask reads it: True,
    a key, a collection (its keys), a list, tuple or set of those, or a dict
    of key -> bool."""
    if actors is None or actors is False:
        return frozenset()
    if actors is True:
        return True
    if isinstance(actors, dict):
        return frozenset(k for k, v in actors.items() if v)
    items = actors if isinstance(actors, list | tuple | set | frozenset) else [actors]
    keys: set[Key] = set()
    for item in items:
        if hasattr(item, "__dask_keys__"):
            keys.update(flatten_keys(item.__dask_keys__()))
        else:
            keys.add(item)
    return frozenset(keys)


def _import_dask() -> Any:
    try:
        import dask
    except ImportError as error:  # pragma: no cover - dask is in the test extra
        raise ImportError(MISSING_DASK) from error
    from localsched.client.dask_collections import register_future_token

    register_future_token()
    return dask


def as_expr(graph: Any) -> Any:
    """A dask expression for a dict graph, a ``HighLevelGraph`` or an expression."""
    _import_dask()
    from dask._expr import Expr, HLGExpr, LLGExpr
    from dask.highlevelgraph import HighLevelGraph

    if isinstance(graph, Expr):
        return graph
    if isinstance(graph, HighLevelGraph):
        return HLGExpr(graph)
    if isinstance(graph, Mapping):
        return LLGExpr(dict(graph))
    raise TypeError(f"Expected a dask graph (dict) or expression, got {graph!r}")


def flatten_keys(keys: Any) -> list[Key]:
    """Keys of a (nested) list of keys, in order."""
    if isinstance(keys, list):
        return [k for item in keys for k in flatten_keys(item)]
    return [keys]


def pack_results(keys: Any, values: Mapping[Key, Any]) -> Any:
    """``keys`` (a key or nested lists of keys) with each key replaced by its value."""
    if isinstance(keys, list):
        return [pack_results(k, values) for k in keys]
    return values[keys]


def submit_graph(
    client: Client,
    graph: Any,
    keys: Iterable[Key],
    options: GraphOptions,
    cull: bool = False,
) -> dict[Key, Future]:
    """Put a dask graph or expression into the cluster; futures of ``keys``.

    Parameters
    ----------
    client
        The client the futures belong to.
    graph
        A dict graph (tuple tasks or task-spec nodes), a ``HighLevelGraph`` or
        a dask expression.
    keys
        The keys to return futures for.
    options
        Placement, retries and priority for every task, and global annotations.
    cull
        Drop the tasks ``keys`` do not need before pickling (dict graphs).
    """
    from localsched.client.future import Future

    _import_dask()
    import dask.order
    from dask._task_spec import DataNode, convert_legacy_graph

    expr = as_expr(graph)
    wanted = list(dict.fromkeys(keys))
    raw = dict(expr.__dask_graph__())
    annotations_by_type = {
        kind: dict(values) for kind, values in expr.__dask_annotations__().items()
    }
    existing = _take_futures(raw)
    nodes = convert_legacy_graph(raw, all_keys=set(raw) | set(existing))
    if cull:
        nodes = _cull(nodes, wanted)
    if existing:
        # dask.order needs every dependency in the graph; these are computed.
        order_input = {**{k: DataNode(k, None) for k in existing}, **nodes}
        order = dask.order.order(order_input)
    else:
        order = dask.order.order(nodes) if nodes else {}
    # Ordered first: each task keeps dask's priority for its key. Then dask's
    # task shuffle over shared memory: see localsched/client/dask_shuffle.py.
    annotated = {key for values in annotations_by_type.values() for key in values}
    keep = set(wanted) | annotated
    # A packed group keeps its key (and annotations): only wanted ones stay dask's.
    nodes = pack_shuffle_groups(skip_aliases(nodes, existing, keep), set(wanted))
    nodes = fuse_shuffle_chains(inline_splits(nodes, keep), keep)
    for key in wanted:
        if key not in nodes and key not in existing:
            raise KeyError(f"Key {key!r} is not in the graph")
    futures = {key: Future(key, client) for key in wanted}
    _post_in_chunks(client, nodes, order, set(wanted), annotations_by_type, options)
    return futures


def _take_futures(raw: dict[Key, Any]) -> dict[Key, Future]:
    """Remove the graph entries that are futures of their own key (persisted
    collections); an entry that is a future of another key becomes an alias."""
    from dask._task_spec import Alias

    from localsched.client.future import Future

    existing: dict[Key, Future] = {}
    for key, value in list(raw.items()):
        if type(value) is Future:
            if value.key == key:
                existing[key] = value
                del raw[key]
            else:
                existing[value.key] = value
                # dask's Key type is narrower than the Hashable keys we hold.
                raw[key] = Alias(cast(Any, key), cast(Any, value.key))
    return existing


def _cull(nodes: dict[Key, Any], wanted: list[Key]) -> dict[Key, Any]:
    work = list(wanted)
    kept: dict[Key, Any] = {}
    while work:
        key = work.pop()
        if key in kept or key not in nodes:
            continue
        node = kept[key] = nodes[key]
        work.extend(node.dependencies)
    return kept


def _chunks(keys: list[Key]) -> Iterator[list[Key]]:
    size = FIRST_CHUNK
    start = 0
    while start < len(keys):
        yield keys[start : start + size]
        start += size
        size = min(size * CHUNK_GROWTH, MAX_CHUNK)


def _post_in_chunks(
    client: Client,
    nodes: dict[Key, Any],
    order: Mapping[Any, int],
    wanted: set[Key],
    annotations_by_type: dict[str, dict[Key, Any]],
    options: GraphOptions,
) -> None:
    from localsched.scheduler import events as ev

    link = client._link
    ordered = sorted(nodes, key=order.__getitem__)
    # The graph-order position of the last task that reads each key: a key read
    # by a later chunk must be held until that chunk is in.
    last_reader: dict[Key, int] = {}
    for key, node in nodes.items():
        position = order[key]
        for dep in node.dependencies:
            if last_reader.get(dep, -1) < position:
                last_reader[dep] = position
    per_key = _annotations_per_key(annotations_by_type)
    builder = _SpecBuilder(client)
    actors = wanted if options.actors is True else options.actors or frozenset()
    held: list[Key] = []
    # Wanted keys that are futures already (a persisted collection): the first
    # event takes hold of them.
    first_keys = [k for k in wanted if k not in nodes]
    for chunk in _chunks(ordered):
        end = order[chunk[-1]]
        tasks: dict[Key, TaskSpec] = {}
        chunk_actors = [k for k in chunk if k in actors] if actors else []
        frontier = [
            k for k in chunk if k not in wanted and last_reader.get(k, -1) > end
        ]
        chunk_keys = [k for k in chunk if k in wanted] + frontier + first_keys
        try:
            for key in chunk:
                tasks[key] = builder.spec(key, nodes[key])
            for key in chunk_actors:
                tasks[key] = replace(tasks[key], actor=True)
            event = _update_graph(
                client,
                tasks,
                chunk_keys,
                order,
                per_key,
                annotations_by_type,
                options,
                chunk_actors,
            )
        except BaseException:
            # Arguments in shared memory are the client's until posted (then the
            # scheduler frees them with their tasks): this chunk's go now.
            for spec in tasks.values():
                link.release(spec.args)
            raise
        held.extend(frontier)
        first_keys = []
        link.post(event)
    if first_keys:
        link.post(
            _update_graph(
                client, {}, first_keys, order, {}, annotations_by_type, options
            )
        )
    with client._lock:
        # A key this client holds a future for must stay wanted.
        release = [k for k in held if k not in client._refcount]
    if release:
        link.post(
            ev.ClientReleasesKeys(
                stimulus_id=link.stimulus_id("graph-chunks-done"),
                client=client.id,
                keys=tuple(release),
            )
        )


def _annotations_per_key(
    annotations_by_type: Mapping[str, Mapping[Key, Any]],
) -> dict[Key, dict[str, Any]]:
    per_key: dict[Key, dict[str, Any]] = {}
    for kind, values in annotations_by_type.items():
        for key, value in values.items():
            per_key.setdefault(key, {})[kind] = value
    return per_key


def _update_graph(
    client: Client,
    tasks: dict[Key, TaskSpec],
    keys: list[Key],
    order: Mapping[Key, int],
    per_key: dict[Key, dict[str, Any]],
    annotations_by_type: dict[str, dict[Key, Any]],
    options: GraphOptions,
    actors: list[Key] | None = None,
) -> Any:

    from localsched.scheduler import events as ev

    annotations: dict[Key, dict[str, Any]] | None = None
    if options.annotations or per_key:
        # Layer annotations win over those around the call, as in dask.
        annotations = {
            key: {**options.annotations, **per_key.get(key, {})} for key in tasks
        }
    from localsched.client.graph import worker_restrictions

    restrictions = worker_restrictions(tasks, options.workers)
    return ev.UpdateGraph(
        stimulus_id=client._link.stimulus_id("update-graph"),
        client=client.id,
        tasks=tasks,
        dependencies={key: spec.dependencies for key, spec in tasks.items()},
        keys=keys,
        priority=order,
        user_priority=options.priority,
        fifo_timeout=options.fifo_timeout,
        restrictions=restrictions,
        loose_restrictions=list(tasks) if options.allow_other_workers else (),
        resources={key: dict(options.resources) for key in tasks}
        if options.resources
        else None,
        retries=options.retries,
        annotations=annotations,
        annotations_by_type=annotations_by_type or None,
        time=time.time(),
        submitting_task=client._link.current_task(),
        actors=actors or (),
        code=computation_code(),
        global_annotations=options.annotations or None,
    )


class _SpecBuilder:
    """Pickles graph nodes into ``TaskSpec`` s, as fast as the node allows.

    C pickle first (several times faster than cloudpickle on dask's nodes);
    cloudpickle for what it refuses or would pickle by a reference the worker
    cannot resolve (``__main__``, modules registered to pickle by value), and
    for nodes holding localsched futures.
    """

    def __init__(self, client: Client) -> None:
        import cloudpickle

        from localsched.client.graph import TaskSpec
        from localsched.transport.shm import INLINE_THRESHOLD

        self._client = client
        self._spec_type = TaskSpec
        self._threshold = INLINE_THRESHOLD
        self._token, self._function = client._functions.get(run_graph_node)
        self._selection = client._functions.get(run_selection_node)
        self._by_value = [
            name.encode() for name in cloudpickle.list_registry_pickle_by_value()
        ]
        self._by_value.append(b"__main__")
        # A localsched future pickles by itself now (as a live future where it
        # is unpickled); in a node it must be a dependency instead.
        self._by_value.append(b"_unpickle_future")

    def spec(self, key: Key, node: Any) -> TaskSpec:
        dependencies = node.dependencies
        call: Any = ((node, {dep: TaskRef(dep) for dep in dependencies}), {})
        buffers: list[pickle.PickleBuffer] = []
        try:
            # One pickle of node and references: its memo stores each key once.
            payload: Any = pickle.dumps(call, 5, buffer_callback=buffers.append)
        except Exception:
            payload = None
        if payload is None or any(name in payload for name in self._by_value):
            extra: set[Key] = set()
            data = _dumps_with_futures(node, extra)
            dependencies = dependencies | extra
            call = ((data, {dep: TaskRef(dep) for dep in dependencies}), {})
            buffers = []
            payload = pickle.dumps(call, 5)
        size = len(payload) + sum(b.raw().nbytes for b in buffers)
        if size >= self._threshold:
            # Large data embedded in the graph goes to shared memory, once.
            payload = self._client._link.serialize(call)
        elif buffers:
            payload = pickle.dumps(call, 5)  # small: buffers in band
        token, function = self._token, self._function
        # A future inside the node is an input too, read by whatever uses it.
        if reads_inputs_only(node) and dependencies == node.dependencies:
            token, function = self._selection
        spec = self._spec_type(token, function, payload, tuple(dependencies))
        return spec


def _dumps_with_futures(node: Any, found: set[Key]) -> bytes:
    """Cloudpickle ``node``; each localsched future in it becomes a dependency."""
    from localsched.client.future import Future
    from localsched.transport import pickling

    class GraphPickler(pickling.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is Future:
                found.add(obj.key)
                return dependency_value, (obj.key,)
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    GraphPickler(buffer, protocol=5).dump(node)
    return buffer.getvalue()
