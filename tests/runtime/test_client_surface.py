"""dask.distributed's client surface: current clients, reprs, errors, cluster tools."""

from __future__ import annotations

import concurrent.futures
import gzip
import os
import sys
import threading

import pytest

import localsched
from localsched import Client, LocalCluster, default_client, get_client, wait
from localsched.client.cluster_tools import UploadedModules
from tests.runtime.helpers import DEADLINE, block, poll, raise_value_error

pytestmark = pytest.mark.timeout(60)

NO_CLIENT = (
    r"No clients found\nStart a client and point it to the scheduler address"
    r"\n  from distributed import Client"
    r"\n  client = Client\('ip-addr-of-scheduler:8786'\)"
)


def inc(x: int) -> int:
    return x + 1


def div(x: float, y: float) -> float:
    return x / y


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, validate=True) as shared:
        yield shared


# -- the current client -----------------------------------------------------------


def test_the_current_client_is_the_innermost_with_block(cluster):
    with pytest.raises(ValueError, match=NO_CLIENT):
        Client.current()
    with Client(cluster) as outer:
        assert Client.current() is outer
        assert Client.current(allow_global=False) is outer
        with Client(cluster) as inner:
            assert Client.current(allow_global=False) is inner
            assert default_client() is inner
        assert Client.current(allow_global=False) is outer
        with pytest.raises(KeyError), Client(cluster):
            raise KeyError("leaves the block")
        assert Client.current(allow_global=False) is outer
    with pytest.raises(ValueError, match="as_current"):
        Client.current(allow_global=False)
    with pytest.raises(ValueError, match=NO_CLIENT):
        default_client()


def test_leaving_a_with_block_from_another_thread_raises_dasks_error(cluster):
    client = Client(cluster)
    with (
        concurrent.futures.ThreadPoolExecutor(1) as one,
        concurrent.futures.ThreadPoolExecutor(1) as other,
    ):
        one.submit(client.__enter__).result()
        with pytest.raises(ValueError, match="was created in a different Context"):
            other.submit(client.__exit__, None, None, None).result()
    assert client.status == "closed"  # closed all the same


def test_as_current_is_local_to_each_thread(cluster):
    inside = threading.Barrier(2, timeout=DEADLINE)

    def run() -> bool:
        with Client(cluster, set_as_default=False) as client, client.as_current():
            inside.wait()  # both threads are in their block now
            return (
                Client.current(allow_global=False) is client
                and default_client() is client
            )

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert all(f.result() for f in [pool.submit(run) for _ in range(2)])


def test_unknown_cluster_types_and_asynchronous_raise_dasks_errors():
    with pytest.raises(TypeError, match="Scheduler address must be a string or a"):
        Client(LocalCluster)  # the class, not a cluster
    with pytest.raises(RuntimeError, match=r"LoopRunner\(asynchronous=True\)"):
        Client(asynchronous=True)


# -- attributes and reprs ----------------------------------------------------------


def test_futures_lists_the_keys_held_until_released(cluster):
    with Client(cluster) as client:
        future = client.submit(inc, 1, key="held")
        assert "held" in client.futures
        assert client.futures["held"].status in ("pending", "finished")
        future.release()
        assert "held" not in client.futures


def test_repr_names_the_scheduler_threads_and_memory_then_no_scheduler(cluster):
    with Client(cluster) as client:
        text = repr(client)
        assert client.scheduler.address in text
        assert "processes=2 threads=2" in text
        assert str(client) == text
        assert client.scheduler.address in client._repr_html_()
        assert client.dashboard_link is None
        assert not client.direct_to_workers
        client.start()  # idempotent, as dask's
        assert isinstance(client.scheduler_info()["started"], float)
    assert repr(client) == "<Client: No scheduler connected>"
    assert "No scheduler connected" in client._repr_html_()


def test_a_tasks_client_talks_to_workers_directly(cluster):
    with Client(cluster) as client:
        assert client.submit(lambda: get_client().direct_to_workers).result()


def test_scheduler_address_finds_the_cluster_in_this_process(cluster):
    with LocalCluster(n_workers=1, threads_per_worker=1) as other:
        assert other.scheduler_address != cluster.scheduler_address
        with Client(other.scheduler_address) as client:
            assert client.cluster is other
            assert client.submit(inc, 1).result() == 2
            assert other.get_client() is client
        fresh = other.get_client()
        assert fresh.cluster is other
        fresh.close()
    with pytest.raises(ValueError, match="No running LocalCluster"):
        Client(other.scheduler_address)  # closed now


