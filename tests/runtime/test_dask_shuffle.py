"""dask.dataframe shuffles on localsched: dask's ``"tasks"`` shuffle by default
while a client is current, its groups packed into one frame each
(``ShufflePieces``), its splits computed inside their concat, the steps around
them fused, and the results equal to dask's own on the same data."""

from __future__ import annotations

import operator
import pickle
import sys
from typing import Any

import cloudpickle
import pytest

from localsched import Client

dask = pytest.importorskip("dask")
np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")
dd = pytest.importorskip("dask.dataframe")

from dask._task_spec import (  # noqa: E402
    Alias,
    DataNode,
    Task,
    TaskRef,
    convert_legacy_graph,
)
from dask.utils import get_default_shuffle_method  # noqa: E402

from localsched.client.dask_shuffle import (  # noqa: E402
    fuse_shuffle_chains,
    inline_splits,
    is_selection,
    pack_shuffle_groups,
    reads_inputs_only,
    skip_aliases,
)
from localsched.client.shuffle_pieces import (  # noqa: E402
    ShufflePieces,
    group_function,
    select_piece,
    shuffle_group_pieces,
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
        "some_partitions": a.shuffle("k").partitions[1:],  # filtered groups
    }


def canonical(frame: Any) -> Any:
    """Rows in one order (a shuffle's row order is not specified)."""
    frame = frame.reset_index()
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def task_shuffle_graph(npartitions: int, name: str = "shuffle") -> dict[Any, Any]:
    _, _, a, b = frames(400, npartitions)
    with dask.config.set({"dataframe.shuffle.method": "tasks"}):
        shuffled = operations(a, b)[name]
        graph = dict(shuffled.__dask_graph__())
    return convert_legacy_graph(graph)


def graph_outputs(nodes: dict[Any, Any]) -> set[Any]:
    """The keys no node reads."""
    read = set().union(*(node.dependencies for node in nodes.values()))
    return set(nodes) - read


def rewrite(nodes: dict[Any, Any], keep: set[Any]) -> dict[Any, Any]:
    """The client's rewrite of a graph (``dask_graphs.submit_graph``)."""
    nodes = pack_shuffle_groups(skip_aliases(nodes, (), keep), keep)  # as wanted
    return fuse_shuffle_chains(inline_splits(nodes, keep), keep)


def assert_same_values(nodes: dict[Any, Any], rewritten: dict[Any, Any]) -> None:
    wanted = sorted(graph_outputs(nodes), key=str)
    before = dask.get(nodes, wanted)
    after = dask.get(rewritten, wanted)
    for one, other in zip(before, after, strict=True):
        pd.testing.assert_frame_equal(one, other)


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


# -- packed groups (no cluster) -----------------------------------------------


def test_dask_s_task_shuffle_still_calls_the_group_function_we_replace():
    # If dask moves or renames it, the client rewrites nothing (the shuffle
    # still works, but each group is dask's dict of pieces again): this fails.
    original = group_function()
    assert original is not None
    nodes = task_shuffle_graph(6)
    groups = [k for k, n in nodes.items() if getattr(n, "func", None) is original]
    assert len(groups) == 6
    packed = pack_shuffle_groups(nodes, set())
    assert all(packed[k].func is shuffle_group_pieces for k in groups)
    splits = [k for k in nodes if str(k[0]).startswith("split-")]
    assert splits
    assert all(packed[k].func is select_piece for k in splits)


def _group_cases() -> list[Any]:
    # (cols, stage, k, npartitions, ignore_index, nfinal, _filter): dask's
    # single-stage shuffle on "_partitions", on hashed columns, a staged
    # shuffle's two stages, fewer final partitions, ignore_index, filtered.
    return [
        ("_partitions", 0, 8, 8, False, 8, None),
        (["k"], 0, 8, 8, False, 8, None),
        (["k", "g"], 0, 4, 16, False, 16, None),
        (["k"], 1, 4, 16, True, 16, None),
        (["k"], 0, 8, 8, False, 5, None),
        ("_partitions", 0, 8, 8, True, 8, [1, 3, 7]),
        ([], 0, 3, 3, False, 3, None),
    ]


@pytest.mark.parametrize("case", _group_cases())
def test_shuffle_pieces_equal_dask_s_groups(case):
    cols, stage, k, npartitions, ignore_index, nfinal, _filter = case
    left, _, _, _ = frames(5_000, 2)
    df = left.assign(_partitions=left.k % npartitions).set_index("x")
    args = (cols, stage, k, npartitions, ignore_index, nfinal)
    expected = group_function()(df, _filter, *args)
    got = shuffle_group_pieces(df, _filter, *args)
    assert type(got) is ShufflePieces
    assert list(got) == list(expected)
    for i in expected:
        pd.testing.assert_frame_equal(got[i], expected[i])
    with pytest.raises(KeyError):
        got[k]
    # One frame in the pickle, not k: it crosses processes once.
    again = pickle.loads(pickle.dumps(got, protocol=5))
    assert list(again) == list(got)
    first = next(iter(got))
    pd.testing.assert_frame_equal(again[first], got[first])


