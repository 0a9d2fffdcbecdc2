"""Turning ``submit``/``map`` calls into task specs: keys, tokens, dependencies.

A task's function and arguments are serialized once, here, in the client thread;
the scheduler core only ever sees the resulting ``TaskSpec`` as an opaque
``run_spec``. Futures found in the arguments (also nested in lists, tuples, sets
and dict values) become dependencies and are replaced by ``TaskRef`` placeholders
that the worker substitutes with the dependencies' values.
"""

from __future__ import annotations

import pickle
import time
import uuid
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from numbers import Number
from typing import Any, NamedTuple

from localsched.client.computation_code import computation_code
from localsched.gc_pause import collector_paused_if
from localsched.scheduler import events as ev
from localsched.transport import pickling
from localsched.transport.hashing import content_hasher
from localsched.transport.inproc import LocalRef
from localsched.transport.protocol import Payload, TaskRef, dumps_function
from localsched.transport.shm import BlobRef
from localsched.transport.sizeof import sizeof
from localsched.units import parse_timedelta

Key = Hashable

#: ``TaskSpec.function_token`` of a call kept in process (``transport.inproc``):
#: its ``args`` name ``(function, args, kwargs)``, and nothing was pickled.
IN_PROCESS_TOKEN = "localsched-in-process"


class CannotSerialize(TypeError):
    """A call's function or arguments could not be pickled for a worker.

    A ``TypeError``, as dask raises; ``__cause__`` is the pickler's own
    exception, which ``client.get_executor()`` hands to the caller as
    ``concurrent.futures`` executors do.
    """


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a worker needs to run one task (the core's opaque ``run_spec``)."""

    #: Names the function (digest of its pickle); workers cache by token.
    function_token: str
    #: The cloudpickled function (sent to a worker the first time only).
    function: bytes
    #: Cloudpickled ``(args, kwargs)``, inline or in shared memory; or a
    #: ``LocalRef`` to ``(function, args, kwargs)`` (``IN_PROCESS_TOKEN``).
    args: Payload
    #: Keys of the futures the arguments refer to.
    dependencies: tuple[Key, ...]
    #: The result is an actor: it stays in its worker (``submit(actor=True)``).
    actor: bool = False


class FunctionCache:
    """Pickle each function once per client: ``map`` and repeated ``submit``.

    Keyed by the function object's identity while it is alive (a weak reference
    where the object allows one), so a function is never pickled twice.
    """

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Any, str, bytes]] = {}

    def get(self, function: Callable[..., Any]) -> tuple[str, bytes]:
        entry = self._by_id.get(id(function))
        if entry is not None and _deref(entry[0]) is function:
            return entry[1], entry[2]
        token, data = dumps_function(function)
        try:
            ref: Any = weakref.ref(function, self._forget(id(function)))
        except TypeError:
            ref = function  # builtins and some callables take no weak reference
        self._by_id[id(function)] = (ref, token, data)
        return token, data

    def _forget(self, ident: int) -> Callable[[Any], None]:
        def callback(_: Any) -> None:
            self._by_id.pop(ident, None)

        return callback


#: Argument types of ``map``'s fast path: they never hold a future, and the C
#: pickler writes them before it consults any hook, so ``pickle.dumps`` gives
#: the very bytes cloudpickle would (and keys equal ``submit``'s).
PLAIN_TYPES = frozenset({int, float, str, bytes, bool, type(None)})

#: Largest fast-path payload: far below every link's inline threshold, so the
#: general path would have kept it inline too.
PLAIN_LIMIT = 1024


class PlainCalls:
    """Specs and keys of one function's calls on plain arguments (``map``).

    The function is pickled and its name found once for the whole map; each
    call then costs one C pickle of its arguments and, for a pure key, one
    copy of a hash already fed the function's token. :meth:`spec` returns
    None for a call outside the fast path (a future, another type, a large
    value), which then takes the general path.
    """

    __slots__ = ("_hasher", "actor", "function", "kwargs", "name", "token")

    def __init__(
        self,
        function_token: str,
        function: bytes,
        name: str,
        kwargs: dict[str, Any],
        actor: bool,
    ) -> None:
        self.token = function_token
        self.function = function
        self.name = name
        self.kwargs = kwargs
        self.actor = actor
        # As ``call_key``: the content hash over the token, then the arguments.
        self._hasher = content_hasher(function_token.encode())

    @classmethod
    def of(
        cls,
        functions: FunctionCache,
        function: Callable[..., Any],
        kwargs: dict[str, Any],
        actor: bool,
    ) -> PlainCalls | None:
        """The fast path for ``map(function, ..., **kwargs)``; None where it
        cannot apply (other keyword arguments, or a function that does not
        pickle: the general path raises then)."""
        if not all(type(value) in PLAIN_TYPES for value in kwargs.values()):
            return None
        try:
            token, data = functions.get(function)
        except Exception:
            return None
        return cls(token, data, funcname(function), kwargs, actor)

    def spec(
        self, args: tuple[Any, ...], pure: bool, keyed: bool = True
    ) -> tuple[TaskSpec, str | None] | None:
        """The spec of ``function(*args, **kwargs)`` and its key (None if not
        ``keyed``); None if the call is not plain."""
        plain = PLAIN_TYPES
        for arg in args:
            if type(arg) not in plain:
                return None
        payload = pickle.dumps((args, self.kwargs), protocol=5)
        if len(payload) > PLAIN_LIMIT:
            return None
        spec = TaskSpec(self.token, self.function, payload, (), self.actor)
        if not keyed:
            return spec, None
        if pure:
            hasher = self._hasher.copy()
            hasher.update(payload)
            return spec, f"{self.name}-{hasher.hexdigest()}"
        return spec, f"{self.name}-{uuid.uuid4().hex}"


