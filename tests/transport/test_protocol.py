from __future__ import annotations

import os
import pickle
from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from localsched.transport import protocol
from localsched.transport.protocol import (
    PROTOCOL_VERSION,
    ForgetKeys,
    Goodbye,
    GrantSegments,
    Hello,
    Message,
    ProtocolError,
    RunTask,
    Shutdown,
    StealAnswer,
    StealQuery,
    TaskDone,
    TaskFailed,
    decode_batch,
    dumps_function,
    encode_batch,
    merge_forgets,
)
from localsched.transport.shm import BlobRef, SegmentLease

# Keys as dask builds them: strings, or tuples of a string and integers.
keys = st.one_of(
    st.text(max_size=20),
    st.tuples(st.text(max_size=10), st.integers(0, 10_000)),
    st.tuples(st.text(max_size=10), st.integers(0, 99), st.integers(0, 99)),
)
floats = st.floats(allow_nan=False)
blob_refs = st.builds(
    BlobRef,
    segment=st.text(min_size=1, max_size=40),
    blob_id=st.integers(0, 2**64 - 1),
    header=st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)),
    buffers=st.lists(
        st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)), max_size=3
    ).map(tuple),
    nbytes=st.integers(0, 2**40),
)
payloads = st.one_of(st.binary(max_size=64), blob_refs)
texts = st.text(max_size=40)

messages = st.one_of(
    st.builds(
        RunTask,
        key=keys,
        run_id=st.integers(-1, 2**40),
        function_token=st.text(min_size=1, max_size=32),
        function=st.none() | st.binary(max_size=64),
        args=payloads,
        dependencies=st.dictionaries(keys, payloads, max_size=3),
        priority=st.lists(st.integers(-100, 100), max_size=3).map(tuple),
    ),
    st.builds(ForgetKeys, keys=st.lists(keys, max_size=4).map(tuple)),
    st.builds(StealQuery, key=keys),
    st.builds(
        GrantSegments,
        leases=st.lists(
            st.builds(
                SegmentLease,
                segment=st.text(min_size=1, max_size=40),
                capacity=st.integers(0, 2**40),
            ),
            max_size=3,
        ).map(tuple),
    ),
    st.builds(Shutdown, reason=texts),
    st.builds(Hello, pid=st.integers(1, 2**22), nthreads=st.integers(1, 256)),
    st.builds(
        TaskDone,
        key=keys,
        run_id=st.integers(-1, 2**40),
        payload=payloads,
        nbytes=st.integers(0, 2**40),
        type=texts,
        start=floats,
        stop=floats,
    ),
    st.builds(
        TaskFailed,
        key=keys,
        run_id=st.integers(-1, 2**40),
        exception=st.none() | st.binary(max_size=64),
        exception_text=texts,
        traceback_text=texts,
        traceback=st.none() | st.binary(max_size=64),
        start=floats,
        stop=floats,
    ),
    st.builds(
        StealAnswer,
        key=keys,
        state=st.sampled_from([None, "ready", "executing", "memory"]),
    ),
    st.builds(Goodbye, reason=texts),
)
batches = st.lists(messages, max_size=8)


@given(batches)
def test_encode_then_decode_round_trips(batch: list[Message]) -> None:
    assert decode_batch(encode_batch(batch)) == batch


@given(st.binary(max_size=512))
def test_any_bytes_decode_to_messages_or_raise_protocol_error(data: bytes) -> None:
    try:
        decoded = decode_batch(data)
    except ProtocolError:
        return
    assert isinstance(decoded, list)
    assert all(isinstance(message, Message) for message in decoded)


@given(batches, st.data())
def test_corrupted_batches_decode_to_messages_or_raise_protocol_error(
    batch: list[Message], data: st.DataObject
) -> None:
    # Random bytes rarely get past the pickle header; flipping bytes of a real
    # batch reaches the deeper paths (wrong field values, truncated frames).
    encoded = bytearray(encode_batch(batch))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    try:
        decoded = decode_batch(bytes(encoded[:cut]))
    except ProtocolError:
        return
    for message in decoded:
        assert isinstance(message, Message)
        for field in fields(message):
            getattr(message, field.name)  # every field is set


