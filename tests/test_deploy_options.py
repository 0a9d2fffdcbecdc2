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
        }
    ):
        options = scheduler_options()
    assert options == {
        "allowed_failures": 0,  # 0 is a value, not "unset"
        "worker_saturation": math.inf,
        "work_stealing": False,
        "computations_max_history": 7,
    }


def test_a_given_value_wins_over_config():
    with dask.config.set({"distributed.scheduler.allowed-failures": 7}):
        assert scheduler_options(allowed_failures=0)["allowed_failures"] == 0
        assert scheduler_options()["allowed_failures"] == 7


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="allowed_failures"):
        scheduler_options(allowed_failures=-1)
    with pytest.raises(ValueError, match="worker_saturation"):
        scheduler_options(worker_saturation=0)
