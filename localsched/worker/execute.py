"""Running one task and turning its outcome into a wire message.

Pure functions of their inputs, so tests call them in-process::

    RunTask ──load_inputs─▶ (args, kwargs, dependency values)
            ──run_task───▶ Success | Failure           (user code runs here)
            ──to_message─▶ TaskDone | TaskFailed       (result pickled/written)

Every step that can fail on user data (unpickling the function or arguments,
running, pickling the result) ends in a :class:`Failure` carrying the exception
of its original type, so a task never vanishes without a reply.
"""

from __future__ import annotations

import pickle
import time
import traceback
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import cloudpickle

from localsched.errors import Reschedule
from localsched.transport import inproc, pickling
from localsched.transport.inproc import LocalRef
from localsched.transport.pickling import dumps_traceback
from localsched.transport.protocol import RunTask, TaskDone, TaskFailed, TaskRef
from localsched.transport.shm import INLINE_THRESHOLD, BlobRef, load
from localsched.transport.sizeof import sizeof
from localsched.worker.shared_inputs import SharedInputs, reads_inputs_only

if TYPE_CHECKING:
    from localsched.transport.shm import BlobWriter

__all__ = [
    "Failure",
    "Outcome",
    "Success",
    "dumps_exception",
    "failure_from",
    "load_inputs",
    "run_task",
    "substitute",
    "to_message",
    "typename",
]


@dataclass(slots=True)
class Success:
    """The function returned ``value``."""

    value: object
    start: float
    stop: float


@dataclass(slots=True)
class Failure:
    """The function (or moving its inputs or result) raised ``exception``."""

    exception: BaseException
    traceback_text: str
    start: float
    stop: float
    #: The traceback from the user's frames down (ours trimmed off).
    traceback: TracebackType | None = None


Outcome = Success | Failure


def run_task(
    function: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    dependency_values: Mapping[Hashable, object],
) -> Outcome:
    """Call ``function(*args, **kwargs)`` with each :class:`TaskRef` replaced.

    Parameters
    ----------
    function : callable
    args : tuple
    kwargs : mapping
        May hold :class:`~localsched.transport.protocol.TaskRef` placeholders,
        also nested in lists, tuples, sets and dict values.
    dependency_values : mapping
        Value of each key a ``TaskRef`` names.

    Returns
    -------
    Success or Failure
        Failure for any ``BaseException`` the call raised (``SystemExit`` too: in
        a task thread it would otherwise end the thread silently), with the
        traceback text below this frame; times are ``time.time()``.

    Examples
    --------
    >>> run_task(divmod, (TaskRef("x"), 3), {}, {"x": 7}).value
    (2, 1)
    """
    start = time.time()
    try:
        if dependency_values:
            args = substitute(args, dependency_values)
            kwargs = substitute(kwargs, dependency_values)
        value = function(*args, **kwargs)
    except BaseException as exc:
        return failure_from(exc, start, skip_frames=1)
    return Success(value, start, time.time())


def substitute(obj: Any, values: Mapping[Hashable, object]) -> Any:
    """Return ``obj`` with every :class:`TaskRef` replaced by ``values[ref.key]``.

    Containers without a ``TaskRef`` are returned as they are, not copied.

    Raises
    ------
    KeyError
        A ``TaskRef`` names a key missing from ``values``.
    """
    cls = type(obj)
    if cls is TaskRef:
        return values[obj.key]
    if cls is tuple or cls is list or cls is set or cls is frozenset:
        items = [substitute(item, values) for item in obj]
        if all(new is old for new, old in zip(items, obj, strict=True)):
            return obj
        return cls(items)
    if cls is dict:
        changed = {}
        for key, item in obj.items():
            new = substitute(item, values)
            if new is not item:
                changed[key] = new
        return {**obj, **changed} if changed else obj
    return obj


def failure_from(
    exc: BaseException,
    start: float,
    stop: float | None = None,
    skip_frames: int = 0,
) -> Failure:
    """Wrap a caught exception; ``skip_frames`` drops our own frames from the text.

    ``stop`` defaults to now.
    """
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    stop = time.time() if stop is None else stop
    return Failure(exc, "".join(traceback.format_tb(tb)), start, stop, tb)


def to_message(
    key: Hashable,
    run_id: int,
    outcome: Outcome,
    writer: BlobWriter | None,
    threshold: int = INLINE_THRESHOLD,
    *,
    thread: int = 0,
    load_start: float = 0.0,
) -> TaskDone | TaskFailed:
    """Serialize an outcome: results below ``threshold`` inline, larger ones into
    shared memory through ``writer`` (always inline without a writer).

    A result that cannot be pickled or written becomes a :class:`TaskFailed` with
    that error, keeping the task's start and stop. ``thread`` and ``load_start``
    are passed on for the task stream (see :class:`TaskDone`).
    """
    if isinstance(outcome, Success):
        value = outcome.value
        try:
            payload = _serialize(value, writer, threshold)
        except BaseException as exc:
            outcome = failure_from(exc, outcome.start, stop=outcome.stop)
        else:
            return TaskDone(
                key=key,
                run_id=run_id,
                payload=payload,
                # As dask's workers: the value's size in memory, not the
                # size of its serialized form.
                nbytes=sizeof(value),
                type=typename(type(value)),
                start=outcome.start,
                stop=outcome.stop,
                thread=thread,
                load_start=load_start,
            )
    return TaskFailed(
        key=key,
        run_id=run_id,
        exception=dumps_exception(outcome.exception),
        exception_text=_safe_repr(outcome.exception),
        traceback_text=outcome.traceback_text,
        traceback=dumps_traceback(outcome.traceback),
        start=outcome.start,
        stop=outcome.stop,
        thread=thread,
        load_start=load_start,
        reschedule=isinstance(outcome.exception, Reschedule),
    )


