"""``Client``'s inspection and control methods (``ControlMixin``), end to end."""

from __future__ import annotations

import operator

import pytest

from localsched import Client
from localsched.client.control import get_task_stream
from localsched.transport.protocol import (
    FunctionResult,
    RunFunction,
    decode_batch,
    encode_batch,
)
from tests.runtime.helpers import (
    block,
    kill_own_process,
    pid,
    raise_value_error,
    record,
    wait_for_file,
)

pytestmark = pytest.mark.timeout(60)


# -- information ----------------------------------------------------------------------


def test_scheduler_info_describes_scheduler_and_every_worker(client):
    info = client.scheduler_info()
    for field in ("type", "id", "address", "services", "started", "workers"):
        assert field in info
    assert info["type"] == "Scheduler"
    assert info["id"] == client.scheduler.id
    assert info["address"] == client.scheduler.address
    assert info["n_workers"] == 2
    assert info["total_threads"] == 2
    assert set(info["workers"]) == set(client.scheduler.workers)
    for address, worker in info["workers"].items():
        ws = client.scheduler.workers[address]
        assert worker["nthreads"] == 1
        assert worker["name"] == ws.name
        assert worker["memory_limit"] == ws.memory_limit
        assert worker["status"] == "running"
        assert worker["type"] == "Worker"
        for field in ("host", "resources", "metrics"):
            assert field in worker
    assert len(client.scheduler_info(n_workers=1)["workers"]) == 1


def test_nthreads_and_its_alias_ncores(client):
    everyone = client.nthreads()
    assert everyone == dict.fromkeys(client.scheduler.workers, 1)
    assert client.ncores() == everyone
    first = next(iter(everyone))
    assert client.nthreads(first) == {first: 1}
    assert client.nthreads([first]) == {first: 1}
    name = client.scheduler.workers[first].name
    assert client.nthreads([name]) == {first: 1}
    assert client.nthreads(["no-such-worker"]) == {}


def test_who_has_and_has_what_agree(client):
    futures = client.map(operator.neg, range(6))
    assert client.gather(futures) == [0, -1, -2, -3, -4, -5]
    keys = {f.key for f in futures}
    who_has = client.who_has(futures)
    assert set(who_has) == keys
    workers = set(client.scheduler.workers)
    for holders in who_has.values():
        assert len(holders) == 1
        assert set(holders) <= workers
    assert set(client.who_has(futures[:2])) == {futures[0].key, futures[1].key}
    assert keys <= set(client.who_has())
    has_what = client.has_what()
    assert set(has_what) == workers
    for key, holders in who_has.items():
        assert key in has_what[holders[0]]
    one = holders[0]
    assert set(client.has_what(one)) == {one}
    assert client.who_has(["never-submitted"]) == {"never-submitted": []}


def test_processing_shows_the_running_task(client, tmp_path):
    release, started = str(tmp_path / "release"), str(tmp_path / "started")
    future = client.submit(block, release, started, "done", pure=False)
    wait_for_file(started)
    processing = client.processing()
    assert set(processing) == set(client.scheduler.workers)
    holders = [a for a, keys in processing.items() if future.key in keys]
    assert len(holders) == 1
    assert client.processing(holders[0]) == {holders[0]: [future.key]}
    (tmp_path / "release").touch()
    assert future.result() == "done"
    assert all(future.key not in keys for keys in client.processing().values())


def test_story_tells_a_future_from_submission_to_memory(client):
    future = client.submit(operator.add, 40, 2)
    assert future.result() == 42
    story = client.story(future)
    assert [(t[1], t[2]) for t in story][-3:] == [
        ("released", "waiting"),
        ("waiting", "processing"),
        ("processing", "memory"),
    ]
    assert client.story(future.key) == story
    assert client.story("no-such-key") == []


# -- running on the scheduler ----------------------------------------------------


def test_run_on_scheduler_passes_the_scheduler_and_arguments(client):
    def inspect_scheduler(a, b=0, dask_scheduler=None):
        return dask_scheduler, a + b, len(dask_scheduler.workers)

    scheduler, total, n = client.run_on_scheduler(inspect_scheduler, 1, b=2)
    assert scheduler is client.scheduler
    assert (total, n) == (3, 2)
    assert client.run_on_scheduler(operator.mul, 6, 7) == 42


def test_run_on_scheduler_runs_on_the_scheduler_thread(client):
    import threading

    name = client.run_on_scheduler(lambda: threading.current_thread().name)
    assert name == "localsched-scheduler"


def test_run_on_scheduler_reraises_the_functions_exception(client):
    def fail(dask_scheduler):
        raise KeyError("from the scheduler")

    with pytest.raises(KeyError, match="from the scheduler"):
        client.run_on_scheduler(fail)
    assert client.run_on_scheduler(lambda: "still fine") == "still fine"


# -- running on the workers -----------------------------------------------------


def _describe(a, b=0, dask_worker=None):
    return a + b, dask_worker.address, dask_worker.name, dask_worker.nthreads


def test_run_calls_the_function_in_every_worker_process(client):
    pids = client.run(pid)
    workers = client.scheduler.workers
    assert pids == {a: ws.pid for a, ws in workers.items()}
    assert len(set(pids.values())) == 2
    described = client.run(_describe, 1, b=2)
    assert described == {a: (3, a, ws.name, 1) for a, ws in workers.items()}


