"""What people see: progress bars, reprs, the dashboard, the command line, logs."""

from __future__ import annotations

import io
import logging
import operator
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from rich.console import Console

from localsched import Client, LocalCluster, progress, reprs
from localsched.diagnostics import dashboard
from localsched.diagnostics.progressbar import ProgressBar
from tests.runtime.helpers import DEADLINE, block, poll

pytestmark = pytest.mark.timeout(60)

# dask's final bar; its time is dask's format_time ("{:4.1f}s", padded).
FINAL_LINE = re.compile(r"\[#{40}\] \| 100% Completed \| +\d+\.\ds")


def inc(x: int) -> int:
    return x + 1


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three is not allowed")
    return x


def plain_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=120)


def terminal_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, record=True, width=120)


def progress_plugins(client: Client) -> list[str]:
    return client.run_on_scheduler(
        lambda dask_scheduler: [
            name for name in dask_scheduler.plugins if name.startswith("progress-")
        ]
    )


# -- progress ---


def test_progress_in_a_log_ends_with_dasks_line_and_counts_dependencies(client):
    incs = client.map(inc, range(50))
    total = client.submit(sum, incs)
    console = plain_console()
    bar = ProgressBar([total], console=console)
    bar.run()
    out = console.file.getvalue()
    assert FINAL_LINE.search(out), out
    assert "\x1b[" not in out  # no escape codes in a CI log
    counts = {p.name: (p.total, p.done) for p in bar.snapshot().prefixes}
    assert counts == {"inc": (50, 50), "sum": (1, 1)}
    assert total.result(timeout=DEADLINE) == sum(range(1, 51))
    assert progress_plugins(client) == []  # registered only while the bar runs


def test_progress_outside_a_terminal_redraws_dasks_bar_after_carriage_returns(
    client, tmp_path
):
    release = tmp_path / "release"
    futures = client.map(block, [str(release)] * 2, pure=False)
    console = plain_console()
    runner = threading.Thread(
        target=progress,
        args=(futures,),
        kwargs={"console": console, "line_interval": 0.05, "notebook": False},
    )
    runner.start()
    try:
        # Unchanged counts are redrawn every line_interval (the time moves on).
        assert poll(lambda: console.file.getvalue().count("\r[") >= 3)
        assert progress_plugins(client)  # the tracker counts while the bar runs
    finally:
        release.touch()
        runner.join(DEADLINE)
    assert not runner.is_alive()
    out = console.file.getvalue()
    # dask's TextProgressBar bytes: every draw starts with \r, no line breaks
    # until the end, then the final bar is kept and the line ended.
    assert out.startswith("\r[")
    assert out.endswith("\r\n")
    assert out.count("\n") == 1
    segments = out.split("\r")
    assert segments[1].startswith(f"[{' ' * 40}] | 0% Completed | "), segments
    assert FINAL_LINE.fullmatch(segments[-2]), segments
    assert segments[-1] == "\n"


def test_progress_in_a_terminal_draws_a_bar_per_prefix_with_rate(client):
    squares = client.map(operator.mul, range(30), range(30))
    total = client.submit(sum, squares)
    console = terminal_console()
    progress(total, console=console, notebook=False)
    text = console.export_text()
    assert "mul" in text
    assert "30/30" in text
    assert "sum" in text
    assert FINAL_LINE.search(text), text
    assert "━" in text  # rich's bar, drawn live


def test_progress_shows_errors_in_red(client):
    futures = client.map(fail_on_three, range(6))
    console = terminal_console()
    progress(futures, console=console, notebook=False)
    text = console.export_text(clear=False)
    assert "1 erred" in text
    assert "three is not allowed" in text
    styled = console.export_text(styles=True)
    assert re.search(r"\x1b\[[0-9;]*31m[^\x1b]*1 erred", styled), styled


def _parity(key: str) -> str:
    return "even" if int(key.rsplit("-", 1)[1]) % 2 == 0 else "odd"


def test_progress_groups_by_dasks_group_by(client, monkeypatch):
    made: list[ProgressBar] = []

    class Recorded(ProgressBar):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr("localsched.client.progress.ProgressBar", Recorded)
    futures = [client.submit(inc, i, key=f"inc-{i}") for i in range(6)]
    progress(futures, group_by=_parity, console=plain_console(), notebook=False)
    assert {p.name: p.done for p in made[-1].snapshot().prefixes} == {
        "even": 3,
        "odd": 3,
    }
    # No task is in a span of its own here: all are in dask's "default" span.
    progress(futures, group_by="spans", console=plain_console(), notebook=False)
    assert {p.name: p.total for p in made[-1].snapshot().prefixes} == {"default": 6}
    progress(futures, console=plain_console(), notebook=False)
    assert {p.name for p in made[-1].snapshot().prefixes} == {"inc"}
    with pytest.raises(ValueError, match="should be 'spans', 'prefix', or a Callable"):
        progress(futures, group_by="size", notebook=False)


def test_progress_multi_false_and_complete_false(client):
    first = client.submit(inc, 1)
    done = client.submit(operator.neg, first)
    assert done.result(timeout=DEADLINE) == -2
    bar = ProgressBar([done], complete=False, console=plain_console())
    assert bar.snapshot().total == 0  # nothing left to do
    bar.run()
    assert FINAL_LINE.search(bar._console.file.getvalue())
    counted = ProgressBar([done], multi=False, console=terminal_console())
    counted.run()
    # complete=True counts the whole computation, through finished results
    assert {p.name: p.done for p in counted.snapshot().prefixes} == {
        "inc": 1,
        "neg": 1,
    }
    drawn = counted._console.export_text()
    assert "all" in drawn
    assert "2/2" in drawn


