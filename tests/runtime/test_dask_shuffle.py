"""dask.dataframe shuffles on localsched: dask's ``"tasks"`` shuffle by default
while a client is current, its splits computed inside their concat, and the
results equal to dask's own on the same data."""

from __future__ import annotations

import operator
import sys
from typing import Any

import cloudpickle
import pytest

from localsched import Client

dask = pytest.importorskip("dask")
np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")
dd = pytest.importorskip("dask.dataframe")

from dask._task_spec import Task, TaskRef, convert_legacy_graph  # noqa: E402
from dask.utils import get_default_shuffle_method  # noqa: E402

from localsched.client.dask_shuffle import (  # noqa: E402
    inline_splits,
    is_selection,
    reads_inputs_only,
)

# Task functions defined here reach workers by value, not by import.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def frames(rows: int, npartitions: int) -> tuple[Any, Any, Any, Any]:
    rng = np.random.default_rng(1)
    left = pd.DataFrame(
        {
            "k": rng.integers(0, rows // 10, rows),
            "x": rng.random(rows),
            "g": rng.integers(0, 50, rows),
        }
    )
    right = pd.DataFrame({"k": np.arange(rows // 10), "y": rng.random(rows // 10)})
    return (
        left,
        right,
        dd.from_pandas(left, npartitions=npartitions),
        dd.from_pandas(right, npartitions=max(2, npartitions // 2)),
    )


def demean(group: Any) -> Any:
    return group.assign(z=group.x - group.x.mean())


def operations(a: Any, b: Any) -> dict[str, Any]:
    meta = {"k": "i8", "x": "f8", "z": "f8"}
    return {
        "set_index": a.set_index("k"),
        "shuffle": a.shuffle("k"),
        "merge": a.merge(b, on="k"),
        "groupby_apply": a.groupby("g").apply(demean, meta=meta),
        "sort_values": a.sort_values(["k", "x"]),
        "drop_duplicates": a[["k", "g"]].drop_duplicates(split_out=4),
    }


def canonical(frame: Any) -> Any:
    """Rows in one order (a shuffle's row order is not specified)."""
    frame = frame.reset_index()
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def task_shuffle_graph(npartitions: int) -> dict[Any, Any]:
    _, _, a, _ = frames(400, npartitions)
    with dask.config.set({"dataframe.shuffle.method": "tasks"}):
        shuffled = a.shuffle("k")
        graph = dict(shuffled.__dask_graph__())
    return convert_legacy_graph(graph)


# -- choosing the shuffle ----------------------------------------------------


def test_tasks_shuffle_while_a_client_is_current_and_dask_s_default_after():
    assert get_default_shuffle_method() == "disk"
    with Client(n_workers=1, threads_per_worker=1) as client:
        assert get_default_shuffle_method() == "tasks"
        assert dask.base.get_scheduler() == client.get
    assert get_default_shuffle_method() == "disk"
    with Client(n_workers=1, threads_per_worker=1, set_as_default=False) as client:
        assert get_default_shuffle_method() == "disk"
        with client.as_current():
            assert get_default_shuffle_method() == "tasks"
        assert get_default_shuffle_method() == "disk"


def test_a_shuffle_method_the_user_chose_is_kept():
    with dask.config.set({"dataframe.shuffle.method": "disk"}):
        with Client(n_workers=1, threads_per_worker=1):
            assert get_default_shuffle_method() == "disk"
        assert get_default_shuffle_method() == "disk"


# -- the graph rewrite (no cluster) -----------------------------------------


@pytest.mark.parametrize("npartitions", [6, 40])  # 40 > max_branch: two stages
def test_splits_go_inside_their_concat_and_values_stay_the_same(npartitions):
    nodes = task_shuffle_graph(npartitions)
    splits = [key for key in nodes if str(key[0]).startswith("split-")]
    assert splits
    wanted = {key for key, node in nodes.items() if not _readers(nodes, key)}
    rewritten = inline_splits(nodes, wanted)
    assert not any(key in rewritten for key in splits)
    assert len(rewritten) == len(nodes) - len(splits)
    concats = [
        node
        for node in rewritten.values()
        if getattr(getattr(node, "func", None), "__name__", "") == "_concat"
    ]
    assert concats
    assert all(reads_inputs_only(n) for n in concats)
    before = dask.get(nodes, sorted(wanted, key=str))
    after = dask.get(rewritten, sorted(wanted, key=str))
    for one, other in zip(before, after, strict=True):
        pd.testing.assert_frame_equal(one, other)


def _readers(nodes: dict[Any, Any], key: Any) -> list[Any]:
    return [k for k, node in nodes.items() if key in node.dependencies]


def test_a_split_that_is_wanted_or_read_twice_stays_a_task():
    nodes = task_shuffle_graph(6)
    split = next(key for key in nodes if str(key[0]).startswith("split-"))
    kept = inline_splits(nodes, {split})
    assert split in kept
    extra = Task("reader", len, TaskRef(split))
    read_twice = inline_splits({**nodes, "reader": extra}, {"reader"})
    assert split in read_twice


def test_only_selections_of_constants_read_inputs_only():
    assert is_selection(Task("a", operator.getitem, TaskRef("d"), 3))
    assert is_selection(Task("a", operator.getitem, TaskRef("d"), ["x", "y"]))
    nested = Task(None, operator.setitem, TaskRef("d"), 0, 1)
    assert not is_selection(Task("a", operator.getitem, nested, 0))
    assert not reads_inputs_only(Task("a", len, TaskRef("d")))
    assert not reads_inputs_only(Task("a", operator.add, TaskRef("d"), 1))


# -- results on a cluster ------------------------------------------------------


OPERATIONS = list(operations(*frames(100, 2)[2:]))


@pytest.mark.parametrize("name", OPERATIONS)
def test_shuffles_equal_dask_s_local_results(client, name):
    _, _, a, b = frames(20_000, 8)
    with dask.config.set(scheduler="sync"):
        expected = operations(a, b)[name].compute()
    assert get_default_shuffle_method() == "tasks"
    got = operations(a, b)[name].compute()
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(canonical(got), canonical(expected))
    if name in ("set_index", "sort_values"):  # sorted output: the same order
        pd.testing.assert_frame_equal(got, expected)


@pytest.mark.parametrize("name", ["shuffle", "merge"])
def test_staged_shuffles_equal_dask_s_local_results(client, name):
    # 40 partitions > dask's max_branch of 32: the shuffle runs in two stages.
    _, _, a, b = frames(4_000, 40)
    with dask.config.set(scheduler="sync"):
        expected = operations(a, b)[name].compute()
    got = operations(a, b)[name].compute()
    pd.testing.assert_frame_equal(canonical(got), canonical(expected))


def test_persisted_shuffle_equals_pandas(client):
    left, right, a, b = frames(10_000, 8)
    merged = client.persist(a.merge(b, on="k"))
    expected = left.merge(right, on="k")
    got = merged.compute()
    columns = list(expected.columns)  # dask's index is per partition: not compared
    pd.testing.assert_frame_equal(
        got.sort_values(columns).reset_index(drop=True),
        expected.sort_values(columns).reset_index(drop=True),
    )


def _write_first(array: Any) -> float:
    array[0] = -1.0  # the task changes its own copy of its input
    return float(array.sum())


def test_a_task_writing_its_input_changes_nothing_read_only_tasks_see():
    with Client(n_workers=1, threads_per_worker=1, set_as_default=False) as client:
        data = np.arange(100_000, dtype=float)  # in shared memory, not inline
        (stored,) = client.scatter([data])
        first = client.submit(operator.getitem, stored, slice(0, 3))
        written = client.submit(_write_first, stored)
        with client.as_current():
            # getitem nodes of a dask graph are the read-only tasks.
            selections = [dask.delayed(operator.getitem)(stored, slice(0, 3))]
            again = dask.compute(*selections)
        assert written.result() == data.sum() - 1.0
        np.testing.assert_array_equal(first.result(), data[:3])
        np.testing.assert_array_equal(again[0], data[:3])