def test_decoding_refuses_globals_outside_the_protocol(tmp_path) -> None:
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    data = pickle.dumps([Exploit()], protocol=5)
    with pytest.raises(ProtocolError, match=r"forbidden global posix\.mkdir"):
        decode_batch(data)
    assert not marker.exists()


@pytest.mark.parametrize(
    "value",
    [("not", "a", "list"), [1, 2], [Goodbye(reason="x"), "stray"], {}],
    ids=["tuple", "ints", "stray-string", "dict"],
)
def test_pickles_that_are_not_message_lists_raise_protocol_error(value) -> None:
    with pytest.raises(ProtocolError):
        decode_batch(pickle.dumps(value, protocol=5))


def test_a_message_missing_a_field_raises_protocol_error() -> None:
    # [Hello.__new__(Hello)]: NEWOBJ with no BUILD, so no field is ever set.
    data = b"".join(
        [
            pickle.PROTO + b"\x05" + pickle.EMPTY_LIST,
            _short_unicode(Hello.__module__),
            _short_unicode(Hello.__qualname__),
            pickle.STACK_GLOBAL + pickle.EMPTY_TUPLE + pickle.NEWOBJ,
            pickle.APPEND + pickle.STOP,
        ]
    )
    with pytest.raises(ProtocolError, match="Hello without pid"):
        decode_batch(data)


def test_encoding_an_unpicklable_key_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="cannot encode"):
        encode_batch([StealQuery(key=lambda: None)])


def test_hello_carries_the_protocol_version() -> None:
    assert Hello(pid=1, nthreads=2).version == PROTOCOL_VERSION


def test_messages_are_slotted_records() -> None:
    # Not frozen (construction per task would cost three times as much), but
    # no attribute beyond the fields can be set.
    message = Goodbye(reason="done")
    with pytest.raises(AttributeError):
        message.extra = "x"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "state", [("k", 1), ("k", 1, b"", 0, "int", 0.0, 0.0, 0, 0.0, 9)]
)
def test_a_message_state_of_the_wrong_length_raises_protocol_error(
    state, monkeypatch
) -> None:
    # decode_batch checks one field per message: that is sound only because a
    # state sets every field or none.
    done = TaskDone(
        key="k", run_id=1, payload=b"", nbytes=0, type="int", start=0.0, stop=0.0
    )
    monkeypatch.setattr(TaskDone, "__getstate__", lambda self: state)
    data = pickle.dumps([done], protocol=5)
    monkeypatch.undo()
    with pytest.raises(ProtocolError, match="undecodable batch"):
        decode_batch(data)


def test_every_message_class_is_decodable() -> None:
    # A message class missing from the allowlist would only fail at run time.
    classes = {cls for cls in vars(protocol).values() if _is_message_class(cls)}
    assert classes == set(protocol._MESSAGE_TYPES)


def test_dumps_function_gives_equal_tokens_for_equal_pickles() -> None:
    token, data = dumps_function(divmod)
    assert dumps_function(divmod) == (token, data)
    assert dumps_function(pow)[0] != token
    assert pickle.loads(data) is divmod


def _is_message_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, Message) and obj is not Message


def _short_unicode(text: str) -> bytes:
    encoded = text.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(encoded)]) + encoded


def test_consecutive_forget_keys_merge_in_order():
    run = RunTask(
        key="b",
        run_id=1,
        function_token="t",
        function=None,
        args=b"",
        dependencies={},
        priority=(0,),
        resource_restrictions=None,
        actor=False,
    )
    batch = [ForgetKeys(keys=("a",)), ForgetKeys(keys=("b", "c")), run]
    batch += [ForgetKeys(keys=("b",)), ForgetKeys(keys=("d",))]
    merged = merge_forgets(batch)
    assert merged == [
        ForgetKeys(keys=("a", "b", "c")),
        run,
        ForgetKeys(keys=("b", "d")),
    ]
    assert decode_batch(encode_batch(merged)) == merged
