"""Tasks inside tasks: get_worker, get_client, worker_client, secede/rejoin and
fire_and_forget, on real worker processes."""

from __future__ import annotations

import sys
import threading
import weakref

import cloudpickle
import pytest

import localsched
from localsched import (
    Client,
    fire_and_forget,
    get_client,
    get_worker,
    rejoin,
    secede,
    worker_client,
)
from tests.runtime.helpers import (
    block,
    count_call,
    fail_times,
    lines,
    poll,
    raise_value_error,
    record,
    wait_for_file,
)

# Workers never import the test package: task functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)


def on_scheduler(client: Client, function):
    """``function()`` on the scheduler thread (state is not read mid-change)."""
    return client.cluster.runtime.call(function).result(timeout=10)


# -- task functions -------------------------------------------------------------------


def worker_info() -> dict[str, object]:
    worker = get_worker()
    return {
        "address": worker.address,
        "name": worker.name,
        "nthreads": worker.nthreads,
        "id": worker.id,
    }


def inc(x: int) -> int:
    return x + 1


def fib(n: int) -> int:
    if n < 2:
        return n
    with worker_client() as client:
        a = client.submit(fib, n - 1)
        b = client.submit(fib, n - 2)
        return sum(client.gather([a, b]))


def client_roundtrip() -> dict[str, object]:
    """Scatter, map over the scattered futures, submit on the mapped ones."""
    client = get_client()
    with worker_client() as same:
        xs = same.scatter([1, 2, 3])
        ys = same.map(inc, xs)
        total = same.submit(sum, ys)
        value = total.result(timeout=20)
        done = total.done()
        gathered = same.gather({"ys": ys, "plain": 7})
        keys = [f.key for f in [*xs, *ys, total]]
        total.release()
    return {
        "is_same": same is client,
        "id": client.id,
        "value": value,
        "done": done,
        "gathered": gathered,
        "keys": keys,
    }


def catch_subtask_error() -> str:
    with worker_client() as client:
        try:
            client.submit(raise_value_error, 1).result(timeout=20)
        except ValueError as exc:
            return f"caught {exc}"
    return "not raised"


def cancel_subtask(release: str) -> tuple[bool, str]:
    with worker_client() as client:
        future = client.submit(block, release, pure=False)
        client.cancel([future])
        return future.cancelled(), future.status


def retry_subtask(path: str) -> tuple[str, int]:
    with worker_client() as client:
        future = client.submit(fail_times, path, 1, 5, pure=False)
        try:
            future.result(timeout=20)
        except RuntimeError as exc:
            first = str(exc)
        else:
            first = "no error"
        future.retry()
        return first, future.result(timeout=20)


def secede_and_wait(release: str) -> str:
    secede()
    wait_for_file(release)  # meanwhile the worker's only thread is free
    rejoin()
    return "rejoined"


def secede_then_rejoin(release: str, path: str) -> None:
    secede()
    wait_for_file(release)
    record(path, "released")
    rejoin()  # the only thread is busy: waits until it finishes its task
    record(path, "rejoined")


def block_then_record(release: str, started: str, path: str) -> None:
    block(release, started)
    record(path, "sibling")


def parent_of_subtask(keyfile: str, release: str) -> str:
    client = get_client()
    sub = client.submit(inc, 1, pure=False)
    with open(f"{keyfile}.tmp", "w") as f:
        f.write(sub.key)
    import os

    os.replace(f"{keyfile}.tmp", keyfile)
    secede()
    wait_for_file(release)
    result = sub.result(timeout=20)
    rejoin()
    return f"{sub.key}={result}"


def forget_subtask(path: str) -> str:
    client = get_client()
    future = client.submit(count_call, path, 1, pure=False)
    fire_and_forget(future)
    return future.key


# -- get_worker / get_client --------------------------------------------------------


def test_get_worker_inside_a_task_describes_its_worker(client):
    infos = client.gather(client.map(lambda _: worker_info(), range(4), pure=False))
    workers = client.scheduler.workers
    for info in infos:
        assert info["address"] in workers
        assert info["name"] == workers[info["address"]].name
        assert info["nthreads"] == 1
        assert str(info["id"]).startswith("Worker-")


def test_get_worker_outside_a_task_raises():
    with pytest.raises(ValueError, match="No worker found"):
        get_worker()


def test_get_client_outside_a_task_is_the_default_client(client):
    assert get_client() is client
    assert localsched.get_client is get_client


def test_get_client_without_any_client_raises(monkeypatch):
    import localsched.client.defaults as defaults_module

    monkeypatch.setattr(defaults_module, "_defaults", weakref.WeakValueDictionary())
    # In a new thread: this module's client is current (``with Client``) in the
    # test's own context, and a new thread starts with an empty one.
    raised: list[BaseException] = []

    def call() -> None:
        try:
            get_client()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(20.0)
    assert len(raised) == 1
    assert isinstance(raised[0], ValueError)
    assert "No global client found" in str(raised[0])


def test_get_client_in_a_task_submits_maps_scatters_and_gathers(client):
    out = client.submit(client_roundtrip, pure=False).result(timeout=30)
    assert out["is_same"]
    assert str(out["id"]).startswith("worker-client-")
    assert out["value"] == 2 + 3 + 4
    assert out["done"]
    assert out["gathered"] == {"ys": [2, 3, 4], "plain": 7}
    # The task's futures are gone with it: the scheduler forgets their keys.
    tasks = client.scheduler.tasks
    assert poll(lambda: not any(key in tasks for key in out["keys"]))