def test_groups_of_other_frames_are_dask_s():
    series = pd.Series(np.arange(100), name="k")
    expected = group_function()(series, None, [], 0, 4, 4, False, 4)
    got = shuffle_group_pieces(series, None, [], 0, 4, 4, False, 4)
    assert type(got) is type(expected)
    for i in expected:
        pd.testing.assert_series_equal(got[i], expected[i])


def test_a_selected_piece_is_a_new_object_its_writes_reach_no_other():
    left, _, _, _ = frames(1_000, 2)
    pieces = shuffle_group_pieces(left, None, ["k"], 0, 4, 4, False, 4)
    frame = pieces.frame.copy()
    piece = select_piece(pieces, 2)
    assert piece is not select_piece(pieces, 2)
    piece["x"] = -1.0
    piece.iloc[0, 0] = -5
    pd.testing.assert_frame_equal(pieces.frame, frame)
    plain = {0: left}
    assert select_piece(plain, 0) is not left
    pd.testing.assert_frame_equal(select_piece(plain, 0), left)


# -- fusing the steps around a shuffle (no cluster) ---------------------------


@pytest.mark.parametrize("name", ["shuffle", "merge", "set_index", "groupby_apply"])
def test_the_rewritten_graph_computes_dask_s_values(name):
    nodes = task_shuffle_graph(6, name) if name != "set_index" else None
    if nodes is None:
        # set_index computes divisions first: build it with a sync scheduler.
        with dask.config.set(scheduler="sync"):
            nodes = task_shuffle_graph(6, name)
    rewritten = rewrite(nodes, graph_outputs(nodes))
    assert len(rewritten) < len(nodes)
    assert not any(str(k[0]).startswith("split-") for k in rewritten)
    assert_same_values(nodes, rewritten)


def test_a_shuffle_runs_as_two_layers_whose_readers_share_their_inputs():
    nodes = task_shuffle_graph(6)
    outputs = graph_outputs(nodes)
    rewritten = rewrite(nodes, outputs)
    tasks = {k: n for k, n in rewritten.items() if type(n) is Task}
    groups = [k for k, n in tasks.items() if n.func is shuffle_group_pieces]
    assert len(groups) == 6
    # The partitioning index is computed inside each group task.
    assert all(rewritten[k].dependencies <= set(nodes) - set(tasks) for k in groups)
    # Each output: its concat and the dropped column, reading only pieces.
    readers = set(tasks) - set(groups)
    assert readers == outputs
    assert all(reads_inputs_only(rewritten[k]) for k in readers)
    assert all(rewritten[k].dependencies == set(groups) for k in readers)


def test_set_index_computes_a_partition_s_divisions_inside_its_group():
    # set_index reads the partition twice (its column for set_partitions_pre,
    # and the partition to assign that to): those steps run in the group.
    with dask.config.set(scheduler="sync"):
        nodes = task_shuffle_graph(6, "set_index")
    rewritten = rewrite(nodes, graph_outputs(nodes))
    tasks = {k: n for k, n in rewritten.items() if type(n) is Task}
    groups = [k for k, n in tasks.items() if n.func is shuffle_group_pieces]
    assert len(groups) == 6
    for key in groups:
        assert all(type(rewritten[d]) is DataNode for d in rewritten[key].dependencies)
    assert len(rewritten) == 6 * 3  # the input, its group, its output
    assert_same_values(nodes, rewritten)


def test_a_merge_reads_both_sides_pieces_in_one_task():
    nodes = task_shuffle_graph(6, "merge")
    outputs = graph_outputs(nodes)
    rewritten = rewrite(nodes, outputs)
    for key in outputs:
        assert reads_inputs_only(rewritten[key])
        assert all(
            rewritten[dep].func is shuffle_group_pieces
            for dep in rewritten[key].dependencies
        )
    assert_same_values(nodes, rewritten)


def test_compute_s_final_concat_leaves_the_outputs_parallel():
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr

    _, _, a, _ = frames(400, 6)
    with dask.config.set({"dataframe.shuffle.method": "tasks"}):
        expr = FinalizeCompute(collections_to_expr([a.shuffle("k")])).optimize()
        nodes = convert_legacy_graph(dict(expr.__dask_graph__()))
    rewritten = rewrite(nodes, graph_outputs(nodes))
    (final,) = graph_outputs(nodes)
    readers = [k for k, n in rewritten.items() if k != final and reads_inputs_only(n)]
    assert len(readers) >= 5  # at most the final task's own partition inlined
    assert_same_values(nodes, rewritten)


def test_kept_keys_are_never_fused_away():
    nodes = task_shuffle_graph(6)
    outputs = graph_outputs(nodes)
    index = next(k for k in nodes if str(k[0]).startswith("operation-"))
    concat = next(k for k in nodes if str(k[0]).startswith("taskshuffle-"))
    rewritten = rewrite(nodes, outputs | {index, concat})
    assert index in rewritten
    assert concat in rewritten
    assert_same_values(nodes, rewritten)


