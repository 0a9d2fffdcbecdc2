"""The client of a task (``get_client()`` inside a task) is a plain ``Client`` on
the worker's pipe link: every method works there, the ones that cannot cross
the pipe fail clearly, and the worker loads neither the runtime nor the core."""

from __future__ import annotations

import sys

import cloudpickle
import pytest

from localsched import (
    Client,
    Event,
    Lock,
    Queue,
    SchedulerPlugin,
    Semaphore,
    Variable,
    get_client,
    get_worker,
)

# Workers never import the test package: task functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(60)

#: Modules of the scheduler's process a worker must not load: the runtime and
#: its parts, the cluster, and the scheduler core's engine (its event
#: vocabulary, ``localsched.scheduler.events``, is what a client posts).
SCHEDULER_SIDE = frozenset(
    {
        "localsched.deploy.local",
        "localsched.runtime.scheduler_thread",
        "localsched.runtime.handles",
        "localsched.runtime.run_requests",
        "localsched.runtime.request_handler",
        "localsched.runtime.supervision",
        "localsched.runtime.restarting",
        "localsched.runtime.coordination_state",
        "localsched.runtime.plugin_keeper",
        "localsched.runtime.task_stream",
        "localsched.runtime.memory",
        "localsched.deploy.adaptive",
        "localsched.scheduler.scheduler",
        "localsched.scheduler.state",
        "localsched.scheduler.stimuli",
        "localsched.scheduler.transitions",
        "localsched.scheduler.placement",
        "localsched.scheduler.graphs",
        "localsched.scheduler.tasks",
        "localsched.scheduler.commands",
        "localsched.scheduler.validate",
        "localsched.scheduler.policies",
    }
)


def inc(x: int) -> int:
    return x + 1


def localsched_modules_after_get_client() -> tuple[list[str], list[str]]:
    """Task: the localsched modules loaded before and after using the client."""
    before = sorted(m for m in sys.modules if m.startswith("localsched"))
    client = get_client()
    assert client.submit(inc, 1).result() == 2
    assert client.gather(client.map(inc, [1, 2])) == [2, 3]
    with Lock("modules-lock"):
        pass
    client.scheduler_info()
    after = sorted(m for m in sys.modules if m.startswith("localsched"))
    return before, after


def test_a_task_that_calls_get_client_loads_neither_the_runtime_nor_the_core():
    # A cluster of its own: a fresh worker process, nothing loaded by others
    # (two threads: one runs the subtasks while the task waits for them),
    # lean: not forked from this process, which has them all loaded.
    with Client(n_workers=1, threads_per_worker=2, warm_imports=False) as client:
        future = client.submit(localsched_modules_after_get_client, pure=False)
        before, after = future.result(timeout=30)
    assert "localsched.client.client" not in before  # the task's client was made here
    assert {"localsched.client.client", "localsched.client.task_client"} <= set(after)
    assert sorted(SCHEDULER_SIDE & set(after)) == []


# -- coordination primitives, datasets and introspection from a task ----------------


def use_primitives() -> dict[str, object]:
    """Task: every coordination primitive and the datasets, through get_client()."""
    client = get_client()
    out: dict[str, object] = {}
    lock = Lock("in-task-lock")
    out["lock"] = (lock.acquire(timeout=5), lock.locked())
    lock.release()
    out["lock-released"] = lock.locked()
    sem = Semaphore(max_leases=2, name="in-task-sem")
    out["sem"] = (sem.acquire(timeout=5), sem.acquire(timeout=5), sem.get_value())
    out["sem-full"] = sem.acquire(timeout=0.05)
    sem.release()
    sem.release()
    event = Event("in-task-event")
    out["event-before"] = event.wait(timeout=0.05)
    event.set()
    out["event-after"] = (event.is_set(), event.wait(timeout=5))
    variable = Variable("in-task-var")
    variable.set(client.submit(inc, 41, pure=False))
    out["variable"] = variable.get(timeout=5).result()
    queue = Queue("in-task-queue")
    queue.put(1)
    queue.put(client.submit(inc, 1, pure=False))
    out["queue"] = (queue.qsize(), queue.get(timeout=5), queue.get(timeout=5).result())
    client.publish_dataset(client.submit(inc, 9, pure=False), name="in-task-ds")
    out["datasets"] = (
        client.list_datasets(),
        client.get_dataset("in-task-ds").result(),
        "in-task-ds" in client.datasets,
    )
    client.unpublish_dataset("in-task-ds")
    out["datasets-after"] = client.list_datasets()
    return out


