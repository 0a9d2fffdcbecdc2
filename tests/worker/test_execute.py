from __future__ import annotations

import os
import pickle
import sys
import traceback

import pytest

from localsched.transport.pickling import dumps_traceback, loads_traceback
from localsched.transport.protocol import RunTask, TaskDone, TaskFailed, TaskRef
from localsched.transport.shm import (
    INLINE_THRESHOLD,
    BlobRef,
    BlobStore,
    dumps_inline,
    load,
)
from localsched.worker.execute import (
    Failure,
    Success,
    dumps_exception,
    load_inputs,
    run_task,
    substitute,
    to_message,
    typename,
)


class CustomError(Exception):
    pass


def _refuse_to_rebuild(args: tuple[object, ...]) -> BaseException:
    raise TypeError(f"cannot rebuild from {args!r}")


class FailsToLoad(Exception):
    # Pickles fine, but loading calls a function that raises. (An exception whose
    # __init__ takes two arguments used to stand here; importing distributed
    # installs tblib's pickling support, which makes that one load, so the test
    # depended on whether another test had imported distributed first.)
    def __reduce__(self) -> tuple[object, ...]:
        return (_refuse_to_rebuild, (self.args,))


class HoldsALock(Exception):
    def __init__(self) -> None:
        super().__init__("locked")
        self.lock = __import__("threading").Lock()


def fail_deep() -> None:
    def inner() -> None:
        raise CustomError("deep")

    inner()


@pytest.fixture
def store():
    with BlobStore() as store:
        yield store


def test_run_task_returns_the_value_and_times() -> None:
    outcome = run_task(divmod, (7, 3), {}, {})
    assert isinstance(outcome, Success)
    assert outcome.value == (2, 1)
    assert outcome.start <= outcome.stop


def test_run_task_substitutes_dependencies_in_nested_args_and_kwargs() -> None:
    def collect(*args, **kwargs):
        return args, kwargs

    args = (TaskRef("a"), [TaskRef("b"), 1], {"k": (TaskRef("a"),)})
    kwargs = {"x": {TaskRef("b")}, "y": 2}
    outcome = run_task(collect, args, kwargs, {"a": 10, "b": 20})
    assert outcome.value == (
        (10, [20, 1], {"k": (10,)}),
        {"x": {20}, "y": 2},
    )


def test_substitute_leaves_containers_without_refs_uncopied() -> None:
    args = ([1, 2], {"k": (3,)})
    assert substitute(args, {"a": 1}) is args


def test_a_missing_dependency_is_a_key_error_failure() -> None:
    outcome = run_task(abs, (TaskRef("absent"),), {}, {"other": 1})
    assert isinstance(outcome, Failure)
    assert isinstance(outcome.exception, KeyError)


def test_run_task_captures_the_exception_and_user_traceback() -> None:
    outcome = run_task(fail_deep, (), {}, {})
    assert isinstance(outcome, Failure)
    assert type(outcome.exception) is CustomError
    assert "in inner" in outcome.traceback_text
    assert "in run_task" not in outcome.traceback_text  # our frame is dropped


def test_run_task_captures_system_exit() -> None:
    outcome = run_task(sys.exit, (3,), {}, {})
    assert isinstance(outcome, Failure)
    assert type(outcome.exception) is SystemExit


def test_small_results_go_inline() -> None:
    message = to_message("k", 4, Success([1, 2, 3], 1.0, 2.0), writer=None)
    assert isinstance(message, TaskDone)
    assert isinstance(message.payload, bytes)
    assert load(message.payload) == [1, 2, 3]
    assert (message.key, message.run_id, message.type) == ("k", 4, "list")
    assert (message.start, message.stop) == (1.0, 2.0)
    # As dask's workers: the value's size in memory, not its pickle's.
    assert message.nbytes == sys.getsizeof([1, 2, 3]) + 3 * sys.getsizeof(1)


def test_results_at_the_threshold_go_to_shared_memory(store: BlobStore) -> None:
    value = bytearray(INLINE_THRESHOLD)
    message = to_message("k", 1, Success(value, 1.0, 2.0), store.writer())
    assert isinstance(message, TaskDone)
    assert isinstance(message.payload, BlobRef)
    assert message.nbytes >= INLINE_THRESHOLD
    store.adopt(message.payload)
    assert load(message.payload) == value
    store.release(message.payload)


