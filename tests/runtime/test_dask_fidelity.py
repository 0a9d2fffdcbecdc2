"""dask.distributed's behaviours its own tests check: result types and sizes,
duration strings, short tracebacks, the task client's connect timeout,
``Scheduler.computations`` and distributed's registry of default clients."""

from __future__ import annotations

import sys
import traceback

import pytest

from localsched import Client, default_client, wait, worker_client
from localsched.client.result_types import resolve_type
from tests.runtime.helpers import DEADLINE, block

pytestmark = pytest.mark.timeout(60)

np = pytest.importorskip("numpy")


class Point:
    """A result type defined at module level: found again by its name."""


def make_point() -> Point:
    return Point()


def make_local() -> object:
    class Local:
        pass

    return Local()


def inc(x: int) -> int:
    return x + 1


def div(x: float, y: float) -> float:
    return x / y


def connect_within_no_time() -> int:
    with worker_client(timeout=0):
        return 1


# -- Future.type and nbytes -------------------------------------------------------


def test_future_type_is_the_results_type_object(client):
    number, array, point, local = (
        client.submit(inc, 1),
        client.submit(np.ones, 3),
        client.submit(make_point),
        client.submit(make_local),
    )
    wait([number, array, point, local], timeout=DEADLINE)
    assert number.type is int
    assert array.type is np.ndarray
    assert point.type is Point
    # A class made inside a function has no name to import it by: its name.
    assert local.type == f"{__name__}.make_local.<locals>.Local"
    assert "type: int" in repr(number)


def test_scattered_futures_have_the_values_own_type(client):
    class Mine:
        pass

    futures = client.scatter([1, Mine(), np.arange(3)])
    assert [f.type for f in futures[::2]] == [int, np.ndarray]
    assert futures[1].type is Mine  # the very class, though it has no import path


def test_resolve_type_finds_nested_and_builtin_types_by_name():
    assert resolve_type("int") is int
    assert resolve_type("collections.OrderedDict").__name__ == "OrderedDict"
    assert resolve_type("tests.runtime.test_dask_fidelity.Point") is Point
    assert resolve_type("no.such.module.Type") == "no.such.module.Type"


def test_nbytes_are_the_values_sizes_as_dask_counts_them(client):
    from dask.sizeof import sizeof

    incs = client.map(inc, [1, 2, 3])
    scattered = client.scatter([b"x" * 1000])
    wait(incs + scattered, timeout=DEADLINE)
    sizes = client.nbytes(summary=False)
    assert {f.key: sizes[f.key] for f in incs} == {f.key: sizeof(2) for f in incs}
    assert sizes[scattered[0].key] == 1000
    assert client.nbytes(summary=True)["inc"] == 3 * sizeof(1)


# -- duration strings, tracebacks, connect timeout ------------------------------------


def test_result_and_wait_for_workers_take_duration_strings(client, tmp_path):
    release = str(tmp_path / "release")
    blocked = client.submit(block, release, None, 7, pure=False)
    with pytest.raises(TimeoutError):
        blocked.result(timeout="10 ms")
    client.wait_for_workers(2, timeout="30 s")
    open(release, "w").close()
    assert blocked.result(timeout=f"{DEADLINE} s") == 7


@pytest.mark.parametrize("method", ["result", "gather"])
def test_task_errors_raise_with_short_tracebacks(client, method):
    future = client.submit(div, 1, 0)
    with pytest.raises(ZeroDivisionError) as info:
        future.result() if method == "result" else client.gather(future)
    frames = [f.f_code.co_name for f, _ in traceback.walk_tb(info.value.__traceback__)]
    # This test's frame, the call, then the task's frame: none of ours between.
    assert frames[1:] == [method, "div"]


@pytest.mark.parametrize("method", ["result", "gather"])
def test_a_client_given_a_loop_raises_with_short_tracebacks(client, method):
    # A client bound to an event loop answers per call (blocking here, out of
    # the loop): the method that decides leaves no frame in the traceback.
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        with Client(client.cluster, loop=loop) as bound:
            future = bound.submit(div, 1, 0)
            with pytest.raises(ZeroDivisionError) as info:
                future.result() if method == "result" else bound.gather(future)
    finally:
        loop.close()
    tb = info.value.__traceback__
    frames = [f.f_code.co_name for f, _ in traceback.walk_tb(tb)]
    assert frames[1:] == [method, "div"]


def test_worker_client_connects_within_its_timeout(client):
    future = client.submit(connect_within_no_time, pure=False)
    with pytest.raises(OSError, match="Timed out trying to connect"):
        future.result(timeout=DEADLINE)


# -- computations ----------------------------------------------------------------------


def test_computations_record_graphs_and_the_calling_code(client):
    import dask
    import dask.array as da

    before = len(client.scheduler.computations)
    total = da.ones((10, 10), chunks=(3, 3)).sum()
    with dask.config.set({"distributed.diagnostics.computations.nframes": 2}):
        assert total.compute() == 100

    def newest(dask_scheduler):
        return dask_scheduler.computations[-1]

    computation = client.run_on_scheduler(newest)
    assert len(client.scheduler.computations) == before + 1
    (code,) = computation.code
    assert code[-1].code.startswith("def test_computations_record_graphs")
    # Its groups' tasks, all computed and forgotten since.
    assert {state for state, n in computation.states.items() if n} == {"forgotten"}
    assert computation.stop >= computation.start > 0


# -- default clients -----------------------------------------------------------------


def test_default_clients_are_also_distributeds_global_clients():
    registry = pytest.importorskip("distributed.client")
    # This module's shared client, if distributed was imported before it began.
    before = registry._get_global_client()
    with Client(n_workers=1, threads_per_worker=1) as outer:
        assert registry._get_global_client() is outer
        with Client(outer.cluster) as inner:
            assert registry._get_global_client() is inner
            assert default_client() is inner
            assert default_client(outer) is outer
        assert registry._get_global_client() is outer
        # dask would pick its distributed-only "p2p" methods: the task ones.
        config = sys.modules["dask"].config
        assert config.get("dataframe.shuffle.method") == "tasks"
        assert config.get("array.rechunk.method") == "tasks"
    assert registry._get_global_client() is before


# -- repr ------------------------------------------------------------------------------


@pytest.mark.parametrize("render", [str, repr, lambda c: c._repr_html_()])
def test_the_repr_shows_the_clusters_total_memory_limit(render):
    # dask's test_repr asks for 2 GiB per worker (the runner's adapter does not
    # pass that limit on; see docs/migrating.md).
    from localsched import LocalCluster

    with (
        LocalCluster(n_workers=3, threads_per_worker=1, memory_limit="2 GiB") as lc,
        Client(lc) as client,
    ):
        text = render(client)
        assert "6.00 GiB" in text
        assert "threads=3" in text or "Total threads" in text


class _RefusesNbytes:
    """As a dask DataFrame: ``nbytes`` is a property that raises."""

    value = 7

    @property
    def nbytes(self) -> int:
        raise NotImplementedError("nbytes is not implemented on this")


def test_scatter_of_a_value_whose_nbytes_raises(client):
    [future] = client.scatter([_RefusesNbytes()])
    assert future.result().value == 7