def test_coordination_primitives_and_datasets_work_inside_a_task(client):
    out = client.submit(use_primitives, pure=False).result(timeout=30)
    assert out["lock"] == (True, True)
    assert out["lock-released"] is False
    assert out["sem"] == (True, True, 2)
    assert out["sem-full"] is False
    assert out["event-before"] is False
    assert out["event-after"] == (True, True)
    assert out["variable"] == 42
    assert out["queue"] == (2, 1, 2)
    assert out["datasets"] == (["in-task-ds"], 10, True)
    assert out["datasets-after"] == []
    # What the task left is visible to the user's client: one state, two doors.
    assert Event("in-task-event", client=client).is_set()
    assert Lock("in-task-lock", client=client).acquire(timeout=5)


def introspect(held_key: str) -> dict[str, object]:
    """Task: the introspection and control calls, through get_client()."""
    client = get_client()
    me = get_worker().address
    info = client.scheduler_info()
    client.set_metadata(["in-task", "x"], 1)
    runs = client.run(lambda dask_worker: dask_worker.address)
    stream_len = len(client.get_task_stream())
    return {
        "me": me,
        "info": (info["n_workers"], sorted(info["workers"])),
        "nthreads": client.nthreads(),
        "who_has": client.who_has([held_key]),
        "has_what": {a: held_key in keys for a, keys in client.has_what().items()},
        "processing": client.processing([me])[me],
        "story": [t[2] for t in client.story(held_key)][-1],
        "nbytes": client.nbytes([held_key], summary=False),
        "metadata": client.get_metadata(["in-task", "x"]),
        "missing": client.get_metadata("no-such-key", default="default"),
        "run": runs,
        "on_scheduler": client.run_on_scheduler(
            lambda dask_scheduler: len(dask_scheduler.workers)
        ),
        "task_stream": stream_len,
    }


def test_introspection_calls_work_inside_a_task(client):
    client.get_task_stream()  # start recording
    held = client.submit(inc, 1, pure=False)
    assert held.result() == 2
    task = client.submit(introspect, held.key, pure=False)
    out = task.result(timeout=30)
    workers = sorted(client.scheduler.workers)
    assert out["info"] == (2, workers)
    assert out["nthreads"] == dict.fromkeys(workers, 1)
    assert out["who_has"] == client.who_has([held])
    assert list(out["has_what"].values()).count(True) == 1
    assert task.key in out["processing"]  # the task itself runs there
    assert out["story"] == "memory"
    assert out["nbytes"] == client.nbytes([held.key], summary=False)
    assert out["metadata"] == 1
    assert client.get_metadata(["in-task", "x"]) == 1
    assert out["missing"] == "default"
    assert out["run"] == {w: w for w in workers}
    assert out["on_scheduler"] == 2
    assert out["task_stream"] >= 1


class CountingPlugin(SchedulerPlugin):
    name = "in-task-counter"

    def __init__(self) -> None:
        self.finished = 0

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish == "memory":
            self.finished += 1


def register_then_unregister() -> str:
    """Task: register a scheduler plugin, then take it away again."""
    client = get_client()
    client.register_plugin(CountingPlugin())
    client.submit(inc, 5, pure=False).result()
    present = client.run_on_scheduler(
        lambda dask_scheduler: "in-task-counter" in dask_scheduler.plugins
    )
    client.unregister_scheduler_plugin("in-task-counter")
    return f"{present}"


def test_a_task_registers_a_scheduler_plugin(client):
    assert client.submit(register_then_unregister, pure=False).result(30) == "True"
    assert "in-task-counter" not in client.scheduler.plugins


def what_cannot_cross() -> dict[str, str]:
    """Task: the calls that need the cluster's process say so."""
    client = get_client()
    out = {}
    for name, call in [
        ("restart", client.restart),
        ("shutdown", client.shutdown),
        ("scheduler", lambda: client.scheduler),
    ]:
        try:
            call()
        except (RuntimeError, AttributeError) as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
    client.close()  # shared by the worker's tasks: a no-op
    out["status"] = client.status
    out["repr"] = repr(client)
    return out


def test_what_cannot_cross_the_pipe_fails_clearly_inside_a_task(client):
    out = client.submit(what_cannot_cross, pure=False).result(timeout=30)
    assert out["restart"].startswith("RuntimeError: Client.restart() cannot run")
    assert out["shutdown"].startswith("RuntimeError: A task cannot shut its cluster")
    assert out["scheduler"].startswith("AttributeError: A task's client has no")
    assert out["status"] == "running"
    # dask's repr: the scheduler's address, asked over the pipe.
    assert out["repr"].startswith("<Client: 'local://")
    assert client.submit(inc, 1, pure=False).result(timeout=30) == 2  # still fine


def compute_a_collection() -> int:
    """Task: compute a dask collection through the task's client."""
    import dask

    total = dask.delayed(sum)([1, 2, 3])
    return get_client().compute(total).result()


def test_a_task_computes_a_dask_collection_with_its_client(client):
    assert client.submit(compute_a_collection, pure=False).result(timeout=30) == 6
