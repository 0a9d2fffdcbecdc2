"""distributed's tools that open a comm to ``client.scheduler.address`` reach a
localsched cluster of this process (``localsched.integrations.dask_comm``).

``TextProgressBar`` is the one dask's own tests use (``test_text_progressbar``):
it connects with ``distributed.core.connect`` and sends a ``feed`` op whose
pickled ``setup`` and ``function`` run on the scheduler.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from contextlib import redirect_stdout
from typing import Any

import pytest
from distributed.comm.core import CommClosedError
from distributed.core import connect
from distributed.diagnostics.plugin import SchedulerPlugin as DaskSchedulerPlugin
from distributed.diagnostics.progressbar import TextProgressBar
from distributed.protocol.pickle import dumps

from localsched import Client
from tests.runtime.helpers import (
    DEADLINE,
    after_pending_callbacks,
    block,
    poll,
    wait_for_file,
)

pytestmark = pytest.mark.timeout(60)


def inc(x: int) -> int:
    return x + 1


def fail(x: int) -> int:
    raise ZeroDivisionError("no")


@pytest.fixture
def comm_client() -> Iterator[Client]:
    with Client(n_workers=1, threads_per_worker=1, validate=True) as client:
        yield client


def feed_answers(
    client: Client, message: dict[str, Any], n: int, between: Any = None
) -> list[Any]:
    """Connect to the client's scheduler, send ``message``, read ``n`` answers
    (``between()`` runs in another thread after the first write)."""

    async def run() -> list[Any]:
        comm = await connect(
            client.scheduler.address, timeout=DEADLINE, **client.connection_args
        )
        try:
            await comm.write(message)
            if between is not None:
                await asyncio.get_running_loop().run_in_executor(None, between)
            return [await asyncio.wait_for(comm.read(), DEADLINE) for _ in range(n)]
        finally:
            await comm.close()
            assert comm.closed()

    return asyncio.run(run())


def test_dasks_text_progress_bar_follows_futures(comm_client: Client) -> None:
    futures = comm_client.map(inc, range(10))
    out = io.StringIO()
    with redirect_stdout(out):
        bar = TextProgressBar(
            futures, interval=0.01, complete=True, loop=comm_client.loop
        )
    assert comm_client.gather(futures) == list(range(1, 11))
    assert bar.status == "finished"
    assert bar._last_response == {"all": 10, "remaining": 0, "status": "finished"}
    assert bar.comm.closed()
    final = out.getvalue().split("\r")[-2]
    assert "[" + "#" * 40 + "]" in final
    assert "100% Completed" in final


def test_dasks_text_progress_bar_reports_an_error(comm_client: Client) -> None:
    failed = comm_client.submit(fail, 1)
    with pytest.raises(ZeroDivisionError):
        failed.result(timeout=DEADLINE)
    with redirect_stdout(io.StringIO()):
        bar = TextProgressBar([failed], interval=0.01, loop=comm_client.loop)
    assert bar.status == "error"
    assert bar.comm.closed()


def test_a_feed_waits_for_keys_without_holding_the_scheduler(
    comm_client: Client, tmp_path: Any
) -> None:
    """dask's ``Progress.setup`` awaits until its keys exist: the scheduler
    keeps serving meanwhile (the task submitted after the feed started runs).
    Here the setup awaits a future a plugin's ``update_graph`` resolves."""
    release = tmp_path / "release"
    started = tmp_path / "started"

    class Arrival:
        def __init__(self, arrived: asyncio.Future[None]) -> None:
            self.arrived = arrived

        def update_graph(self, scheduler: Any, **kwargs: Any) -> None:
            if "late" in scheduler.tasks and not self.arrived.done():
                self.arrived.set_result(None)

    async def setup(scheduler: Any) -> str:
        arrived = asyncio.get_running_loop().create_future()
        scheduler.add_plugin(Arrival(arrived), name="arrival")
        if "late" not in scheduler.tasks:
            await arrived
        scheduler.remove_plugin(name="arrival")
        return "late"

    def function(scheduler: Any, key: str) -> str:
        return scheduler.tasks[key].state

    held = []

    def submit_late() -> None:
        late = comm_client.submit(block, str(release), str(started), 7, key="late")
        held.append(late)
        wait_for_file(started)
        release.touch()

    message = {
        "op": "feed",
        "setup": dumps(setup),
        "function": dumps(function),
        "interval": 0.01,
    }
    answers = feed_answers(comm_client, message, 1, between=submit_late)
    assert answers[0] in {"processing", "memory"}
    assert held[0].result(timeout=DEADLINE) == 7


def test_a_feed_runs_teardown_and_leaves_no_client(comm_client: Client) -> None:
    clients_before = set(comm_client.scheduler.clients)

    def setup(scheduler: Any) -> list[str]:
        return []

    def function(scheduler: Any, state: list[str]) -> int:
        state.append("call")
        return len(state)

    def teardown(scheduler: Any, state: list[str]) -> None:
        scheduler.log_event("feed-teardown", len(state))

    message = {
        "op": "feed",
        "setup": dumps(setup),
        "function": dumps(function),
        "teardown": dumps(teardown),
        "interval": "10ms",
    }
    assert feed_answers(comm_client, message, 3) == [1, 2, 3]
    assert poll(lambda: comm_client.get_events("feed-teardown"))
    assert poll(lambda: set(comm_client.scheduler.clients) == clients_before)


def test_an_op_without_a_handler_gets_dasks_error(comm_client: Client) -> None:
    (answer,) = feed_answers(comm_client, {"op": "no-such-op"}, 1)
    assert answer["status"] == "uncaught-error"
    assert "No handler found: no-such-op" in str(answer["exception"])


def test_a_failing_feed_closes_the_comm(comm_client: Client) -> None:
    def setup(scheduler: Any) -> None:
        raise RuntimeError("setup failed")

    message = {"op": "feed", "setup": dumps(setup), "function": dumps(len)}
    with pytest.raises(CommClosedError):
        feed_answers(comm_client, message, 1)
    assert comm_client.submit(inc, 1).result(timeout=DEADLINE) == 2


def test_connecting_to_no_cluster_is_an_os_error() -> None:
    async def run() -> None:
        await connect("local://0-no-such-cluster", timeout=0.2)

    with pytest.raises(OSError, match="Timed out trying to connect"):
        asyncio.run(run())


def test_dask_scheduler_plugin_hooks_it_keeps_are_not_called(
    comm_client: Client,
) -> None:
    """A subclass of distributed's SchedulerPlugin that keeps its base's no-op
    ``start`` is not started (dask's ``Progress``), and one that overrides it
    is awaited even when added from a coroutine turning on the scheduler."""

    class Kept(DaskSchedulerPlugin):
        name = "kept"

    class Started(DaskSchedulerPlugin):
        name = "started"

        async def start(self, scheduler: Any) -> None:
            scheduler.log_event("plugin-started", self.name)

    async def add_both(dask_scheduler: Any) -> None:
        dask_scheduler.add_plugin(Kept())
        dask_scheduler.add_plugin(Started())
        # The hook's task was scheduled on this loop: let it run before
        # asyncio.run ends (which would cancel it).
        await after_pending_callbacks()

    comm_client.run_on_scheduler(add_both)
    assert poll(lambda: comm_client.get_events("plugin-started"))
    assert [msg for _, msg in comm_client.get_events("plugin-started")] == ["started"]
