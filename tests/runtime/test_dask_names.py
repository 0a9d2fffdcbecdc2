"""dask.distributed names: ``Reschedule``, ``MultiLock``, ``get_task_metadata``."""

from __future__ import annotations

import concurrent.futures
import os

import pytest

import localsched
from localsched import (
    Client,
    MultiLock,
    Reschedule,
    SchedulerPlugin,
    get_task_metadata,
    worker_client,
)
from tests.runtime.helpers import DEADLINE

pytestmark = pytest.mark.timeout(60)


def reschedule_once(marker: str) -> int:
    """Raise Reschedule on the first run (the marker file does not exist yet)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return 42
    os.close(fd)
    raise Reschedule()


def test_a_task_raising_reschedule_runs_again_and_finishes(client: Client, tmp_path):
    marker = str(tmp_path / "ran-once")
    future = client.submit(reschedule_once, marker, pure=False)
    assert future.result(timeout=DEADLINE) == 42
    assert os.path.exists(marker)
    assert future.status == "finished"


def test_reschedule_is_dask_s_exception():
    assert localsched.Reschedule is Reschedule
    assert issubclass(Reschedule, Exception)


# -- MultiLock ----------------------------------------------------------------------


def test_multilock_grants_all_names_or_none(client: Client):
    first = MultiLock(["ml-a", "ml-b"], client=client)
    assert first.acquire(timeout=DEADLINE)
    assert first.locked()
    # "ml-b" is held: "ml-c" must not be taken on its own meanwhile.
    second = MultiLock(["ml-b", "ml-c"], client=client)
    assert not second.acquire(blocking=False)
    assert not second.locked()
    only_c = MultiLock(["ml-c"], client=client)
    assert only_c.acquire(blocking=False)
    only_c.release()
    # One of two names is enough with num_locks=1: "ml-c" is free.
    assert second.acquire(blocking=False, num_locks=1)
    second.release()
    first.release()
    assert not first.locked()
    with pytest.raises(ValueError, match="not yet acquired"):
        first.release()


def test_a_waiting_multilock_is_granted_on_release(client: Client):
    holder = MultiLock(["mw-a", "mw-b"], client=client)
    assert holder.acquire(timeout=DEADLINE)
    with (
        Client(client.cluster) as other,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        waiter = MultiLock(["mw-b", "mw-a"], client=other)
        granted = pool.submit(waiter.acquire, timeout=DEADLINE)
        with pytest.raises(concurrent.futures.TimeoutError):
            granted.result(timeout=0.2)
        holder.release()
        assert granted.result(timeout=DEADLINE) is True
        assert not holder.acquire(blocking=False)
        waiter.release()
    assert holder.acquire(blocking=False)
    holder.release()


def take_multilock(names: list[str], timeout: float) -> bool:
    lock = MultiLock(names)
    if not lock.acquire(timeout=timeout):
        return False
    lock.release()
    return True


def test_multilock_from_inside_a_task(client: Client):
    held = MultiLock(["mt-x"], client=client)
    assert held.acquire(timeout=DEADLINE)
    blocked = client.submit(take_multilock, ["mt-x", "mt-y"], 0.2, pure=False)
    assert blocked.result(timeout=DEADLINE) is False
    held.release()
    free = client.submit(take_multilock, ["mt-x", "mt-y"], DEADLINE, pure=False)
    assert free.result(timeout=DEADLINE) is True


# -- get_task_metadata --------------------------------------------------------------


class TagTasks(SchedulerPlugin):
    """Fills ``TaskState.metadata`` as dask's test plugin does."""

    name = "tag-tasks"

    def start(self, scheduler) -> None:
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish == "processing":
            self.scheduler.tasks[key].metadata = {"tag": f"tagged-{key}"}


def inc(x: int) -> int:
    return x + 1


def fail(x: int) -> int:
    raise ValueError(x)


def test_get_task_metadata_collects_the_block_s_tasks(client: Client):
    client.register_plugin(TagTasks())
    try:
        with get_task_metadata() as outer:
            first = client.submit(inc, 1, key="meta-1")
            assert first.result(timeout=DEADLINE) == 2
            with get_task_metadata() as inner:
                failed = client.submit(fail, 2, key="meta-2")
                with pytest.raises(ValueError, match="2"):
                    failed.result(timeout=DEADLINE)
    finally:
        client.unregister_scheduler_plugin("tag-tasks")
    assert outer.metadata == {
        "meta-1": {"tag": "tagged-meta-1"},
        "meta-2": {"tag": "tagged-meta-2"},
    }
    assert outer.state == {"meta-1": "memory", "meta-2": "erred"}
    assert inner.metadata == {"meta-2": {"tag": "tagged-meta-2"}}
    assert inner.state == {"meta-2": "erred"}
    # Leaving the block removed the collector.
    with pytest.raises(ValueError, match="found 0"):
        inner.__exit__(None, None, None)


def metadata_from_a_task(x: int) -> dict:
    with worker_client() as inner, get_task_metadata(inner) as tasks:
        assert inner.submit(inc, x, key="meta-in-task").result() == x + 1
    return dict(tasks.state or {})


def test_get_task_metadata_inside_a_task(client: Client):
    future = client.submit(metadata_from_a_task, 5, pure=False)
    assert future.result(timeout=DEADLINE) == {"meta-in-task": "memory"}