def test_progress_counts_released_intermediates_as_done(client):
    incs = client.map(inc, range(20))
    negs = client.map(operator.neg, incs)
    del incs  # the incs stay as released dependencies once the negs are made
    assert client.gather(negs) == [-(x + 1) for x in range(20)]
    bar = ProgressBar(negs, console=plain_console())
    snapshot = bar.snapshot()
    assert snapshot.complete, snapshot  # nothing left: must not wait for the incs
    assert {p.name: (p.total, p.done) for p in snapshot.prefixes}["neg"] == (20, 20)
    bar.run()


def test_progress_notebook_bar_renders_html(client):
    futures = client.map(inc, range(5))
    bar = ProgressBar(futures)
    assert bar.wait(DEADLINE)
    html = bar._repr_html_()
    assert "<pre" in html
    assert "100% Completed" in html
    assert "5/5" in html
    bar.stop()


def test_progress_rejects_unknown_arguments(client):
    with pytest.raises(TypeError, match="colour"):
        progress(client.submit(inc, 2), colour="red")
    assert progress_plugins(client) == []


# -- reprs ---


def test_client_and_cluster_reprs_show_workers_threads_memory_and_tasks(client):
    future = client.submit(inc, 41)
    assert future.result(timeout=DEADLINE) == 42
    html = client._repr_html_()
    assert "workers: 2, threads: 2" in html
    assert "MiB" in html  # resident memory of the worker processes
    assert "memory: 1" in html or "memory: " in html
    assert html.count("<tr>") == 3  # header + one row per worker
    assert client.cluster._repr_html_().startswith('<div class="localsched-repr">')
    console = terminal_console()
    console.print(client, client.cluster, client.scheduler)
    text = console.export_text()
    assert text.count("workers: 2  threads: 2") == 3
    assert "Scheduler" in text


def test_future_reprs(client):
    future = client.submit(inc, 1)
    future.result(timeout=DEADLINE)
    assert "status: finished" in future._repr_html_()
    assert "<code>int</code>" in future._repr_html_()
    console = terminal_console()
    console.print(future)
    text = console.export_text()
    assert "finished" in text
    assert str(future.key) in text


def test_repr_shows_adaptive_state_when_present():
    snapshot = reprs.ClusterSnapshot(
        name="c", status="running", address="local://1", adaptive={"minimum": 1}
    )
    assert "adaptive: minimum: 1" in reprs.cluster_html(snapshot, "c")
    console = terminal_console()
    console.print(reprs.cluster_rich(snapshot, "c"))
    assert "adaptive: minimum: 1" in console.export_text()


def test_repr_of_a_closed_client_does_not_block():
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        client = Client(cluster)
        client.close()
        assert "(closed)" in client._repr_html_()
    assert "status: closed" in cluster._repr_html_()


# -- dashboard ---


def test_dashboard_shows_workers_and_prefixes_until_futures_finish(client, tmp_path):
    release = tmp_path / "release"
    futures = client.map(block, [str(release)] * 3, pure=False)
    console = terminal_console()
    runner = threading.Thread(
        target=dashboard,
        args=(client,),
        kwargs={"until": futures, "interval": 0.05, "console": console},
    )
    runner.start()
    try:
        assert poll(lambda: "block" in console.export_text(clear=False))
    finally:
        release.touch()
        runner.join(DEADLINE)
    assert not runner.is_alive()
    text = console.export_text()
    for column in ("CPU", "memory", "executing", "processing", "tasks by prefix"):
        assert column in text
    assert "3/3" in text


# -- command line and logging ---


def test_info_command(capsys):
    from localsched.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for label in ("cores usable", "/dev/shm", "memory", "worker start", "rich"):
        assert label in out


def test_demo_command_runs(capsys):
    from localsched.cli import demo

    demo(n_workers=2)
    out = capsys.readouterr().out
    assert FINAL_LINE.search(out), out
    assert "Where the time went" in out
    assert "inc" in out
    assert "tasks in" in out


def test_cluster_logs_one_info_line_at_start_and_close_and_nothing_louder(caplog):
    caplog.set_level(logging.DEBUG, logger="localsched")
    with Client(n_workers=1, threads_per_worker=1) as c:
        assert c.submit(inc, 1).result(timeout=DEADLINE) == 2
    ours = [r for r in caplog.records if r.name.startswith("localsched")]
    assert not [r for r in ours if r.levelno >= logging.WARNING], ours
    info = [r.getMessage() for r in ours if r.levelno == logging.INFO]
    assert len(info) == 2, info
    assert "started with 1 workers" in info[0]
    assert "closed in" in info[1]


def test_every_logger_hangs_under_localsched():
    root = Path(__file__).parents[2] / "localsched"
    names = re.findall(r"getLogger\(\s*\"([^\"]+)\"", _all_source(root))
    assert names
    assert all(name.split(".")[0] == "localsched" for name in names), names


def test_warnings_reach_stderr_and_info_stays_quiet_without_logging_config():
    script = (
        "import logging, localsched\n"
        "log = logging.getLogger('localsched.deploy.local')\n"
        "log.info('an info line')\n"
        "log.warning('a warning line')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=True,
    )
    assert "a warning line" in done.stderr
    assert "an info line" not in done.stderr + done.stdout


def _all_source(root: Path) -> str:
    return "\n".join(path.read_text() for path in root.rglob("*.py"))


def test_client_dashboard_method_draws_the_same_view(client):
    futures = client.map(inc, range(3))
    client.gather(futures)
    console = terminal_console()
    client.dashboard(until=futures, interval=0.05, console=console)
    text = console.export_text()
    assert "tasks by prefix" in text
    assert "inc" in text
