"""``LocalCluster``'s options as dask takes them (``localsched.deploy.options``):
unknown keyword arguments raise, dask's config fills what was not given."""

from __future__ import annotations

import math

import pytest

from localsched import Client, LocalCluster
from localsched.deploy.options import check_keywords, scheduler_options

dask = pytest.importorskip("dask")


@pytest.mark.parametrize("make", [LocalCluster, Client])
def test_a_typo_in_a_keyword_raises_before_anything_starts(make):
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_worker'"):
        make(n_worker=2)


def test_dask_options_that_mean_nothing_here_are_accepted():
    check_keywords("LocalCluster", ["dashboard_address", "silence_logs", "host"])


def test_config_is_read_when_no_value_is_given():
    with dask.config.set(
        {
            "distributed.scheduler.allowed-failures": 0,
            "distributed.scheduler.worker-saturation": "inf",
            "distributed.scheduler.work-stealing": False,
            "distributed.diagnostics.computations.max-history": 7,
            "distributed.admin.low-level-log-length": 12,
        }
    ):
        options = scheduler_options()
    assert options == {
        "allowed_failures": 0,  # 0 is a value, not "unset"
        "worker_saturation": math.inf,
        "work_stealing": False,
        "computations_max_history": 7,
        "transition_log_length": 12,
    }


def test_the_transition_log_keeps_dasks_low_level_log_length():
    # dask's Scheduler keeps the last ``low-level-log-length`` transitions.
    with dask.config.set({"distributed.admin.low-level-log-length": 5}):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, validate=True)
    with cluster, Client(cluster) as client:
        first = client.submit(sum, [1, 2], key="a")
        assert first.result() == 3
        second = client.submit(sum, [3, 4], key="b")
        assert second.result() == 7
        log = cluster.scheduler.transition_log
        assert log.maxlen == 5
        # a's three transitions and b's three: the oldest one was dropped.
        assert [entry.key for entry in log] == ["a", "a", "b", "b", "b"]
    # distributed.yaml's default (dask's config has it once distributed loads).
    assert scheduler_options()["transition_log_length"] == 1000


def test_a_given_value_wins_over_config():
    with dask.config.set({"distributed.scheduler.allowed-failures": 7}):
        assert scheduler_options(allowed_failures=0)["allowed_failures"] == 0
        assert scheduler_options()["allowed_failures"] == 7


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="allowed_failures"):
        scheduler_options(allowed_failures=-1)
    with pytest.raises(ValueError, match="worker_saturation"):
        scheduler_options(worker_saturation=0)
    with (
        dask.config.set({"distributed.admin.low-level-log-length": -1}),
        pytest.raises(ValueError, match="low-level-log-length"),
    ):
        scheduler_options()
