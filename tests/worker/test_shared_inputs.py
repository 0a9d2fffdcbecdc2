"""``SharedInputs``: dependencies of read-only tasks, unpickled once per worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localsched.transport.protocol import RunTask, TaskRef
from localsched.transport.shm import INLINE_THRESHOLD, BlobStore, dumps_inline
from localsched.worker.execute import load_inputs
from localsched.worker.shared_inputs import (
    READS_INPUTS_ONLY,
    SharedInputs,
    reads_inputs_only,
)


@pytest.fixture
def store() -> Iterator[BlobStore]:
    blob_store = BlobStore()
    yield blob_store
    blob_store.close()


def test_a_blob_is_unpickled_once_and_the_same_object_is_returned(
    store: BlobStore,
) -> None:
    ref = store.put(bytearray(INLINE_THRESHOLD * 2))
    shared = SharedInputs()
    first = shared.load(ref)
    assert shared.load(ref) is first
    assert (shared.hits, shared.misses) == (1, 1)
    assert shared.nbytes == ref.nbytes
    assert first == bytearray(INLINE_THRESHOLD * 2)


def test_inline_payloads_are_not_kept() -> None:
    shared = SharedInputs()
    payload = dumps_inline([1, 2])
    assert shared.load(payload) == [1, 2]
    assert shared.load(payload) is not shared.load(payload)
    assert len(shared) == 0


def test_least_recently_used_blobs_go_first_past_the_byte_bound(
    store: BlobStore,
) -> None:
    refs = [store.put(bytes([i]) * INLINE_THRESHOLD * 2) for i in range(3)]
    shared = SharedInputs(max_bytes=2 * refs[0].nbytes)
    values = [shared.load(ref) for ref in refs[:2]]
    shared.load(refs[0])  # now the most recently used
    shared.load(refs[2])  # evicts refs[1]
    assert len(shared) == 2
    assert shared.load(refs[0]) is values[0]
    assert shared.load(refs[1]) is not values[1]  # loaded again
    assert shared.load(refs[1]) == values[1]
    assert shared.nbytes <= shared.max_bytes


def test_a_blob_larger_than_the_bound_is_loaded_but_not_kept(store: BlobStore) -> None:
    ref = store.put(bytes(INLINE_THRESHOLD * 4))
    shared = SharedInputs(max_bytes=ref.nbytes - 1)
    assert shared.load(ref) == bytes(INLINE_THRESHOLD * 4)
    assert len(shared) == 0
    assert shared.nbytes == 0


def test_clear_forgets_every_value(store: BlobStore) -> None:
    ref = store.put(bytes(INLINE_THRESHOLD * 2))
    shared = SharedInputs()
    first = shared.load(ref)
    shared.clear()
    assert len(shared) == 0
    assert shared.nbytes == 0
    assert shared.load(ref) is not first


def test_load_inputs_loads_dependencies_through_the_given_loader(
    store: BlobStore,
) -> None:
    ref = store.put(bytes(INLINE_THRESHOLD * 2))
    message = RunTask(
        key="k",
        run_id=1,
        function_token="t",
        args=dumps_inline(((TaskRef("a"),), {})),
        dependencies={"a": ref},
    )
    shared = SharedInputs()
    _, _, first = load_inputs(message, shared.load)
    _, _, second = load_inputs(message, shared.load)
    assert first["a"] is second["a"]
    _, _, private = load_inputs(message)  # the default: a private copy
    assert private["a"] is not first["a"]
    assert private["a"] == first["a"]


def test_only_marked_functions_read_inputs_only() -> None:
    def marked(x: object) -> object:
        return x

    setattr(marked, READS_INPUTS_ONLY, True)
    assert reads_inputs_only(marked)
    assert not reads_inputs_only(len)
    assert not reads_inputs_only(lambda x: x)