# -- the hang: an error while another task blocks ----------------------------------


def test_get_raises_the_first_error_while_another_task_blocks(cluster, tmp_path):
    release = str(tmp_path / "release")
    graph = {"x": (raise_value_error, 1), "y": (block, release)}
    with Client(cluster) as client:
        with pytest.raises(ValueError, match="1"):
            client.get(graph, ["x", "y"])
        assert poll(lambda: not client.futures)  # released at once
        # The running task is no longer the cluster's business.
        assert poll(lambda: not any(client.processing().values()))
        open(release, "w").close()
        assert client.submit(inc, 1).result() == 2


# -- recreating tasks here ----------------------------------------------------------


def test_recreate_error_locally_raises_the_blamed_tasks_error(cluster):
    with Client(cluster) as client:
        zero = client.submit(lambda: 0)
        bad = client.submit(div, 1, zero)
        total = client.submit(sum, [client.submit(inc, 1), bad])
        wait(total)
        with pytest.raises(ZeroDivisionError):
            client.recreate_error_locally(total)
        assert total.status == "error"
        with pytest.raises(ValueError, match="No errored futures passed"):
            client.recreate_error_locally(zero)


def test_recreate_task_locally_runs_it_here_with_the_clusters_inputs(cluster):
    with Client(cluster) as client:
        parts = [client.submit(div, 1, client.submit(inc, i)) for i in range(2)]
        total = client.submit(sum, parts)
        assert client.recreate_task_locally(total) == total.result() == 1.5


# -- state, versions and maintenance ------------------------------------------------


@pytest.mark.parametrize("format", ["msgpack", "yaml"])
def test_dump_cluster_state_writes_scheduler_workers_and_versions(
    cluster, tmp_path, format
):
    with Client(cluster) as client:
        done = client.submit(inc, 1, key="dumped")
        done.result()
        path = tmp_path / "dump"
        client.dump_cluster_state(str(path), format=format)
        if format == "msgpack":
            import msgpack

            with gzip.open(f"{path}.msgpack.gz") as f:
                state = msgpack.unpack(f, strict_map_key=False)
        else:
            import yaml

            state = yaml.safe_load((tmp_path / "dump.yaml").read_text())
        assert set(state["workers"]) == set(client.nthreads())
        assert state["scheduler"]["tasks"]["dumped"]["state"] == "memory"
        assert "packages" in state["versions"]["scheduler"]
        client.dump_cluster_state(f"file://{tmp_path}/url")  # from the scheduler
        assert (tmp_path / "url.msgpack.gz").is_file()


def test_get_versions_reports_client_scheduler_and_each_worker(cluster):
    with Client(cluster) as client:
        report = client.get_versions(check=True, packages=["pytest"])
        assert set(report["workers"]) == set(client.nthreads())
        assert report["client"]["packages"]["pytest"] == pytest.__version__
        assert report["client"]["packages"]["localsched"] is not None
        assert (
            report["scheduler"]["host"]["python"] == report["client"]["host"]["python"]
        )


def test_restart_workers_replaces_their_processes():
    with Client(n_workers=2, threads_per_worker=1) as client:
        before = client.run(os.getpid)
        first = sorted(before)[0]
        assert client.restart_workers([first]) == {first: "OK"}
        after = client.run(os.getpid)
        assert first not in after
        assert len(after) == 2
        assert before[first] not in after.values()
        assert client.restart_workers(["local://no/such"]) == {
            "local://no/such": "removed"
        }


def test_replicate_records_holders_and_rebalance_moves_nothing(cluster):
    with Client(cluster) as client:
        x, y = client.submit(inc, 1), client.submit(inc, 2)
        client.replicate([x, y], n=2)
        who_has = client.who_has([x, y])
        assert len(who_has[x.key]) == len(who_has[y.key]) == 2
        with pytest.raises(ValueError, match="delete data"):
            client.replicate([x], n=0)
        assert client.rebalance([x, y]) is None
        assert not client.amm.running()
        assert y.result() == 3


def test_scatter_broadcast_records_every_worker_as_holder(cluster):
    with Client(cluster) as client:
        workers = set(cluster.scheduler.workers)
        one, everywhere = client.scatter([1, 2]), client.scatter(3, broadcast=True)
        who_has = client.who_has([*one, everywhere])
        assert set(who_has[everywhere.key]) == workers
        assert all(len(who_has[f.key]) == 1 for f in one)
        for address, keys in client.has_what().items():
            assert everywhere.key in keys, address
        assert everywhere.result() == 3


