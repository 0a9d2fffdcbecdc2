"""dask graphs and collections on localsched: ``get``, ``compute``, ``persist``,
``dask.compute`` on the active client, annotations, priorities, chunked graphs."""

from __future__ import annotations

import sys
from operator import add, mul
from typing import Any

import cloudpickle
import pytest

from localsched import SchedulerPlugin

dask = pytest.importorskip("dask")
np = pytest.importorskip("numpy")
da = pytest.importorskip("dask.array")

from dask._task_spec import DataNode, Task, TaskRef  # noqa: E402

from localsched.client import dask_graphs  # noqa: E402
from tests.runtime.helpers import poll  # noqa: E402

# Task functions defined here reach workers by value, not by import.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x: int) -> int:
    return x + 1


class GraphRecorder(SchedulerPlugin):
    """Records what the core made of each new task (on the scheduler thread)."""

    name = "graph-recorder"

    def __init__(self) -> None:
        self.tasks: dict[Any, dict[str, Any]] = {}

    def update_graph(self, scheduler: Any, *, tasks: Any = (), **kwargs: Any) -> None:
        for key in tasks:
            ts = scheduler.tasks[key]
            self.tasks[key] = {
                "priority": ts.priority,
                "retries": ts.retries,
                "resources": ts.resource_restrictions,
                "workers": ts.worker_restrictions,
                "loose": ts.loose_restrictions,
                "annotations": ts.annotations,
            }


@pytest.fixture
def recorder(client: Any) -> Any:
    plugin = GraphRecorder()
    client.register_plugin(plugin)
    yield plugin
    client.unregister_scheduler_plugin(plugin.name)


def test_get_classic_tuple_graph(client):
    dsk = {"x": 1, "y": (inc, "x"), "z": (add, "y", (mul, 10, "x")), "w": ["y", "z"]}
    assert client.get(dsk, "z") == 12
    assert client.get(dsk, ["z", ["y", "w"]]) == [12, [2, [2, 12]]]
    futures = client.get(dsk, ["y", "z"], sync=False)
    assert [f.result() for f in futures] == [2, 12]


def test_get_task_spec_graph(client):
    dsk = {
        "a": DataNode("a", 5),
        "b": Task("b", inc, TaskRef("a")),
        "c": Task("c", add, TaskRef("a"), TaskRef("b")),
    }
    assert client.get(dsk, "c") == 11


def test_get_raises_task_error(client):
    with pytest.raises(ZeroDivisionError):
        client.get({"x": 0, "y": (divmod, 1, "x")}, "y")


def test_array_reduction_and_rechunk_with_x_compute(client):
    data = np.arange(40_000.0).reshape(200, 200)
    x = da.from_array(data, chunks=50)
    # x.compute() runs on the shared client: it is the default client.
    assert (x + x.T).mean().compute() == pytest.approx((data + data.T).mean())
    rechunked = x.rechunk((25, 100)).sum(axis=0)
    assert rechunked.chunks == ((100, 100),)
    np.testing.assert_array_equal(rechunked.compute(), data.sum(axis=0))
    assert dask.config.get("scheduler") is client_collections().DASK_SCHEDULER
    assert dask.base.get_scheduler() == client.get


def client_collections() -> Any:
    import localsched.client.dask_collections as module

    return module


def test_dataframe_groupby_aggregate(client):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    df = pd.DataFrame({"k": np.arange(300) % 7, "v": np.arange(300.0)})
    ddf = dd.from_pandas(df, npartitions=6)
    got = ddf.groupby("k").v.agg(["sum", "mean", "count"]).compute()
    expected = df.groupby("k").v.agg(["sum", "mean", "count"])
    pd.testing.assert_frame_equal(got.sort_index(), expected)
    persisted = client.persist(ddf)
    assert len(persisted) == 300
    again = persisted.groupby("k").v.agg(["sum", "mean", "count"]).compute()
    pd.testing.assert_frame_equal(again.sort_index(), expected)


def test_bag_fold(client):
    db = pytest.importorskip("dask.bag")
    bag = db.from_sequence(range(1000), npartitions=9)
    assert bag.fold(add, initial=0).compute() == sum(range(1000))
    assert bag.map(inc).filter(lambda v: v % 2 == 0).count().compute() == 500


def test_delayed_graph_with_future_argument(client):
    future = client.submit(inc, 41)
    total = dask.delayed(add)(dask.delayed(inc)(future), [future, 1][0])
    assert total.compute() == 85
    # dask.compute of several delayed objects: one graph, results in order.
    assert dask.compute(dask.delayed(inc)(1), dask.delayed(inc)(2)) == (2, 3)


def test_compute_returns_futures_and_passes_other_items_through(client):
    x = da.ones((100, 100), chunks=25)
    single = client.compute(x.sum())
    assert single.result() == 10_000
    futures = client.compute([x.sum(), x.mean(), 7])
    assert futures[2] == 7
    assert client.gather(futures) == [10_000, 1.0, 7]
    assert client.compute(x.sum(), sync=True) == 10_000