def _serialize(
    value: object, writer: BlobWriter | None, threshold: int
) -> bytes | BlobRef:
    # Most results are plain data, which C pickle serializes ten times faster
    # than cloudpickle (0.4 us against 3.5 us for an int); cloudpickle is for
    # what pickle refuses or would pickle by a reference the client cannot
    # resolve (__main__, modules registered by value), as in distributed's
    # protocol.pickle.dumps.
    kind = type(value)
    if kind in _SCALARS or (kind in _TEXTS and len(value) < threshold):  # type: ignore[arg-type]
        # Builtins: never by reference to __main__ nor registered by value,
        # and without buffers to keep out of band (a no-op map's results).
        inline = pickle.dumps(value, protocol=5)
        if len(inline) < threshold or writer is None:
            return inline
    buffers: list[pickle.PickleBuffer] = []
    try:
        header = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception:
        header = b""
    if not header or b"__main__" in header or _is_pickled_by_value(value):
        if writer is None:
            data: bytes = pickling.dumps(value, protocol=5)
            return data
        return writer.serialize(value, threshold)
    size = len(header)
    if buffers:  # out-of-band buffers: arrays, pickle-5 aware objects
        size += sum(b.raw().nbytes for b in buffers)
    if size < threshold or writer is None:
        # The callback kept buffers out of band; inline values carry them in band.
        return pickle.dumps(value, protocol=5) if buffers else header
    # Pickles again, with cloudpickle: cheap for arrays (the buffers are not
    # copied twice), and a large result costs far more to move than to pickle.
    return writer.serialize(value, threshold)


#: Result types :func:`_serialize` pickles with no further checks.
_SCALARS = frozenset({int, float, bool, complex, type(None)})
_TEXTS = frozenset({str, bytes})


def _is_pickled_by_value(value: object) -> bool:
    registry = cloudpickle.list_registry_pickle_by_value()
    return bool(registry) and type(value).__module__.split(".")[0] in registry


def dumps_exception(exc: BaseException) -> bytes | None:
    """Cloudpickle ``exc`` keeping its type, checked by loading it back.

    An exception that does not survive the round trip (unpicklable attributes, an
    ``__init__`` that ``BaseException.__reduce__`` cannot call again) is replaced
    by a ``RuntimeError`` carrying its repr. None only if even that fails.
    """
    try:
        data: bytes = pickling.dumps(exc, protocol=5)
        # The receiver must be able to load it; loading here is the only check.
        # The failure path is rare, so its cost does not matter.
        pickle.loads(data)
    except BaseException:
        try:
            error = RuntimeError(f"{typename(type(exc))}: {_safe_repr(exc)}")
            fallback: bytes = pickling.dumps(error, protocol=5)
            return fallback
        except BaseException:
            return None
    return data


#: Noted (``add_note``) on an exception a worker raised while unpickling a task's
#: function or arguments, so the caller can tell that the task never started
#: (``client.get_executor()`` reports it as ``BrokenProcessPool``, as a
#: ``ProcessPoolExecutor`` does when its worker cannot read a call).
LOAD_NOTE = "(raised while the worker unpickled the task's function or arguments)"


def load_inputs(
    message: RunTask,
    load_dependency: Callable[[Any], object] = load,
) -> tuple[tuple[Any, ...], dict[str, Any], dict[Hashable, object]]:
    """Unpickle a task's ``(args, kwargs)`` and its dependencies' values.

    Arrays in shared memory are mapped, not copied (see
    :func:`~localsched.transport.shm.load`). ``load_dependency`` loads each
    dependency (a worker's ``SharedInputs.load`` for read-only tasks).
    """
    stored = cast("bytes | BlobRef", message.args)  # not a LocalRef: see run_task
    args, kwargs = cast("tuple[tuple[Any, ...], dict[str, Any]]", load(stored))
    values: dict[Hashable, object] = {}
    if message.dependencies:  # a map's tasks have none: no loop to set up
        for key, payload in message.dependencies.items():
            values[key] = load_dependency(payload)
    return tuple(args), dict(kwargs), values


def load_local_call(
    message: RunTask,
    shared: SharedInputs | None = None,
) -> tuple[Any, tuple[Any, ...], dict[str, Any], dict[Hashable, object]]:
    """An in-process call (``transport.inproc``): the caller's own function and
    arguments, unpickled, and the dependencies' values (through ``shared`` if
    the function only reads them)."""
    function, args, kwargs = inproc.get(cast("LocalRef", message.args))
    load_dependency: Callable[[Any], object] = load
    if shared is not None and reads_inputs_only(function):
        load_dependency = shared.load
    values = {
        key: load_dependency(payload) for key, payload in message.dependencies.items()
    }
    return function, tuple(args), dict(kwargs), values


def typename(cls: type) -> str:
    """``"numpy.ndarray"``, or ``"int"`` for builtins, as dask's ``typename``."""
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def _safe_repr(obj: object) -> str:
    try:
        return repr(obj)
    except BaseException:
        return f"<{typename(type(obj))} with a failing repr>"
