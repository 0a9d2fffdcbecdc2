"""The ``"localsched"`` joblib backend: registered by ``import localsched``
without importing joblib, in either import order; ``Parallel`` runs on the
active client, in joblib's batches."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import cloudpickle
import pytest

from localsched import SchedulerPlugin

joblib = pytest.importorskip("joblib")

# Task functions defined here reach workers by value, not by import.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def client(client):
    """The shared client, with its callback thread started before any test:
    that thread lives as long as the client, not one test."""
    client._callback_executor().submit(int).result()
    return client


class CountTasks(SchedulerPlugin):
    name = "count-tasks"

    def __init__(self) -> None:
        self.finished = 0

    def transition(self, key: Any, start: str, finish: str, *args, **kwargs) -> None:
        if finish == "memory":
            self.finished += 1


def test_parallel_runs_on_the_client_in_batches(client):
    counter = CountTasks()
    client.register_plugin(counter)
    try:
        with joblib.parallel_config(backend="localsched"):
            out = joblib.Parallel()(joblib.delayed(pow)(i, 2) for i in range(2000))
        assert out == [i * i for i in range(2000)]
        # Calls this short are batched: far fewer tasks than calls.
        assert 0 < counter.finished < 2000
    finally:
        client.unregister_scheduler_plugin(counter.name)


def test_parallel_generator_and_errors(client):
    with joblib.parallel_config(backend="localsched", n_jobs=-1):
        parallel = joblib.Parallel(return_as="generator")
        assert sum(parallel(joblib.delayed(abs)(-i) for i in range(100))) == 4950
        with pytest.raises(ZeroDivisionError):
            joblib.Parallel()(joblib.delayed(divmod)(1, i) for i in [1, 0, 2])
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(len)("ab") for _ in range(3))


def test_parallel_with_explicit_client_and_submit_options(client):
    worker = sorted(client.scheduler.workers)[0]
    with joblib.parallel_config(backend="localsched", client=client, workers=[worker]):
        pids = joblib.Parallel(batch_size=1)(joblib.delayed(_pid)() for _ in range(6))
    assert len(set(pids)) == 1


def test_dask_backend_runs_on_the_current_localsched_client(client):
    # A script written for dask.distributed, with only the import changed.
    counter = CountTasks()
    client.register_plugin(counter)
    try:
        with joblib.parallel_config(backend="dask"):
            out = joblib.Parallel()(joblib.delayed(pow)(i, 3) for i in range(50))
        assert out == [i**3 for i in range(50)]
        assert counter.finished > 0
    finally:
        client.unregister_scheduler_plugin(counter.name)


def _pid() -> int:
    import os

    return os.getpid()


@pytest.mark.parametrize(
    "code",
    [
        # localsched first: joblib must not be imported by it, and registers later.
        "import sys, localsched; assert 'joblib' not in sys.modules; import joblib",
        # joblib first: registered at once.
        "import joblib, localsched",
    ],
)
def test_backend_registered_in_either_import_order(code):
    check = (
        "; from joblib.parallel import EXTERNAL_BACKENDS"
        "; assert 'localsched' in EXTERNAL_BACKENDS, EXTERNAL_BACKENDS"
        "; from localsched.integrations.joblib_hook import _DaskRegistrar"
        "; assert isinstance(EXTERNAL_BACKENDS['dask'], _DaskRegistrar)"
        "; import inspect, joblib.parallel"
        "; assert inspect.getsource(joblib.parallel)"
    )
    subprocess.run([sys.executable, "-c", code + check], check=True, timeout=50)
