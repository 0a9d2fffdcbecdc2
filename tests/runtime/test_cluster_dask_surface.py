"""``LocalCluster``'s dask cluster attributes (deploy/cluster_api.py): status
equal to dask's ``Status``, ``scheduler_info``, a live ``workers`` mapping,
``scale``/``adapt`` by cores and memory, dask config handed to the workers."""

from __future__ import annotations

import dask
import pytest
from distributed.core import Status

from localsched import Client, LocalCluster
from tests.runtime.helpers import DEADLINE, poll


def test_status_equals_dask_status_and_the_string() -> None:
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        assert cluster.status == Status.running
        assert cluster.status == "running"
        assert Status.running == cluster.status
        assert cluster.status != Status.closed
        assert cluster.scheduler.status == Status.running
        # dask's tools set it to a Status member; it stays a string.
        cluster.status = Status.running
        assert isinstance(cluster.status, str)
    assert cluster.status == Status.closed
    assert cluster.scheduler.status == Status.closed
    assert {cluster.status} == {"closed"}  # hashes as the string


def test_scheduler_info_repr_and_live_workers() -> None:
    with LocalCluster(
        n_workers=2, threads_per_worker=1, memory_limit="1GiB"
    ) as cluster:
        info = cluster.scheduler_info
        assert info["address"] == cluster.scheduler_address
        assert sorted(w["status"] for w in info["workers"].values()) == ["running"] * 2
        text = repr(cluster)
        assert cluster.scheduler_address in text
        assert "memory=2.00 GiB" in text
        workers = cluster.workers
        assert len(workers) == 2
        assert all(w.nthreads == 1 for w in workers.values())
        assert all(w.address == w for w in workers.values())
    assert not workers  # live: empty once closed, as dask's dict


def test_scale_and_adapt_by_cores_and_memory() -> None:
    with LocalCluster(n_workers=0, threads_per_worker=2, memory_limit="1GB") as cluster:
        cluster.scale(cores=3)  # 2 workers of 2 threads
        assert poll(lambda: len(cluster.scheduler.workers) == 2, DEADLINE)
        assert len(cluster.worker_spec) == 2
        cluster.scale(memory="500MB")  # at least one worker
        assert poll(lambda: len(cluster.scheduler.workers) == 1, DEADLINE)
        adaptive = cluster.adapt(minimum_cores=3, maximum_memory="3GB")
        assert (adaptive.minimum, adaptive.maximum) == (2, 3)
        adaptive.stop()
        with dask.config.set({"distributed.adaptive.minimum": 1}):
            assert cluster.adapt(maximum=2).minimum == 1
        with pytest.raises(ValueError, match="memory_limit"):
            LocalCluster._memory_per_worker(_NoLimit())


class _NoLimit:
    memory_limit = 0


def test_workers_inherit_dask_config() -> None:
    with (
        dask.config.set({"localsched-test.inherited": 42}),
        Client(n_workers=1, threads_per_worker=1) as client,
    ):
        future = client.submit(dask.config.get, "localsched-test.inherited")
        assert future.result(timeout=DEADLINE) == 42


def test_dashboard_link_follows_dask_s_link_template() -> None:
    pytest.importorskip("bokeh")
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as lc:
        default = lc.dashboard_link
        assert default.startswith("http://127.0.0.1:")
        assert "/status?token=" in default
        token = default.split("token=", 1)[1]
        with dask.config.set({"distributed.dashboard.link": "{host}"}):
            assert lc.dashboard_link == f"127.0.0.1?token={token}"
        template = "https://proxy.example/{port}/status?x=1"
        with dask.config.set({"distributed.dashboard.link": template}):
            assert lc.dashboard_link.endswith(f"/status?x=1&token={token}")
