"""A worker dies: who is blamed, what the user is told, what survives, what restarts."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from localsched import Client, KilledWorker, LocalCluster
from localsched.runtime.handles import WorkerHandle
from localsched.runtime.supervision import RestartPolicy
from tests.runtime.helpers import (
    DEADLINE,
    block,
    count_call,
    lines,
    poll,
    say_on_stderr_then_block,
    secede_then_block,
    wait_for_file,
)

pytestmark = pytest.mark.timeout(60)


def _on_scheduler(cluster, function):
    return cluster.runtime.call(function).result(timeout=DEADLINE)


def _processing_on(cluster, key):
    def read():
        ts = cluster.scheduler.tasks.get(key)
        ws = None if ts is None else ts.processing_on
        return None if ws is None else ws.address

    return _on_scheduler(cluster, read)


def _address_of(cluster, pid):
    return _on_scheduler(
        cluster,
        lambda: next(a for a, h in cluster.runtime.workers.items() if h.pid == pid),
    )


def test_only_the_tasks_the_worker_was_executing_are_blamed(tmp_path):
    """A task queued behind the culprit on the dead worker runs again elsewhere;
    under dask's blame-all rule it would have failed with KilledWorker too."""
    release, started = str(tmp_path / "release"), tmp_path / "started"
    queued_log = str(tmp_path / "queued")
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, allowed_failures=0) as cluster,
        Client(cluster) as client,
    ):
        culprit = client.submit(
            say_on_stderr_then_block, "last words of the culprit", release, started
        )
        wait_for_file(started)
        victim = int(started.read_text())
        queued = client.submit(count_call, queued_log, "queued", pure=False)
        address = _address_of(cluster, victim)
        assert poll(lambda: _processing_on(cluster, queued.key) == address)

        os.kill(victim, signal.SIGKILL)

        with pytest.raises(KilledWorker) as info:
            culprit.result(timeout=DEADLINE)
        assert queued.result(timeout=DEADLINE) == "queued"
        assert lines(queued_log) != [str(victim)]  # it ran on the replacement
    text = str(info.value)
    assert repr(culprit.key) in text
    assert address in text
    assert f"(pid {victim}) was killed by SIGKILL" in text
    assert "out-of-memory killer" in text  # nobody in localsched sent it
    assert "last words of the culprit" in text
    assert info.value.last_worker.address == address


def test_a_seceded_task_is_blamed_when_its_worker_dies(tmp_path):
    release, started = str(tmp_path / "release"), tmp_path / "started"
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, allowed_failures=0) as cluster,
        Client(cluster) as client,
    ):
        future = client.submit(secede_then_block, release, str(started))
        wait_for_file(started)
        os.kill(int(started.read_text()), signal.SIGKILL)
        with pytest.raises(KilledWorker, match="SIGKILL"):
            future.result(timeout=DEADLINE)


def test_exit_cause_set_before_a_kill_explains_the_death(tmp_path):
    """What the memory monitor does: say why, then kill."""
    release, started = str(tmp_path / "release"), tmp_path / "started"
    cause = "it used 95% of its memory budget (1.9 GiB of 2 GiB)"
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, allowed_failures=0) as cluster,
        Client(cluster) as client,
    ):
        future = client.submit(block, release, str(started))
        wait_for_file(started)
        victim = int(started.read_text())

        def mark_and_kill():
            handle = next(iter(cluster.runtime.workers.values()))
            handle.exit_cause = cause
            os.kill(victim, signal.SIGKILL)

        _on_scheduler(cluster, mark_and_kill)
        with pytest.raises(KilledWorker) as info:
            future.result(timeout=DEADLINE)
    assert cause in str(info.value)
    assert "out-of-memory killer" not in str(info.value)


def test_worker_stderr_reaches_the_users_stderr(tmp_path, capsys):
    release, started = str(tmp_path / "release"), tmp_path / "started"
    with Client(n_workers=1, threads_per_worker=1) as client:
        future = client.submit(
            say_on_stderr_then_block, "hello from a task", release, started
        )
        wait_for_file(started)
        seen = []

        def printed():
            seen.append(capsys.readouterr().err)
            return "hello from a task" in "".join(seen)

        assert poll(printed)
        Path(release).touch()
        future.result(timeout=DEADLINE)