def test_a_step_read_twice_by_its_reader_is_not_fused_and_runs_once():
    calls = []

    def counted(frame: Any) -> Any:
        calls.append(1)
        return frame

    nodes = task_shuffle_graph(4)
    outputs = graph_outputs(nodes)
    group = next(k for k in nodes if str(k[0]).startswith("group-"))
    source = nodes[group].args[0].key
    # The partition's step, read twice by the group's input: (x + x) / 2 == x.
    step = ("counted-step", group[1])
    twice = Task(
        source,
        operator.truediv,
        Task(None, operator.add, TaskRef(step), TaskRef(step)),
        2,
    )
    nodes = {**nodes, step: Task(step, counted, nodes[source]), source: twice}
    rewritten = rewrite(nodes, outputs)
    assert step in rewritten
    dask.get(rewritten, sorted(outputs, key=str))
    assert len(calls) == 1


def test_only_tasks_reading_inputs_through_select_piece_share_them():
    piece = Task(None, select_piece, TaskRef("g"), 0)
    assert reads_inputs_only(Task("a", len, piece))
    assert reads_inputs_only(Task("a", operator.add, piece, piece))
    assert not reads_inputs_only(Task("a", operator.add, piece, TaskRef("h")))
    assert not reads_inputs_only(Task("a", len, TaskRef("g")))
    nested = Task(None, operator.getitem, TaskRef("g"), 0)
    assert not reads_inputs_only(Task("a", len, nested))
    by_key = Task(None, select_piece, TaskRef("g"), TaskRef("i"))
    assert not reads_inputs_only(Task("a", len, by_key))
    # A reference in a plain container (dask wraps them, but not always).
    assert not reads_inputs_only(Task("a", len, piece, ([TaskRef("h")],)))
    assert not reads_inputs_only(Task("a", len, piece, {"x": TaskRef("h")}))


def test_aliases_of_computed_keys_read_their_target():
    nodes = {
        "a": Alias("a", "f"),
        "b": Task("b", len, TaskRef("a")),
        "c": Alias("c", "b"),
        "d": Task("d", operator.neg, TaskRef("c")),
    }
    skipped = skip_aliases(nodes, {"f"}, {"d"})
    assert set(skipped) == {"b", "c", "d"}  # "c" aliases a key computed here
    assert skipped["b"].dependencies == {"f"}
    assert dask.get({**skipped, "f": DataNode("f", [1, 2])}, "d") == -2
    assert "a" in skip_aliases(nodes, {"f"}, {"a", "d"})


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


def _scale_in_place(frame: Any) -> Any:
    frame["x"] = frame["x"] * 2  # writes into the partition it was given
    frame.loc[frame.index[:3], "g"] = -1
    return frame


def test_a_step_writing_its_partition_after_a_shuffle_gets_dask_s_result(client):
    _, _, a, b = frames(20_000, 8)

    def build() -> Any:
        shuffled = a.shuffle("k").map_partitions(_scale_in_place)
        return shuffled.merge(b, on="k").map_partitions(_scale_in_place)

    with dask.config.set(scheduler="sync"):
        expected = build().compute()
    got = build().compute()
    pd.testing.assert_frame_equal(canonical(got), canonical(expected))
    again = build().compute()  # the workers' shared inputs were not changed
    pd.testing.assert_frame_equal(canonical(again), canonical(expected))


@pytest.mark.parametrize("name", ["shuffle", "merge", "groupby_apply"])
def test_shuffles_of_persisted_collections_equal_dask_s(client, name):
    # As the benchmark does: the inputs are persisted, so the graph reaches
    # them through aliases (skipped), then fused chains read them.
    _, _, a, b = frames(20_000, 8)
    with dask.config.set(scheduler="sync"):
        expected = operations(a, b)[name].compute()
    a, b = client.persist([a, b])
    got = operations(a, b)[name].compute()
    pd.testing.assert_frame_equal(canonical(got), canonical(expected))


def test_without_dask_s_group_function_the_shuffle_is_dask_s_and_still_right(
    client, monkeypatch
):
    # What happens if dask moves the function: nothing packed, same results.
    import localsched.client.dask_shuffle as dask_shuffle

    monkeypatch.setattr(dask_shuffle, "group_function", lambda: None)
    nodes = task_shuffle_graph(6)
    assert pack_shuffle_groups(nodes, set()) is nodes
    _, _, a, b = frames(20_000, 8)
    with dask.config.set(scheduler="sync"):
        expected = operations(a, b)["merge"].compute()
    got = operations(a, b)["merge"].compute()
    pd.testing.assert_frame_equal(canonical(got), canonical(expected))


def _count_calls(frame: Any, calls: list[int]) -> Any:
    calls.append(1)  # changes its input: each task must get its own copy
    return frame.assign(calls=len(calls))


def test_a_future_read_after_a_shuffle_is_each_task_s_own_copy(client):
    _, _, a, _ = frames(4_000, 4)
    (calls,) = client.scatter([[0] * 20_000])  # large: in shared memory
    meta = {**a.dtypes.to_dict(), "calls": "i8"}
    got = a.shuffle("k").map_partitions(_count_calls, calls, meta=meta).compute()
    assert set(got["calls"]) == {20_001}