def test_retired_workers_data_is_held_by_a_remaining_worker():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, validate=True) as cluster,
        Client(cluster) as client,
    ):
        first, second = list(cluster.scheduler.workers)
        made = client.submit(inc, 1, workers=[first])
        scattered = client.scatter(5, workers=[first])
        assert made.result(timeout=DEADLINE) == 2
        assert list(client.retire_workers([first])) == [first]
        keys = {made.key, scattered.key}
        assert client.who_has([made, scattered]) == {key: [second] for key in keys}
        assert keys <= set(client.has_what()[second])
        assert first not in client.has_what()
        assert made.result(timeout=DEADLINE) == 2


def test_a_directory_put_on_sys_path_later_is_importable_by_every_worker(tmp_path):
    # The function is pickled by reference, so the worker must import it.
    (tmp_path / "late_path_module.py").write_text(
        "import os\n\ndef where(x):\n    return x, os.getpid()\n"
    )
    with (
        LocalCluster(n_workers=1, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        assert client.submit(inc, 1).result(timeout=DEADLINE) == 2  # started before
        sys.path.append(str(tmp_path))
        try:
            import late_path_module

            before = client.submit(late_path_module.where, 1)
            assert before.result(timeout=DEADLINE)[0] == 1
            old = set(cluster.scheduler.workers)
            cluster.scale(2)
            client.wait_for_workers(2, timeout=DEADLINE)
            [new] = set(cluster.scheduler.workers) - old
            later = client.map(
                late_path_module.where, range(4), workers=[new], pure=False
            )
            assert [x for x, _ in client.gather(later)] == list(range(4))
            pids = client.run(os.getpid)
            assert {pid for _, pid in client.gather(later)} == {pids[new]}
            [first] = old
            assert before.result()[1] == pids[first]
        finally:
            sys.path.remove(str(tmp_path))
            sys.modules.pop("late_path_module", None)


def test_replicate_works_inside_a_task(cluster):
    def replicate_in_task(value):
        client = get_client()
        [future] = client.scatter([value])
        client.replicate(future)
        return len(client.who_has(future)[future.key])

    with Client(cluster) as client:
        assert client.submit(replicate_in_task, 5).result() == 2


def test_normalize_collection_reuses_held_futures(cluster):
    dask = pytest.importorskip("dask")
    with Client(cluster) as client:
        x = dask.delayed(inc)(1, dask_key_name="base")
        y = dask.delayed(inc)(x, dask_key_name="top")
        assert client.normalize_collection(y) is y  # nothing held yet
        held = client.compute(x)
        held.result()
        normalized = client.normalize_collection(y)
        assert type(normalized.__dask_graph__()["base"]).__name__ == "Future"
        assert client.compute(normalized).result() == 3


# -- upload_file -----------------------------------------------------------------------


def _import_value(name: str) -> int:
    import importlib

    return importlib.import_module(name).value


def test_upload_file_makes_a_module_importable_now_and_later(tmp_path):
    module = tmp_path / "uploaded_surface_mod.py"
    module.write_text("value = 1\n")
    with Client(n_workers=2, threads_per_worker=1) as client:
        cluster = client.cluster
        client.upload_file(str(module))
        module.unlink()  # served from what was read
        assert client.submit(_import_value, "uploaded_surface_mod").result() == 1
        module.write_text("value = 2\n")
        client.upload_file(str(module))  # reloaded where imported
        values = client.run(_import_value, "uploaded_surface_mod")
        assert set(values.values()) == {2}
        cluster.scale(3)
        client.wait_for_workers(3)
        values = client.run(_import_value, "uploaded_surface_mod")
        assert len(values) == 3  # the new worker too
        assert set(values.values()) == {2}
    UploadedModules.here().sources.pop("uploaded_surface_mod", None)


def test_upload_file_raises_the_modules_import_error(cluster, tmp_path):
    module = tmp_path / "broken_surface_mod.py"
    module.write_text("syntax-error!\n")
    with Client(cluster) as client, pytest.raises(SyntaxError):
        client.upload_file(str(module))
    UploadedModules.here().sources.pop("broken_surface_mod", None)


def test_dask_names_cancelled_error_and_local_client():
    import concurrent.futures

    assert localsched.CancelledError is concurrent.futures.CancelledError
    assert issubclass(localsched.FutureCancelledError, localsched.CancelledError)
    with pytest.warns(UserWarning, match="moved to worker_client"):
        assert localsched.local_client() is not None  # a context manager