def test_run_on_named_workers_only(client):
    first, second = client.scheduler.workers
    assert list(client.run(pid, workers=[first])) == [first]
    name = client.scheduler.workers[second].name
    assert list(client.run(pid, workers=[name])) == [second]
    assert client.run(pid, workers=["no-such-worker"]) == {}


def test_run_errors_raise_return_or_are_ignored(client):
    with pytest.raises(ValueError, match="bad 7"):
        client.run(raise_value_error, 7)
    returned = client.run(raise_value_error, 8, on_error="return")
    assert set(returned) == set(client.scheduler.workers)
    assert all(isinstance(e, ValueError) for e in returned.values())
    assert client.run(raise_value_error, 9, on_error="ignore") == {}
    with pytest.raises(ValueError, match="on_error"):
        client.run(pid, on_error="sometimes")
    with pytest.raises(ValueError, match="nanny"):
        client.run(pid, nanny=True)


def test_run_without_waiting_still_runs(client, tmp_path):
    path = str(tmp_path / "ran")
    assert client.run(record, path, "x", wait=False) is None
    wait_for_file(path)
    assert client.submit(operator.add, 1, 1).result() == 2


def test_run_messages_round_trip():
    batch = [
        RunFunction(id=1, function=b"f", args=b"a", address="local://1/0", name=0),
        FunctionResult(id=1, ok=False, payload=b"e", traceback_text="tb"),
    ]
    assert decode_batch(encode_batch(batch)) == batch


def test_run_counts_a_worker_dying_mid_call_as_its_error():
    with Client(n_workers=2, threads_per_worker=1, validate=True) as own:
        victim, survivor = own.scheduler.workers
        answers = own.run(kill_own_process, on_error="return")
        assert isinstance(answers[victim], OSError)
        assert isinstance(answers[survivor], OSError)
        own.wait_for_workers(2, timeout=20)
        target = next(iter(own.scheduler.workers))
        with pytest.raises(OSError, match="left before answering"):
            own.run(kill_own_process, workers=[target])
        assert target not in own.nthreads()
        own.wait_for_workers(2, timeout=20)
        pids = own.run(pid)
        assert len(pids) == 2
        assert target not in pids


# -- task stream ---------------------------------------------------------------------


def test_get_task_stream_records_finished_and_erred_tasks(client):
    client.get_task_stream()  # starts recording
    assert "task-stream" in client.scheduler.plugins
    futures = client.map(operator.neg, range(5), pure=False)
    client.gather(futures)
    bad = client.submit(raise_value_error, 1, pure=False)
    with pytest.raises(ValueError, match="bad 1"):
        bad.result()
    records = {r["key"]: r for r in client.get_task_stream()}
    workers = set(client.scheduler.workers)
    for future in futures:
        record = records[future.key]
        assert record["status"] == "OK"
        assert record["worker"] in workers
        (startstop,) = record["startstops"]
        assert startstop["action"] == "compute"
        assert startstop["start"] <= startstop["stop"]
    assert records[bad.key]["status"] == "error"
    assert records[bad.key]["worker"] in workers
    latest = client.get_task_stream(count=2)
    assert [r["key"] for r in latest] == list(records)[-2:]
    assert client.get_task_stream(start="1 hour") != []
    assert (
        client.get_task_stream(start=records[bad.key]["startstops"][0]["stop"] + 60)
        == []
    )


def test_get_task_stream_context_collects_only_its_block(client):
    client.submit(operator.neg, 100, pure=False).result()
    with get_task_stream(client) as stream:
        futures = client.map(operator.neg, range(3), pure=False)
        client.gather(futures)
    assert sorted(r["key"] for r in stream.data) == sorted(f.key for f in futures)


# -- metadata -----------------------------------------------------------------------


def test_metadata_nested_keys_and_defaults(client):
    client.set_metadata("flat", 1)
    assert client.get_metadata("flat") == 1
    assert client.get_metadata(["flat"]) == 1
    client.set_metadata(["a", "b", "c"], [1, 2])
    assert client.get_metadata(["a", "b"]) == {"c": [1, 2]}
    assert client.get_metadata(["a", "b", "c"]) == [1, 2]
    with pytest.raises(KeyError):
        client.get_metadata(["a", "missing"])
    assert client.get_metadata(["a", "missing"], None) is None
    assert client.get_metadata("nothing-here", default="fallback") == "fallback"


# upload_file now works: tests/runtime/test_client_surface.py.

# -- workers -------------------------------------------------------------------------


def test_wait_for_workers(client):
    client.wait_for_workers(2)
    client.wait_for_workers(1, timeout=5)
    with pytest.raises(TimeoutError):
        client.wait_for_workers(3, timeout=0.2)
    with pytest.raises(ValueError, match="positive integer"):
        client.wait_for_workers(0)


def test_retire_workers_keeps_their_results():
    with Client(n_workers=2, threads_per_worker=1, validate=True) as own:
        futures = own.map(operator.neg, range(8))
        assert own.gather(futures) == [-i for i in range(8)]
        who_has = own.who_has(futures)
        target = who_has[futures[0].key][0]
        on_target = [f for f in futures if who_has[f.key] == [target]]
        retired = own.retire_workers([target])
        assert list(retired) == [target]
        assert retired[target]["nthreads"] == 1
        assert target not in own.nthreads()
        assert len(own.scheduler_info()["workers"]) == 1
        assert own.gather(on_target) == [f.result() for f in on_target]
        assert own.gather(futures) == [-i for i in range(8)]
        assert own.submit(operator.add, 1, 2).result() == 3