def test_below_the_threshold_a_writer_still_returns_bytes(store: BlobStore) -> None:
    message = to_message("k", 1, Success(b"x" * 100, 1.0, 2.0), store.writer())
    assert isinstance(message.payload, bytes)


def test_numpy_results_go_to_shared_memory_with_their_type(store: BlobStore) -> None:
    np = pytest.importorskip("numpy")
    array = np.arange(100_000, dtype="float64")
    message = to_message("k", 1, Success(array, 1.0, 2.0), store.writer())
    assert isinstance(message.payload, BlobRef)
    assert message.type == "numpy.ndarray"
    store.adopt(message.payload)
    np.testing.assert_array_equal(load(message.payload), array)
    store.release(message.payload)


def test_an_unpicklable_result_becomes_task_failed() -> None:
    lock = __import__("threading").Lock()
    message = to_message("k", 2, Success(lock, 1.0, 2.0), writer=None)
    assert isinstance(message, TaskFailed)
    assert isinstance(pickle.loads(message.exception), TypeError)
    assert "lock" in message.exception_text
    assert (message.start, message.stop) == (1.0, 2.0)


def test_failures_keep_the_exception_type_and_texts() -> None:
    outcome = run_task(fail_deep, (), {}, {})
    message = to_message("k", 3, outcome, writer=None)
    assert isinstance(message, TaskFailed)
    exception = pickle.loads(message.exception)
    assert type(exception) is CustomError
    assert exception.args == ("deep",)
    assert message.exception_text == "CustomError('deep')"
    assert "raise CustomError" in message.traceback_text


def test_failures_carry_a_traceback_that_loads_back_into_frames() -> None:
    pytest.importorskip("tblib")
    message = to_message("k", 3, run_task(fail_deep, (), {}, {}), writer=None)
    tb = loads_traceback(message.traceback)
    names = [summary.name for summary in traceback.extract_tb(tb)]
    assert names == ["fail_deep", "inner"]  # the user's frames, not ours


def test_no_traceback_gives_none() -> None:
    assert dumps_traceback(None) is None
    assert loads_traceback(None) is None


@pytest.mark.parametrize(
    "exception",
    [HoldsALock(), FailsToLoad(1)],
    ids=["unpicklable", "pickles-but-does-not-load"],
)
def test_exceptions_that_cannot_travel_become_runtime_errors(exception) -> None:
    data = dumps_exception(exception)
    loaded = pickle.loads(data)
    assert type(loaded) is RuntimeError
    assert type(exception).__name__ in str(loaded)


def test_exceptions_of_locally_defined_classes_travel_by_value() -> None:
    class LocalError(ValueError):
        pass

    loaded = pickle.loads(dumps_exception(LocalError("x")))
    assert isinstance(loaded, ValueError)
    assert type(loaded).__name__ == "LocalError"


def test_load_inputs_reads_inline_and_shared_memory_payloads(store: BlobStore) -> None:
    big = bytes(INLINE_THRESHOLD * 2)
    ref = store.put(big)
    message = RunTask(
        key="k",
        run_id=1,
        function_token="t",
        args=dumps_inline(((TaskRef("a"),), {"b": 2})),
        dependencies={"a": ref, "c": dumps_inline(5)},
    )
    args, kwargs, values = load_inputs(message)
    assert args == (TaskRef("a"),)
    assert kwargs == {"b": 2}
    assert values == {"a": big, "c": 5}


@pytest.mark.parametrize(
    ("cls", "name"),
    [(int, "int"), (BlobStore, "localsched.transport.shm.BlobStore")],
)
def test_typename_matches_dask(cls: type, name: str) -> None:
    assert typename(cls) == name


def test_to_message_unlinks_nothing_it_did_not_write(store: BlobStore) -> None:
    before = set(os.listdir(store.directory))
    to_message("k", 1, Success(1, 1.0, 2.0), store.writer())
    assert set(os.listdir(store.directory)) == before