def test_a_subtask_error_raises_in_the_task(client):
    assert client.submit(catch_subtask_error).result(timeout=30) == "caught bad 1"


def test_cancel_in_a_task_is_seen_when_it_returns(client, tmp_path):
    release = tmp_path / "release"
    try:
        out = client.submit(cancel_subtask, str(release)).result(timeout=30)
    finally:
        release.touch()  # a subtask that started anyway ends
    assert out == (True, "cancelled")


def test_retry_in_a_task_runs_the_erred_subtask_again(client, tmp_path):
    path = str(tmp_path / "attempts")
    out = client.submit(retry_subtask, path, pure=False).result(timeout=30)
    assert out == ("attempt 1 fails", 5)
    assert len(lines(path)) == 2


def test_outside_a_task_secede_needs_a_worker_and_rejoin_is_a_no_op():
    with pytest.raises(ValueError, match="No worker found"):
        secede()
    rejoin()
    with pytest.raises(ValueError, match="No worker found"), worker_client():
        pass


# -- one worker, one thread -----------------------------------------------------------


@pytest.fixture
def single():
    with Client(n_workers=1, threads_per_worker=1, validate=True) as c:
        yield c


def test_recursive_fibonacci_on_one_thread_finishes(single):
    assert single.submit(fib, 7).result(timeout=45) == 13
    # The worker's client is known to the scheduler under its own id.
    (address,) = single.scheduler.workers
    assert f"worker-client-{address}" in single.scheduler.clients


def test_secede_lets_a_sibling_run_and_rejoin_waits_for_it(single, tmp_path):
    release = str(tmp_path / "release")
    waiting = single.submit(secede_and_wait, release)
    (address,) = single.scheduler.workers
    ws = single.scheduler.workers[address]
    assert poll(
        lambda: (
            on_scheduler(single, lambda: {ts.key for ts in ws.long_running})
            == {waiting.key}
        )
    )
    # The only thread is free: a sibling runs while the first task waits.
    sibling = single.submit(inc, 41)
    assert sibling.result(timeout=20) == 42
    assert not waiting.done()
    (tmp_path / "release").touch()
    assert waiting.result(timeout=20) == "rejoined"
    assert poll(lambda: not on_scheduler(single, lambda: list(ws.long_running)))


def test_rejoin_waits_for_a_free_thread(single, tmp_path):
    path = str(tmp_path / "order")
    release_first, release_sibling = tmp_path / "release-1", tmp_path / "release-2"
    started = str(tmp_path / "started")
    first = single.submit(secede_then_rejoin, str(release_first), path)
    (address,) = single.scheduler.workers
    ws = single.scheduler.workers[address]
    assert poll(lambda: on_scheduler(single, lambda: len(ws.long_running)) == 1)
    sibling = single.submit(block_then_record, str(release_sibling), started, path)
    wait_for_file(started)  # the sibling holds the only thread
    release_first.touch()
    assert poll(lambda: lines(path) == ["released"])
    # rejoin() must not return while the sibling holds the slot.
    assert not poll(lambda: "rejoined" in lines(path), timeout=0.3)
    release_sibling.touch()
    assert first.result(timeout=20) is None
    assert sibling.result(timeout=20) is None
    assert lines(path) == ["released", "sibling", "rejoined"]


def test_subtasks_get_the_parent_generation_minus_a_hundredth(single, tmp_path):
    keyfile, release = str(tmp_path / "key"), str(tmp_path / "release")
    parent = single.submit(parent_of_subtask, keyfile, release)
    wait_for_file(keyfile)
    (subkey,) = lines(keyfile)
    tasks = single.scheduler.tasks
    assert poll(lambda: subkey in tasks)
    parent_priority = tasks[parent.key].priority
    assert tasks[subkey].priority[1] == pytest.approx(parent_priority[0] - 0.01)
    sibling = single.submit(inc, 5)
    assert poll(lambda: sibling.key in tasks)
    assert tasks[subkey].priority < tasks[sibling.key].priority
    (tmp_path / "release").touch()
    assert parent.result(timeout=20) == f"{subkey}=2"
    assert sibling.result(timeout=20) == 6


def test_fire_and_forget_runs_a_task_whose_future_was_dropped(single, tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    out = str(tmp_path / "out")
    blocker = single.submit(block, release, started)
    wait_for_file(started)  # the only thread is busy: the next task must wait
    future = single.submit(count_call, out, 1)
    key = future.key
    fire_and_forget(future)
    del future
    tasks = single.scheduler.tasks

    def wanted_by() -> set[str]:
        ts = tasks.get(key)
        return set() if ts is None else {cs.client_key for cs in ts.who_wants}

    assert poll(lambda: on_scheduler(single, wanted_by) == {"fire-and-forget"})
    (tmp_path / "release").touch()
    assert poll(lambda: len(lines(out)) == 1)  # it ran, once
    assert blocker.result(timeout=20) is None


def test_fire_and_forget_from_a_task(single, tmp_path):
    out = str(tmp_path / "out")
    key = single.submit(forget_subtask, out).result(timeout=20)
    assert poll(lambda: len(lines(out)) == 1)
    tasks = single.scheduler.tasks
    assert poll(lambda: key not in tasks)  # nobody keeps the result
