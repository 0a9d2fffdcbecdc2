"""What a new user noticed (issue 15, item 6): the dashboard's final frame, the
first frame of ``top``, output outside a terminal, worker deaths in the log."""

from __future__ import annotations

import io
import os
import sys
import threading
from types import SimpleNamespace

import pytest
from rich.console import Console

from localsched import Client, KilledWorker
from localsched.diagnostics import dashboard
from localsched.diagnostics.progressbar import ProgressBar
from localsched.reprs import cluster_snapshot
from localsched.runtime.supervision import explain_death
from tests.runtime.helpers import DEADLINE, poll

pytestmark = pytest.mark.timeout(60)


def wait_then_return(seconds: float) -> float:
    threading.Event().wait(seconds)  # long enough for a heartbeat to say "executing"
    return seconds


def executing_counts(client) -> list[int]:
    return client.run_on_scheduler(
        lambda dask_scheduler: [
            ws.executing_count for ws in dask_scheduler.workers.values()
        ]
    )


def test_no_worker_shows_executing_tasks_once_everything_finished(client):
    futures = client.map(wait_then_return, [0.8, 0.8], pure=False)
    assert poll(lambda: sum(executing_counts(client)) > 0)  # heartbeats came
    client.gather(futures)
    # The snapshot the dashboard draws says so at once...
    assert [w.executing for w in cluster_snapshot(client.cluster).workers] == [0, 0]
    # ...and the scheduler's own count drops with the workers' next heartbeat.
    assert poll(lambda: executing_counts(client) == [0, 0])


def test_a_dashboard_outside_a_terminal_ends_its_last_line(client):
    futures = client.map(wait_then_return, [0.0] * 3, pure=False)
    console = Console(file=io.StringIO(), force_terminal=False, width=100)
    dashboard(client, until=futures, interval=0.05, console=console)
    console.print("next output")
    lines = console.file.getvalue().splitlines()
    assert lines[-1] == "next output"
    assert (lines[-2][0], lines[-2][-1]) == ("╰", "╯")


def long_prefix_name_for_a_progress_line(x: int) -> int:
    return x


def test_progress_lines_outside_a_terminal_never_wrap(client):
    futures = client.map(long_prefix_name_for_a_progress_line, range(20))
    futures += client.map(wait_then_return, [0.3], pure=False)
    console = Console(file=io.StringIO(), width=40, force_terminal=False)
    ProgressBar(futures, console=console, line_interval=0.05).run()
    out = console.file.getvalue()
    # Written as dask writes it, not through rich: the console's width never
    # breaks the bar, only the final newline ends it.
    assert out.count("\n") == 1
    assert out.endswith("\r\n")
    draws = out.split("\r")[1:-1]
    assert len(draws) >= 2
    assert all(d.startswith("[") and len(d) > 40 for d in draws), draws


def test_top_draws_before_the_cluster_starts_and_before_submitting(monkeypatch):
    from localsched import cli

    console = Console(file=io.StringIO(), force_terminal=True, record=True, width=120)
    seen_at_submit: list[str] = []

    def small_workload(client, scale):
        seen_at_submit.append(console.export_text(clear=False))
        return client.map(wait_then_return, [0.0] * 4, pure=False)

    monkeypatch.setattr(cli, "submit_workload", small_workload)
    cli.top(n_workers=1, console=console)
    [text] = seen_at_submit
    assert "starting the cluster" in text  # the first frame, before the cluster
    assert "executing" in text  # the dashboard, before any work was submitted
    assert "4/4" in console.export_text()


def _dead_worker(tail: list[str]) -> SimpleNamespace:
    return SimpleNamespace(
        address="local://1/0",
        pid=42,
        process=SimpleNamespace(exitcode=3),
        exit_cause=None,
        restarting=False,
        is_ready=True,
        stderr_relay=SimpleNamespace(tail=lambda: tail),
    )


def test_a_deaths_log_line_does_not_repeat_the_stderr_already_shown():
    handle = _dead_worker(["Traceback (most recent call last):", "boom"])
    for_the_error = explain_death(handle)
    for_the_log = explain_death(handle, quote_stderr=False)
    assert for_the_error.startswith("Worker local://1/0 (pid 42) exited with status 3")
    assert "boom" in for_the_error
    assert "boom" not in for_the_log
    assert for_the_log.endswith("What it printed to stderr is above.")
    assert explain_death(_dead_worker([]), quote_stderr=False).endswith("status 3.")


def last_words_then_exit() -> None:
    print("last words", file=sys.stderr, flush=True)
    os._exit(7)


def test_a_death_is_logged_once_with_its_cause(caplog):
    with (
        caplog.at_level("WARNING", logger="localsched"),
        Client(n_workers=1, threads_per_worker=1, allowed_failures=0) as client,
    ):
        future = client.submit(last_words_then_exit, pure=False)
        with pytest.raises(KilledWorker, match="last words"):
            future.result(DEADLINE)
    [death] = [
        r.getMessage()
        for r in caplog.records
        if "exited with status 7" in r.getMessage()
    ]
    assert "last words" not in death
    assert "What it printed to stderr is above." in death
