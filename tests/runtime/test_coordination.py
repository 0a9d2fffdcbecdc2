"""Event, Lock, Semaphore, Variable, Queue and published datasets, from the
client and from inside tasks, on real worker processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from localsched import (
    Client,
    Event,
    Lock,
    Queue,
    Semaphore,
    Variable,
    get_client,
    get_worker,
)
from tests.runtime.helpers import DEADLINE, interval, lines, poll, wait_for_file

# Workers never import the test package: task functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)


def on_scheduler(client: Client, function):
    """``function()`` on the scheduler thread (state is not read mid-change)."""
    return client.cluster.runtime.call(function).result(timeout=10)


def known(client: Client, key) -> bool:
    return on_scheduler(client, lambda: key in client.scheduler.tasks)


def workers_of(client: Client) -> list[str]:
    return sorted(client.cluster.scheduler.workers)


# -- task functions -------------------------------------------------------------------


def wait_event(name: str, started: str, timeout: float) -> tuple[bool, str]:
    Path(started).touch()
    return Event(name).wait(timeout=timeout), get_worker().address


def locked_interval(name: str, path: str, hold: float) -> str:
    with Lock(name):
        interval(path, hold)
    return get_worker().address


def leased_interval(sem: Semaphore, path: str, hold: float) -> str:
    with sem:
        interval(path, hold)
    return get_worker().address


def hold_lease(name: str, started: str, release: str) -> None:
    sem = Semaphore(max_leases=1, name=name)
    assert sem.acquire(timeout=DEADLINE)
    Path(started).write_text(str(os.getpid()))
    wait_for_file(release, timeout=60.0)


def read_variable(name: str) -> int:
    return Variable(name).get(timeout=DEADLINE).result() + 1


def set_variable_to_a_subtask(name: str) -> str:
    future = get_client().submit(lambda: 100, pure=False)
    Variable(name).set(future)
    return future.key


def produce(name: str, n: int) -> list[str]:
    client = get_client()
    queue = Queue(name)
    keys = []
    for i in range(n):
        future = client.submit(lambda x: x * 10, i, pure=False)
        keys.append(future.key)
        queue.put(future)
        queue.put(i)
    return keys


def consume(name: str, n: int) -> tuple[list[int], list[int], str]:
    queue = Queue(name)
    results, values = [], []
    for _ in range(n):
        results.append(queue.get(timeout=DEADLINE).result())
        values.append(queue.get(timeout=DEADLINE))
    return results, values, get_worker().address


def read_dataset(name: str) -> int:
    return get_client().get_dataset(name).result()


def overlap(path: str) -> int:
    """Most intervals of ``path`` running at once."""
    edges = []
    for line in lines(path):
        start, end = map(float, line.split())
        edges += [(start, 1), (end, -1)]
    most = running = 0
    for _, step in sorted(edges):
        running += step
        most = max(most, running)
    return most


# -- Event ----------------------------------------------------------------------------


def test_event_from_the_client(client):
    event = Event(client=client)
    assert event.name.startswith("event-")
    assert not event.is_set()
    start = time.monotonic()
    assert event.wait(timeout=0.2) is False
    assert time.monotonic() - start >= 0.2
    event.set()
    assert event.is_set()
    assert Event(event.name).wait(timeout=0) is True
    assert event.wait("1s") is True
    event.clear()
    assert not Event(event.name).is_set()
    assert event.wait(timeout=0.05) is False


def test_tasks_on_two_workers_wait_for_the_event_the_client_sets(client, tmp_path):
    name = "event-go"
    started = [str(tmp_path / f"started-{w}") for w in range(2)]
    futures = [
        client.submit(wait_event, name, started[i], DEADLINE, workers=[address])
        for i, address in enumerate(workers_of(client))
    ]
    for path in started:
        wait_for_file(path)
    assert not any(future.done() for future in futures)
    Event(name).set()
    results = client.gather(futures)
    assert [ok for ok, _ in results] == [True, True]
    assert {address for _, address in results} == set(workers_of(client))
    Event(name).clear()


def test_a_task_waiting_on_an_event_times_out(client, tmp_path):
    future = client.submit(wait_event, "event-never", str(tmp_path / "s"), 0.2)
    assert future.result(timeout=DEADLINE)[0] is False


# -- Lock -----------------------------------------------------------------------------


def test_lock_from_the_client(client):
    lock = Lock("lock-client", client=client)
    assert not lock.locked()
    assert lock.acquire() is True
    assert lock.locked()
    other = Lock("lock-client")
    assert other.acquire(blocking=False) is False
    assert other.acquire(timeout=0.1) is False
    with pytest.raises(ValueError, match="non-blocking"):
        other.acquire(blocking=False, timeout=1)
    with pytest.raises(RuntimeError, match="Released too often"):
        other.release()
    lock.release()
    assert not lock.locked()
    with pytest.raises(RuntimeError, match="Released too often"):
        lock.release()
    with other:
        assert lock.locked()
    assert not lock.locked()


def test_tasks_on_two_workers_serialize_through_a_lock(client, tmp_path):
    path = str(tmp_path / "intervals")
    addresses = workers_of(client)
    futures = [
        client.submit(
            locked_interval,
            "lock-tasks",
            path,
            0.1,
            workers=[addresses[i % 2]],
            pure=False,
        )
        for i in range(6)
    ]
    assert set(client.gather(futures)) == set(addresses)
    assert len(lines(path)) == 6
    assert overlap(path) == 1
    assert not Lock("lock-tasks").locked()


# -- Semaphore ------------------------------------------------------------------------


def test_semaphore_from_the_client(client):
    sem = Semaphore(max_leases=2, name="sem-client", client=client)
    assert sem.get_value() == 0
    assert sem.acquire()
    assert sem.acquire(timeout=1)
    assert sem.get_value() == 2
    assert Semaphore(2, name="sem-client").acquire(timeout=0.1) is False
    with pytest.raises(ValueError, match="Inconsistent max leases"):
        Semaphore(3, name="sem-client").acquire(timeout=0)
    sem.release()
    assert sem.get_value() == 1
    sem.release()
    with pytest.raises(RuntimeError, match="Released too often"):
        sem.release()
    with sem:
        assert sem.get_value() == 1
    assert sem.get_value() == 0


def test_a_semaphore_bounds_the_tasks_running_at_once(tmp_path):
    path = str(tmp_path / "intervals")
    with Client(n_workers=2, threads_per_worker=2, validate=True) as client:
        sem = Semaphore(max_leases=2, name="sem-tasks")
        futures = [
            client.submit(leased_interval, sem, path, 0.15, pure=False)
            for _ in range(8)
        ]
        assert len(set(client.gather(futures))) == 2
        assert len(lines(path)) == 8
        assert overlap(path) <= 2
        assert sem.get_value() == 0


def test_the_lease_of_a_worker_that_died_is_freed(tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    with Client(n_workers=2, threads_per_worker=1, validate=True) as client:
        future = client.submit(hold_lease, "sem-dead", started, release)
        wait_for_file(started)
        sem = Semaphore(max_leases=1, name="sem-dead")
        assert sem.get_value() == 1
        assert sem.acquire(timeout=0.1) is False
        future.cancel()
        os.kill(int(Path(started).read_text()), signal.SIGKILL)
        assert sem.acquire(timeout=DEADLINE) is True
        assert sem.get_value() == 1
        sem.release()
        Path(release).touch()


# -- Variable -------------------------------------------------------------------------


def test_variable_from_the_client(client):
    var = Variable("var-client", client=client)
    with pytest.raises(TimeoutError):
        var.get(timeout=0.1)
    var.set({"a": [1, 2]})
    assert Variable("var-client").get() == {"a": [1, 2]}
    future = client.submit(lambda: 7, pure=False)
    key = future.key
    var.set(future)
    del future
    got = var.get(timeout=1)
    assert got.key == key
    assert got.result(timeout=DEADLINE) == 7
    del got
    assert poll(lambda: key not in client._refcount)
    assert known(client, key)  # the variable holds it
    var.set(1)
    assert poll(lambda: not known(client, key))
    assert var.get() == 1
    var.delete()
    with pytest.raises(TimeoutError):
        var.get(timeout=0.05)


def test_a_variable_holds_a_future_a_task_reads_later(client):
    future = client.submit(lambda: 41, pure=False)
    key = future.key
    Variable("var-task").set(future)
    del future
    assert client.submit(read_variable, "var-task").result(DEADLINE) == 42
    assert known(client, key)
    Variable("var-task").delete()
    assert poll(lambda: not known(client, key))


def test_a_task_stores_its_subtask_in_a_variable(client):
    key = client.submit(set_variable_to_a_subtask, "var-sub").result(DEADLINE)
    got = Variable("var-sub").get(timeout=DEADLINE)
    assert got.key == key
    assert got.result(timeout=DEADLINE) == 100
    del got
    Variable("var-sub").delete()
    assert poll(lambda: not known(client, key))


# -- Queue ----------------------------------------------------------------------------


def test_queue_from_the_client(client):
    queue = Queue("queue-client", client=client, maxsize=2)
    assert queue.qsize() == 0
    with pytest.raises(TimeoutError):
        queue.get(timeout=0.1)
    queue.put(1)
    queue.put("two", timeout=1)
    with pytest.raises(TimeoutError):
        queue.put(3, timeout=0.1)
    assert queue.qsize() == 2
    assert queue.get() == 1
    queue.put(3)
    assert queue.get(batch=True) == ["two", 3]
    assert queue.get(batch=True) == []
    with pytest.raises(NotImplementedError):
        queue.get(timeout=1, batch=2)
    future = client.submit(lambda: 5, pure=False)
    key = future.key
    queue.put(future)
    queue.put(6)
    del future
    assert poll(lambda: key not in client._refcount)
    assert known(client, key)  # the queue holds it
    got, six = queue.get(batch=2)
    assert six == 6
    assert got.key == key
    assert got.result(DEADLINE) == 5
    del got
    assert poll(lambda: not known(client, key))
    queue.close()


def test_a_queue_passes_values_and_futures_between_tasks_on_two_workers(client):
    producer_at, consumer_at = workers_of(client)
    consumer = client.submit(consume, "queue-tasks", 3, workers=[consumer_at])
    producer = client.submit(produce, "queue-tasks", 3, workers=[producer_at])
    keys = producer.result(DEADLINE)
    results, values, address = consumer.result(DEADLINE)
    assert results == [0, 10, 20]
    assert values == [0, 1, 2]
    assert address == consumer_at
    assert Queue("queue-tasks").qsize() == 0
    assert poll(lambda: not any(known(client, key) for key in keys))


# -- datasets -------------------------------------------------------------------------


def test_datasets_across_two_clients_of_one_cluster(client):
    future = client.submit(lambda: 3, pure=False)
    key = future.key
    client.publish_dataset(future, name="ds-x")
    client.publish_dataset(pair=[future, "text"])
    client.publish_dataset({"plain": 1})
    del future
    with pytest.raises(KeyError, match="already exists"):
        client.publish_dataset(plain=2)
    with pytest.raises(ValueError, match="positional argument"):
        client.publish_dataset(1, 2)
    other = Client(client.cluster, set_as_default=False)
    try:
        assert other.list_datasets() == ["ds-x", "pair", "plain"]
        assert other.get_dataset("ds-x").result(DEADLINE) == 3
        pair = other.get_dataset("pair")
        assert pair[0].key == key
        assert pair[1] == "text"
        del pair
        assert other.get_dataset(["plain", "ds-x"])[0] == 1
        assert dict(other.datasets)["plain"] == 1
        with pytest.raises(KeyError, match="already exists"):
            other.datasets["plain"] = 2
        client.publish_dataset(plain=2, override=True)
        assert other.get_dataset("plain") == 2
        with pytest.raises(KeyError, match="not found"):
            other.get_dataset("missing")
        assert other.get_dataset("missing", default=None) is None
        assert client.submit(read_dataset, "ds-x").result(DEADLINE) == 3
        other.unpublish_dataset("ds-x")
        assert known(client, key)  # "pair" holds it still
        del other.datasets["pair"]
        other.unpublish_dataset(["plain"])
        assert client.list_datasets() == []
        assert "plain" not in client.datasets
        assert poll(lambda: not known(client, key))
    finally:
        other.close()