def test_persist_then_compute(client):
    x = da.random.random((120, 120), chunks=40)
    persisted = client.persist(x)
    values = list(dict(persisted.__dask_graph__()).values())
    assert all(type(v).__name__ == "Future" for v in values)
    assert len(values) == 9
    expected = x.compute()
    np.testing.assert_array_equal(persisted.compute(), expected)
    assert (persisted + 1).sum().compute() == pytest.approx((expected + 1).sum())
    # dask.persist goes through the client's persist too.
    (again,) = dask.persist(x + 1)
    assert all(
        type(v).__name__ == "Future" for v in dict(again.__dask_graph__()).values()
    )
    np.testing.assert_array_equal(again.compute(), expected + 1)


def test_annotations_are_honoured(client, recorder):
    workers = sorted(client.scheduler.workers)
    with dask.annotate(
        priority=7,
        retries=3,
        resources={"widget": 1},
        workers=[workers[0]],
        allow_other_workers=True,
    ):
        annotated = dask.delayed(inc)(1, dask_key_name="annotated")
    plain = dask.delayed(inc)(annotated, dask_key_name="plain")
    futures = client.compute(plain)
    # "widget" is a resource no worker has: the task waits, never runs.
    assert poll(lambda: "annotated" in recorder.tasks)
    seen = recorder.tasks["annotated"]
    assert seen["priority"][0] == -7
    assert seen["retries"] == 3
    assert seen["resources"] == {"widget": 1}
    assert seen["workers"] == {workers[0]}
    assert seen["loose"] is True
    assert recorder.tasks["plain"]["retries"] == 0
    assert recorder.tasks["plain"]["priority"][0] == 0
    client.cancel(futures)


def test_options_apply_to_every_task(client, recorder):
    dsk = {"o1": 1, "o2": (inc, "o1")}
    assert client.get(dsk, "o2", retries=2, priority=5) == 2
    assert recorder.tasks["o1"]["retries"] == 2
    assert recorder.tasks["o2"]["priority"][0] == -5


def test_priorities_follow_dask_order(client, recorder):
    x = da.ones((60, 60), chunks=10)
    total = (x + x.T).sum()
    futures = client.compute(total)
    futures.result()
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr

    expr = FinalizeCompute(collections_to_expr([total], True)).optimize()
    from dask.order import order as dask_order

    order = dask_order(dict(expr.__dask_graph__()))
    # The finalizing keys get a new name per optimization; the rest are equal.
    stable = {k: v for k, v in order.items() if "finalize" not in str(k)}
    assert len(stable) == len(order) - 2
    ours = {k: v["priority"][2] for k, v in recorder.tasks.items() if k in stable}
    assert ours == stable


def test_graph_posted_in_chunks_is_complete_and_releases_its_holds(client, monkeypatch):
    monkeypatch.setattr(dask_graphs, "FIRST_CHUNK", 3)
    monkeypatch.setattr(dask_graphs, "CHUNK_GROWTH", 2)
    events: list[Any] = []
    post = client._link.post

    def counting_post(event: Any) -> None:
        events.append(event)
        post(event)

    monkeypatch.setattr(client._link, "post", counting_post)
    x = da.arange(400, chunks=4)
    total = x.sum(split_every=3)
    assert total.compute() == sum(range(400))
    graphs = [e for e in events if type(e).__name__ == "UpdateGraph"]
    assert len(graphs) >= 5
    released = [
        e
        for e in events
        if type(e).__name__ == "ClientReleasesKeys"
        and e.stimulus_id.startswith("graph-chunks-done")
    ]
    assert len(released) == 1
    held = {k for e in graphs for k in e.keys}
    # Everything held only for later chunks was given back.
    assert held - {k for e in released for k in e.keys} == set(graphs[-1].keys)
    name = x.name
    assert poll(
        lambda: (
            not any(
                isinstance(k, tuple) and k[0] == name for k in client.scheduler.tasks
            )
        )
    )


def test_get_needs_known_keys(client):
    with pytest.raises(KeyError):
        client.get({"x": 1}, "missing")


def test_large_data_embedded_in_a_graph_goes_through_shared_memory(client, monkeypatch):
    from localsched.transport.shm import BlobRef

    payloads: list[Any] = []
    build = dask_graphs._SpecBuilder.spec

    def recording(self: Any, key: Any, node: Any) -> Any:
        spec = build(self, key, node)
        payloads.append(spec.args)
        return spec

    monkeypatch.setattr(dask_graphs._SpecBuilder, "spec", recording)
    data = np.arange(1_000_000.0).reshape(1000, 1000)
    x = da.from_array(data, chunks=(500, 1000))  # 8 MB of data in the graph
    assert (x * 2).sum().compute() == 2 * data.sum()
    assert any(isinstance(p, BlobRef) for p in payloads)
    np.testing.assert_array_equal(client.compute(x).result(), data)