#: Calls from which ``map`` pauses the cyclic garbage collector.
PAUSE_GC_FROM = 10_000


def collector_paused(n_calls: int) -> AbstractContextManager[None]:
    """Pause the cyclic GC while a large ``map`` builds its tasks and futures.

    They are several tracked objects per call and none of them is garbage,
    yet each generation's threshold sets off a collection that walks them
    all again: a third of the CPU of a 300k map. Nothing here makes cycles;
    the collector resumes (if it was on) however the block ends.
    """
    return collector_paused_if(n_calls >= PAUSE_GC_FROM)


def _deref(ref: Any) -> Any:
    return ref() if isinstance(ref, weakref.ref) else ref


def funcname(function: Callable[..., Any]) -> str:
    """The name dask puts in front of a key (``inc`` for ``inc-<token>``)."""
    while hasattr(function, "func") and not hasattr(function, "__name__"):
        function = function.func  # functools.partial
    name = getattr(function, "__name__", None) or type(function).__name__
    if name == "<lambda>":
        return "lambda"
    return str(name).strip("<>").replace(" ", "_")


def replace_futures(
    obj: Any, is_future: Callable[[Any], bool], found: dict[Key, Any]
) -> Any:
    """Copy ``obj`` with every future replaced by a ``TaskRef``; collect them."""
    if is_future(obj):
        found[obj.key] = obj
        return TaskRef(obj.key)
    typ = type(obj)
    if typ is list:
        return [replace_futures(x, is_future, found) for x in obj]
    if typ is tuple:
        return tuple(replace_futures(x, is_future, found) for x in obj)
    if typ is dict:
        return {k: replace_futures(v, is_future, found) for k, v in obj.items()}
    if typ is set:
        return {replace_futures(x, is_future, found) for x in obj}
    return obj


def gathered(
    obj: Any,
    is_future: Callable[[Any], bool],
    value_of: Callable[[Any], Any],
    errors: str,
    top: bool = True,
) -> Any:
    """``obj`` with each future replaced by ``value_of(future)``, as dask's
    ``gather``: with ``errors="skip"``, erred and cancelled futures are left out
    of a top-level list and become None anywhere else."""
    if is_future(obj):
        if errors == "skip" and obj.status in ("error", "cancelled"):
            return None
        return value_of(obj)
    typ = type(obj)
    if typ in (list, tuple, set):
        items = [
            gathered(x, is_future, value_of, errors, top=False)
            for x in obj
            if not (
                top
                and typ is list
                and errors == "skip"
                and is_future(x)
                and x.status in ("error", "cancelled")
            )
        ]
        return typ(items)
    if typ is dict:
        return {
            k: gathered(v, is_future, value_of, errors, top=False)
            for k, v in obj.items()
        }
    return obj


