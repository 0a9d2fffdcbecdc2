"""Coroutine twins of the client's other methods: cluster control, datasets
and the coordination primitives (see :mod:`localsched.client.asynchronous`).

Each sends the typed requests its blocking method sends, built by the same
helpers, and awaits the cells. A wait for a coordination primitive (a lock,
a queue, an event) is a ``WaitFor`` request, re-sent every second as the
blocking one is; cancelling the awaiting coroutine withdraws it, and gives
back a lease that the scheduler granted in the meantime.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from localsched.aio import await_cell
from localsched.client.asynchronous import ask, in_thread, twin
from localsched.client.control import (
    _keys_of,
    _run_results,
    _worker_list,
    no_default,
)
from localsched.client.coordination import (
    _NOT_YET,
    Event,
    Lock,
    Queue,
    Semaphore,
    Variable,
    Waiting,
    _batch_count,
    dumps,
    load_many,
    loads,
    lock_timeout,
)
from localsched.client.datasets import published
from localsched.client.future import Future
from localsched.client.multilock import MultiLock
from localsched.transport import requests as rq
from localsched.transport.requests import Coordinate, Operation
from localsched.units import parse_timedelta

__all__: list[str] = []


# -- information and control ------------------------------------------------------


@twin("ControlMixin.scheduler_info")
async def scheduler_info(client: Any, n_workers: int = -1, **kwargs: Any) -> Any:
    return await ask(client, rq.SchedulerInfo(n_workers=n_workers))


@twin("ControlMixin.nthreads")
async def nthreads(client: Any, workers: Any = None, **kwargs: Any) -> Any:
    return await ask(client, rq.NThreads(workers=_worker_list(workers)))


@twin("ControlMixin.who_has")
async def who_has(client: Any, futures: Any = None, **kwargs: Any) -> Any:
    keys = None if futures is None else tuple(_keys_of(futures))
    return await ask(client, rq.WhoHas(keys=keys))


@twin("ControlMixin.has_what")
async def has_what(client: Any, workers: Any = None, **kwargs: Any) -> Any:
    return await ask(client, rq.HasWhat(workers=_worker_list(workers)))


@twin("ControlMixin.processing")
async def processing(client: Any, workers: Any = None) -> Any:
    return await ask(client, rq.Processing(workers=_worker_list(workers)))


@twin("ControlMixin.story")
async def story(client: Any, *keys_or_stimuli: Any, on_error: str = "raise") -> Any:
    keys = tuple(k.key if type(k) is Future else k for k in keys_or_stimuli)
    return await ask(client, rq.Story(keys=keys))


@twin("ControlMixin.run_on_scheduler")
async def run_on_scheduler(
    client: Any, function: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    request = rq.RunOnScheduler(function=function, args=args, kwargs=kwargs)
    return await ask(client, request)


@twin("ControlMixin.run")
async def run(
    client: Any,
    function: Callable[..., Any],
    *args: Any,
    workers: list[str] | None = None,
    wait: bool = True,
    nanny: bool = False,
    on_error: str = "raise",
    **kwargs: Any,
) -> Any:
    request = client._run_request(function, args, kwargs, workers, nanny, on_error)
    cell = client._link.request(request)
    if not wait:
        return None
    answers = await await_cell(cell)
    if any(not isinstance(a[1], bytes) for a in answers.values()):
        await ask(client, rq.Ping())  # a worker left mid-call: see ``run``
    return _run_results(answers, on_error)


async def _pause(seconds: float) -> None:
    """Wait while polling a state no event announces (workers starting)."""
    await asyncio.sleep(seconds)


@twin("ControlMixin.wait_for_workers")
async def wait_for_workers(
    client: Any, n_workers: int, timeout: float | None = None
) -> None:
    if not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(
            f"`n_workers` must be a positive integer. Instead got {n_workers}."
        )
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.001
    while (count := len(await ask(client, rq.WorkerStatus()))) < n_workers:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(
                f"Only {count} of {n_workers} workers started within {timeout} s"
            )
        await _pause(pause)
        pause = min(pause * 2, 0.05)


@twin("ControlMixin.restart")
async def restart(
    client: Any, timeout: Any = no_default, wait_for_workers: bool = True
) -> None:
    client._check_running()
    seconds = 120.0 if timeout is no_default else parse_timedelta(timeout, "s")
    deadline = time.monotonic() + seconds
    old = set(await ask(client, rq.Restart(), seconds))
    while True:
        left = max(0.0, deadline - time.monotonic())
        current = set(await ask(client, rq.WorkerStatus(), left))
        if not current & old and (not wait_for_workers or len(current) >= len(old)):
            return
        if time.monotonic() > deadline:
            what = "come back" if wait_for_workers else "shut down"
            raise TimeoutError(
                f"Workers did not {what} within {seconds} s of the restart"
            )
        await _pause(0.01)


@twin("ControlMixin.retire_workers")
async def retire_workers(client: Any, *args: Any, **kwargs: Any) -> Any:
    # It waits for the workers' tasks to end (no event says when): a thread
    # of its own for this rare call, so the loop keeps running meanwhile.
    method: Any = client.retire_workers
    return await in_thread(
        lambda: method(*args, asynchronous=False, **kwargs), "retire"
    )


@twin("ClusterToolsMixin.restart_workers")
async def restart_workers(client: Any, *args: Any, **kwargs: Any) -> Any:
    # It waits for new worker processes: as ``retire_workers``.
    method: Any = client.restart_workers
    return await in_thread(
        lambda: method(*args, asynchronous=False, **kwargs), "restart"
    )


@twin("ControlMixin.set_metadata")
async def set_metadata(client: Any, key: Any, value: Any) -> None:
    keys = tuple(key) if isinstance(key, list | tuple) else (key,)
    await ask(client, rq.SetMetadata(keys=keys, value=value))


@twin("ControlMixin.get_metadata")
async def get_metadata(client: Any, keys: Any, default: Any = no_default) -> Any:
    path = tuple(keys) if isinstance(keys, list | tuple) else (keys,)
    missing = ... if default is no_default else default
    return await ask(client, rq.GetMetadata(keys=path, default=missing))


# -- datasets ---------------------------------------------------------------------


async def call(client: Any, operation: str, *args: Any) -> Any:
    """``coordination.call``, awaited."""
    return await ask(client, Coordinate(operation=Operation(operation), args=args))


@twin("DatasetsMixin.publish_dataset")
async def publish_dataset(
    client: Any, *args: Any, name: Any = None, override: bool = False, **kwargs: Any
) -> None:
    names, records = published(args, name, kwargs)
    await call(client, "publish_put", names, records, override)


@twin("DatasetsMixin.unpublish_dataset")
async def unpublish_dataset(client: Any, name: Any, **kwargs: Any) -> None:
    await call(client, "publish_delete", name if isinstance(name, list) else [name])


@twin("DatasetsMixin.list_datasets")
async def list_datasets(client: Any, **kwargs: Any) -> list[Any]:
    return list(await call(client, "publish_list"))


@twin("DatasetsMixin.get_dataset")
async def get_dataset(
    client: Any, name: Any, default: Any = no_default, **kwargs: Any
) -> Any:
    names = name if isinstance(name, list) else [name]
    out = []
    for entry in await call(client, "publish_get", names):
        if entry is None:
            if default is no_default:
                raise KeyError(f"Dataset '{name}' not found")
            out.append(default)
        else:
            out.append(load_many(client, [entry[0]], entry[1], entry[2])[0])
    return out if isinstance(name, list) else out[0]


# -- coordination primitives --------------------------------------------------------


async def wait_until(
    client: Any,
    method: str,
    args: tuple[Any, ...],
    timeout: float | None,
    give_back: Callable[[Any], None] | None = None,
) -> Any:
    """``coordination.wait_until``, awaited. If the awaiting coroutine is
    cancelled, the wait is withdrawn; ``give_back(answer)`` undoes an answer
    the scheduler gave before the withdrawal landed (a lease granted)."""
    waiting = Waiting(client, method, args, timeout)
    while True:
        cell = client._link.request(waiting.request)
        try:
            async with asyncio.timeout(waiting.next_chunk()):
                return await await_cell(cell)
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            _withdraw(client, waiting.wait_id, cell, give_back)
            raise
        waiting.check_client()
        if not await call(client, "wait_cancel", waiting.wait_id):
            return await await_cell(cell)  # answered before the cancel landed
        if waiting.is_over():
            return _NOT_YET


def _withdraw(
    client: Any, wait_id: str, cell: Any, give_back: Callable[[Any], None] | None
) -> None:
    """Withdraw a wait without waiting (its coroutine is being cancelled)."""
    cancel = Coordinate(operation=Operation("wait_cancel"), args=(wait_id,))

    def answered(done: Any) -> None:
        if done.exception() is None and not done.result() and give_back:
            cell.add_done_callback(
                lambda answer: answer.exception() or give_back(answer.result())
            )

    client._link.request(cancel).add_done_callback(answered)


@twin("Event.wait")
async def event_wait(event: Event, timeout: Any = None) -> bool:
    client = event._verify_running()
    seconds = parse_timedelta(timeout)
    return await wait_until(client, "event_is_set", (event.name,), seconds) is True


@twin("Event.clear")
async def event_clear(event: Event) -> None:
    await call(event._verify_running(), "event_clear", event.name)


@twin("Event.set")
async def event_set(event: Event) -> None:
    await call(event._verify_running(), "event_set", event.name)


@twin("Event.is_set")
async def event_is_set(event: Event) -> bool:
    return bool(await call(event._verify_running(), "event_is_set", event.name))


async def _acquire(semaphore: Semaphore, timeout: Any) -> bool:
    client = semaphore._verify_running()
    seconds = parse_timedelta(timeout)
    lease_id = uuid.uuid4().hex
    args = (semaphore.name, semaphore.max_leases, lease_id)

    def give_back(answer: Any) -> None:
        if answer is True:  # granted to a cancelled waiter: free it
            release = Operation("semaphore_release")
            request = Coordinate(operation=release, args=(semaphore.name, lease_id))
            client._link.request(request)

    if await wait_until(client, "semaphore_acquire", args, seconds, give_back) is True:
        semaphore._leases.append(lease_id)
        return True
    return False


@twin("Semaphore.acquire")
async def semaphore_acquire(semaphore: Semaphore, timeout: Any = None) -> bool:
    return await _acquire(semaphore, timeout)


@twin("Lock.acquire")
async def lock_acquire(lock: Lock, blocking: bool = True, timeout: Any = None) -> bool:
    return await _acquire(lock, lock_timeout(blocking, timeout))


@twin("Semaphore.release")
async def semaphore_release(semaphore: Semaphore) -> bool:
    client = semaphore._verify_running()
    if not semaphore._leases:
        raise RuntimeError("Released too often")
    lease_id = semaphore._leases.popleft()
    return bool(await call(client, "semaphore_release", semaphore.name, lease_id))


@twin("Semaphore.get_value")
async def semaphore_get_value(semaphore: Semaphore) -> int:
    client = semaphore._verify_running()
    return int(await call(client, "semaphore_value", semaphore.name))


@twin("Lock.locked")
async def lock_locked(lock: Lock) -> bool:
    return await semaphore_get_value(lock) == 1


@twin("Variable.set")
async def variable_set(
    variable: Variable, value: Any, timeout: Any = "30 s", **kwargs: Any
) -> None:
    client = variable._verify_running()
    await call(client, "variable_set", variable.name, dumps(value))


@twin("Variable.get")
async def variable_get(variable: Variable, timeout: Any = None, **kwargs: Any) -> Any:
    client = variable._verify_running()
    seconds = parse_timedelta(timeout)
    record = await wait_until(client, "variable_get", (variable.name,), seconds)
    if record is _NOT_YET:
        raise TimeoutError(
            f"Variable {variable.name!r} was not set within {timeout} seconds"
        )
    return loads(client, *record)


@twin("Variable.delete")
async def variable_delete(variable: Variable) -> None:
    client = variable._verify_running()
    if client.status == "running":
        await call(client, "variable_delete", variable.name)


async def _created(queue: Queue) -> Any:
    client = queue._verify_running()
    if not queue._created:
        await call(client, "queue_create", queue.name, queue.maxsize)
        queue._created = True
    return client


@twin("Queue.put")
async def queue_put(
    queue: Queue, value: Any, timeout: Any = None, **kwargs: Any
) -> None:
    client = await _created(queue)
    args = (queue.name, dumps(value))
    seconds = parse_timedelta(timeout)
    if await wait_until(client, "queue_put", args, seconds) is _NOT_YET:
        raise TimeoutError(f"Queue {queue.name!r} stayed full for {timeout} s")


@twin("Queue.get")
async def queue_get(
    queue: Queue, timeout: Any = None, batch: bool | int = False, **kwargs: Any
) -> Any:
    client = await _created(queue)
    args = (queue.name, _batch_count(batch, timeout))
    got = await wait_until(client, "queue_get", args, parse_timedelta(timeout))
    return queue._taken(client, got, batch, timeout)


@twin("Queue.qsize")
async def queue_qsize(queue: Queue, **kwargs: Any) -> int:
    client = await _created(queue)
    return int(await call(client, "queue_qsize", queue.name))


@twin("MultiLock.acquire")
async def multilock_acquire(
    lock: MultiLock,
    blocking: bool = True,
    timeout: Any = None,
    num_locks: int | None = None,
) -> bool:
    client = lock._verify_running()
    seconds = parse_timedelta(lock_timeout(blocking, timeout))
    args = lock._acquire_args(num_locks)

    def give_back(answer: Any) -> None:
        if answer is True:  # granted to a cancelled waiter: free them
            release = Coordinate(
                operation=Operation("multilock_release"), args=(lock.id,)
            )
            client._link.request(release)

    answer = await wait_until(client, "multilock_acquire", args, seconds, give_back)
    lock._locked = answer is True
    return lock._locked


@twin("MultiLock.release")
async def multilock_release(lock: MultiLock) -> bool:
    if not lock.locked():
        raise ValueError("Lock is not yet acquired")
    released = bool(await call(lock._verify_running(), "multilock_release", lock.id))
    lock._locked = False
    return released