def test_results_survive_their_worker_and_are_not_recomputed(tmp_path):
    release, started = str(tmp_path / "release"), tmp_path / "started"
    small_log, large_log = str(tmp_path / "small"), str(tmp_path / "large")
    large_value = b"x" * 2**20  # in a shared-memory segment
    with (
        LocalCluster(n_workers=2, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        victim_address = next(iter(cluster.scheduler.workers))
        small = client.submit(count_call, small_log, 1, workers=[victim_address])
        large = client.submit(
            count_call, large_log, large_value, workers=[victim_address]
        )
        client.gather([small, large])
        # A dependent executing on the same worker when it dies.
        dependent = client.submit(
            block,
            release,
            str(started),
            large,
            workers=[victim_address],
            allow_other_workers=True,
        )
        wait_for_file(started)
        victim = int(started.read_text())
        started.unlink()
        os.kill(victim, signal.SIGKILL)
        wait_for_file(started)  # it runs again, elsewhere, from the kept input
        Path(release).touch()
        assert dependent.result(timeout=DEADLINE) == large_value
        assert small.result(timeout=DEADLINE) == 1
        assert large.result(timeout=DEADLINE) == large_value
        assert len(lines(small_log)) == 1
        assert len(lines(large_log)) == 1
        assert int(started.read_text()) != victim


SITECUSTOMIZE = textwrap.dedent(
    """
    import os, sys

    kind = [a for a in sys.orig_argv if a.startswith("localsched.worker")]
    if kind:  # the worker, or the template that forks workers
        if "--template" in sys.orig_argv:
            kind = ["template"]
        with open({log!r}, "a") as f:
            f.write(kind[0] + "\\n")
        print("cannot start: the environment is broken", file=sys.stderr, flush=True)
        os._exit(3)
    """
)


@pytest.mark.parametrize("method", ["template", "spawn"])
def test_a_worker_that_cannot_start_fails_the_cluster_with_its_stderr(
    tmp_path, monkeypatch, method
):
    """Under "template", the template cannot start either: workers are
    spawned instead, and fail as they would have."""
    log = tmp_path / "attempts"
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE.format(log=str(log)))
    path = os.pathsep.join(p for p in (str(tmp_path), *sys.path) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setattr(RestartPolicy, "base_delay", 0.01)
    with pytest.raises(RuntimeError) as info:
        # warm_imports=False: a template that is a fork of this process would
        # not run the sitecustomize (deploy/user_fork.py).
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            worker_start_method=method,
            warm_imports=False,
        )
    text = str(info.value)
    assert text.startswith("5 worker processes in a row died while starting")
    assert "died while starting" in text
    assert "exited with status 3" in text
    assert "cannot start: the environment is broken" in text
    attempts = lines(log)
    # Then it gave up.
    assert attempts.count("localsched.worker") == RestartPolicy.max_start_failures
    templates = attempts.count("template")
    assert templates == (1 if method == "template" else 0)


class _FakeProcess:
    pid = 1
    exitcode = 3
    sentinel = None


def _handle(is_ready, executing=None):
    handle = WorkerHandle("local://1/0", 0, _FakeProcess(), None, 1)  # type: ignore[arg-type]
    handle.is_ready = is_ready
    handle.executing_at_exit = executing
    return handle


def test_restart_policy_backs_off_on_start_failures_and_gives_up():
    policy = RestartPolicy()
    assert policy.delay_after(_handle(is_ready=True, executing=["x"])) == 0.0
    delays = [policy.delay_after(_handle(is_ready=False)) for _ in range(4)]
    assert delays == [0.1, 0.2, 0.4, 0.8]
    policy.check()  # not given up yet
    assert policy.delay_after(_handle(is_ready=False)) is None
    with pytest.raises(RuntimeError, match="5 worker processes in a row"):
        policy.check()
    assert policy.delay_after(_handle(is_ready=True)) is None  # stays given up


def test_restart_policy_backs_off_on_young_idle_crashes_without_giving_up():
    """A worker that dies right after starting with no task running (a crashing
    worker plugin, say) is replaced ever more slowly, never abandoned."""
    policy = RestartPolicy()
    delays = [policy.delay_after(_handle(True, executing=[])) for _ in range(10)]
    assert delays[:3] == [0.1, 0.2, 0.4]
    assert delays[-1] == policy.max_delay
    policy.check()
    # A crash while executing a task is the task's doing: replaced at once.
    assert policy.delay_after(_handle(True, executing=["poison"])) == 0.0


def test_restart_policy_forgets_failures_once_a_worker_runs_well():
    policy = RestartPolicy()
    for _ in range(3):
        policy.delay_after(_handle(is_ready=False))
    assert policy.delay_after(_handle(is_ready=True)) == 0.0  # a worker that ran
    assert policy.delay_after(_handle(is_ready=False)) == 0.1
    policy.min_uptime = 0.0
    survivor = _handle(is_ready=True)  # started after the last failure
    assert policy.delay_after(_handle(is_ready=False), [survivor]) == 0.1


def test_stderr_relay_forwards_everything_and_keeps_a_bounded_tail(capsys):
    from localsched.runtime.supervision import TAIL_LINE_CHARS, TAIL_LINES, StderrRelay

    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    relay = StderrRelay(os.fdopen(read_fd, "rb", buffering=0))
    try:
        text = "".join(f"line {i}\n" for i in range(1000)) + "x" * 5000 + "\nlast"
        data = text.encode()
        written = 0
        while written < len(data):  # more than a pipe holds: pump as we go
            written += os.write(write_fd, data[written : written + 4096])
            assert relay.pump() is False
        os.close(write_fd)
        assert relay.pump() is True  # end of file
        assert capsys.readouterr().err == text
        tail = relay.tail()
        assert len(tail) == TAIL_LINES
        assert tail[-1] == "last"  # an unfinished last line counts
        assert tail[-2] == "x" * TAIL_LINE_CHARS  # long lines are cut
        assert tail[-3] == "line 999"
    finally:
        relay.close()
    assert relay.is_closed
    assert relay.pump() is True


def test_in_process_worker_task_ending_after_close_is_harmless(tmp_path):
    """``processes=False``: the runtime closes its view of a leaving worker's
    executing page while that worker's task thread may still run."""
    import threading

    release, started = str(tmp_path / "release"), tmp_path / "started"
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False)
    try:
        client = Client(cluster)
        future = client.submit(block, release, str(started))  # kept: not released
        wait_for_file(started)
        task_threads = [
            t for t in threading.enumerate() if t.name.startswith("localsched-task")
        ]
        client.close()
        cluster.close(timeout=2.0)
    finally:
        Path(release).touch()
        cluster.close()
    assert task_threads
    assert poll(lambda: not any(t.is_alive() for t in task_threads))
    assert future.status == "cancelled"  # the cluster closed under it


def test_scaling_up_after_workers_could_not_start_says_why():
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        cluster._restarts.failure = "5 worker processes in a row died while starting"
        with pytest.raises(RuntimeError, match="died while starting"):
            cluster.scale(2)
        assert len(cluster.runtime.workers) == 1