def hash_args(
    function_token: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str:
    """Deterministic token of a call, for ``pure=True`` keys.

    Arrays are hashed through their out-of-band buffers, without a copy.
    """
    hasher = content_hasher(function_token.encode())
    buffers: list[Any] = []
    header = pickling.dumps((args, kwargs), protocol=5, buffer_callback=buffers.append)
    hasher.update(header)
    for buffer in buffers:
        hasher.update(buffer.raw())
    return hasher.hexdigest()


def call_key(
    functions: FunctionCache,
    function: Callable[..., Any],
    spec: TaskSpec,
    pure: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> str:
    """The key of a ``submit``/``map`` call, dask's ``<funcname>-<token>``: a
    digest of the function's token and the pickled arguments if ``pure``,
    else random (so is the key of arguments that do not pickle)."""
    if not pure:
        return f"{funcname(function)}-{uuid.uuid4().hex}"
    if isinstance(spec.args, LocalRef):
        try:
            function_token = functions.get(function)[0]
            token = hash_args(function_token, args, kwargs)
        except Exception:  # cannot be pickled: a fresh key, as dask's tokenize
            token = uuid.uuid4().hex
    elif isinstance(spec.args, BlobRef):
        token = hash_args(spec.function_token, args, kwargs)
    else:
        hasher = content_hasher(spec.function_token.encode())
        hasher.update(spec.args)
        token = hasher.hexdigest()
    return f"{funcname(function)}-{token}"


def graph_event(
    link: Any,
    client_id: str,
    tasks: dict[Key, TaskSpec],
    dependencies: dict[Key, tuple[Key, ...]],
    keys: list[Key],
    *,
    workers: str | Iterable[str] | None,
    resources: Mapping[str, float] | None,
    retries: int | None,
    priority: int,
    allow_other_workers: bool,
    fifo_timeout: str | float,
    actors: tuple[Key, ...] = (),
) -> ev.UpdateGraph:
    """The ``UpdateGraph`` event of a ``submit`` or ``map`` with its options,
    posted on ``link`` (a ``SchedulerLink``) by client ``client_id``."""
    return ev.UpdateGraph(
        stimulus_id=link.stimulus_id("update-graph"),
        client=client_id,
        tasks=tasks,
        dependencies=dependencies,
        keys=keys,
        user_priority=priority,
        fifo_timeout=parse_timedelta(fifo_timeout),
        restrictions=worker_restrictions(tasks, workers),
        loose_restrictions=list(tasks) if allow_other_workers else (),
        resources={key: dict(resources) for key in tasks} if resources else None,
        retries=retries,
        time=time.time(),
        submitting_task=link.current_task(),
        actors=actors,
        code=computation_code(),
    )


def worker_restrictions(
    keys: Iterable[Key], workers: Any
) -> dict[Key, tuple[Any, ...]] | None:
    """``workers=`` of ``submit``/``compute`` (an address or name, or several)
    as the restriction of each key; None without one."""
    if workers is None:
        return None
    names = [workers] if isinstance(workers, str | Number) else list(workers)
    return dict.fromkeys(keys, tuple(names))


def new_key(function: Callable[..., Any], token: str | None) -> str:
    """``<funcname>-<token>``; a random token for impure calls."""
    return f"{funcname(function)}-{token or uuid.uuid4().hex}"


class ScatterPlan(NamedTuple):
    """``scatter`` data split into values (see :func:`prepare_scatter`)."""

    #: ``(key, payload)`` pairs, in the caller's order.
    pairs: list[tuple[Key, Any]]
    #: key -> the value's type (``Future.type`` of a scattered value).
    types: dict[Key, type]
    #: key -> the value's size in memory (dask's ``sizeof``).
    nbytes: dict[Key, int]
    #: Rebuilds the caller's structure from ``{key: future}``.
    rebuild: Callable[[dict[Key, Any]], Any]


def prepare_scatter(
    data: Any, serialize: Callable[[Any], Any], hash: bool
) -> ScatterPlan:
    """Split ``scatter`` data into ``(key, payload)`` pairs, as dask does.

    Exact types, as dask: a dict is scattered per value, a list, tuple, set or
    namedtuple per element (a subclass of dict or list is one opaque value), a
    range is unpacked.
    """
    from localsched.scheduler.events import validate_key

    if isinstance(data, range):
        data = list(data)
    is_namedtuple = isinstance(data, tuple) and hasattr(data, "_fields")
    if type(data) is dict:
        items: list[tuple[Key | None, Any]] = list(data.items())
    elif type(data) in (list, tuple, set, frozenset) or is_namedtuple:
        items = [(None, x) for x in data]
    else:
        items = [(None, data)]
    prepared: list[tuple[Key, Any]] = []
    types: dict[Key, type] = {}
    nbytes: dict[Key, int] = {}
    # The store's serialize (a LocalLink's) can hash a value as it writes it;
    # a task's link ships values inline.
    write_hashed = getattr(getattr(serialize, "__self__", None), "write_hashed", None)
    for key, value in items:
        if key is None and hash and write_hashed is not None and _is_large(value):
            # Hashed as it is copied: one pass over the value, not two.
            payload, token = write_hashed(value, content_hasher(b"scatter"))
            key = f"{type(value).__name__}-{token}"
        else:
            payload = serialize(value)
            if key is None:
                token = payload_token(payload, value) if hash else uuid.uuid4().hex
                key = f"{type(value).__name__}-{token}"
        validate_key(key)
        prepared.append((key, payload))
        types[key] = type(value)
        nbytes[key] = sizeof(value)

    def rebuild(futures: dict[Key, Any]) -> Any:
        if type(data) is dict:
            return {key: futures[key] for key, _ in prepared}
        result = [futures[key] for key, _ in prepared]
        if is_namedtuple:
            return type(data)(*result)
        if type(data) in (list, tuple, set, frozenset):
            return type(data)(result)
        return result[0]

    return ScatterPlan(prepared, types, nbytes, rebuild)


#: Values at least this large are hashed as they are written (see
#: ``_BlobSink.write_hashed``).
HASH_AS_WRITTEN_FROM = 8 << 20


def _is_large(value: Any) -> bool:
    try:
        nbytes = getattr(value, "nbytes", 0)
    except Exception:  # a property that refuses (a dask DataFrame's)
        return False
    return isinstance(nbytes, int) and nbytes >= HASH_AS_WRITTEN_FROM


def payload_token(payload: bytes | BlobRef, value: Any) -> str:
    """Deterministic token of a scattered value (its serialized bytes)."""
    if isinstance(payload, bytes):
        hasher = content_hasher()
        hasher.update(payload)
        return hasher.hexdigest()
    return hash_args("scatter", (value,), {})
