"""The crash matrix, as CPython's and loky's executor tests run it.

{raise, ``os._exit``, segfault} x {pickling the arguments in the client,
unpickling them in the worker, running the task, pickling the result,
unpickling it in the client}. Each gives the right exception with the right
message, and the cluster runs the next task. A crash in a worker ends in
``KilledWorker`` (``allowed_failures=0``: the first death is enough) naming the
task, the worker, the exit status or signal and the last lines it printed. An
exit or segfault in the client process kills the user's program: those run in a
subprocess, which must die as expected and leave no process or segment behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from localsched import Client, KilledWorker, LocalCluster
from tests.runtime.helpers import (
    DEADLINE,
    CrashAtPickle,
    CrashAtUnpickle,
    CrashError,
    crash_task,
    identity,
    poll,
    return_crash_at_pickle,
    return_crash_at_unpickle,
    wait_for_file,
)

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
CLEANUP_DEADLINE = 10.0

#: Where a crash happens in the worker, and the task that makes it happen there.
WORKER_STEPS = {
    "unpickling": lambda client, how: client.submit(identity, CrashAtUnpickle(how)),
    "running the task": lambda client, how: client.submit(crash_task, how),
    "pickling": lambda client, how: client.submit(return_crash_at_pickle, how),
}


@pytest.fixture
def crash_client():
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, allowed_failures=0) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _assert_cluster_goes_on(client):
    assert client.submit(identity, 42, pure=False).result(timeout=DEADLINE) == 42


@pytest.mark.parametrize("step", list(WORKER_STEPS))
def test_raise_in_the_worker_gives_the_original_exception(crash_client, step):
    future = WORKER_STEPS[step](crash_client, "raise")
    with pytest.raises(CrashError, match=f"raised while {step}"):
        future.result(timeout=DEADLINE)
    assert future.status == "error"
    _assert_cluster_goes_on(crash_client)


@pytest.mark.parametrize(
    ("how", "death"),
    [("exit", "exited with status 7"), ("segfault", "killed by SIGSEGV")],
)
@pytest.mark.parametrize("step", list(WORKER_STEPS))
def test_worker_death_gives_killed_worker_naming_the_cause(
    crash_client, step, how, death
):
    future = WORKER_STEPS[step](crash_client, how)
    with pytest.raises(KilledWorker) as info:
        future.result(timeout=DEADLINE)
    error = info.value
    text = str(error)
    assert error.task == future.key
    assert repr(future.key) in text
    assert "local://" in text  # the worker
    assert death in text
    # The last lines the worker printed: our line, and the segfault's dump.
    assert f"crashing now ({how}) while {step}" in text
    if how == "segfault":
        assert "Fatal Python error: Segmentation fault" in text
    _assert_cluster_goes_on(crash_client)


def test_raise_while_pickling_arguments_in_the_client_fails_submit(crash_client):
    # dask's type (TypeError: could not serialize), the cause chained to it.
    with pytest.raises(TypeError, match="raised while pickling") as caught:
        crash_client.submit(identity, CrashAtPickle("raise"))
    assert isinstance(caught.value.__cause__, CrashError)
    assert not crash_client.cluster.scheduler.tasks  # nothing was submitted
    _assert_cluster_goes_on(crash_client)


def test_raise_while_unpickling_the_result_in_the_client(crash_client):
    future = crash_client.submit(return_crash_at_unpickle, "raise")
    with pytest.raises(CrashError, match="raised while unpickling"):
        future.result(timeout=DEADLINE)
    # The result is intact in the cluster: it is unpickled on every read.
    with pytest.raises(CrashError):
        crash_client.gather(future)
    _assert_cluster_goes_on(crash_client)


CLIENT_CRASH_SCRIPT = textwrap.dedent(
    """
    import json, os, sys

    import cloudpickle
    import psutil

    sys.path.insert(0, os.getcwd())
    from tests.runtime import helpers

    cloudpickle.register_pickle_by_value(helpers)

    from localsched import Client

    if __name__ == "__main__":
        how, step, info_path = sys.argv[1:]
        client = Client(n_workers=2, threads_per_worker=1)
        data = client.scatter(b"x" * 2**20)  # a shared-memory segment
        future = client.submit(helpers.return_crash_at_unpickle, how)
        client.wait_for_workers(2)
        children = [p.pid for p in psutil.Process().children(recursive=True)]
        with open(info_path + ".tmp", "w") as f:
            directory = client.cluster.store.directory
            segments = os.listdir(directory)
            details = {"children": children, "directory": directory}
            json.dump({**details, "segments": segments}, f)
        os.replace(info_path + ".tmp", info_path)
        if step == "pickle":
            client.submit(helpers.identity, helpers.CrashAtPickle(how))
        else:
            future.result(timeout=30)
        print("the client process survived")
    """
)


def _alive(pids):
    alive = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def _segments(directory):
    """What is left of a cluster's directory: the directory and its files."""
    try:
        return [directory, *os.listdir(directory)]
    except FileNotFoundError:
        return []


@pytest.mark.parametrize(
    ("how", "status"), [("exit", 7), ("segfault", -signal.SIGSEGV)]
)
@pytest.mark.parametrize("step", ["pickle", "unpickle"])
def test_client_process_crash_leaves_nothing_behind(tmp_path, step, how, status):
    info = tmp_path / "info.json"
    with subprocess.Popen(
        [sys.executable, "-c", CLIENT_CRASH_SCRIPT, how, step, str(info)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as user:
        try:
            stdout, stderr = user.communicate(timeout=DEADLINE * 2)
        except subprocess.TimeoutExpired:
            user.kill()
            stdout, stderr = user.communicate()
            pytest.fail(f"the script hung:\n{stdout}{stderr}")
    assert user.returncode == status, stdout + stderr
    assert "the client process survived" not in stdout
    assert f"crashing now ({how}) while " in stderr
    wait_for_file(info, timeout=1)
    details = json.loads(info.read_text())
    assert len(details["children"]) >= 3  # two workers and the janitor
    assert poll(lambda: not _alive(details["children"]), CLEANUP_DEADLINE), [
        psutil.Process(p).cmdline() for p in _alive(details["children"])
    ]
    directory = details["directory"]
    assert details["segments"], "the script made no shared-memory segment"
    assert poll(lambda: not _segments(directory), CLEANUP_DEADLINE), _segments(
        directory
    )
