"""The user's process dies or misbehaves: nothing may be left behind.

Each test runs a user script in a separate Python process, as a user would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from tests.runtime.helpers import DEADLINE, poll, shm_entries, wait_for_file

pytestmark = pytest.mark.timeout(60)

CLEANUP_DEADLINE = 10.0  # seconds for workers and segments to go after a SIGKILL

USER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, threading

    import numpy as np

    from localsched import Client

    info_path, started_path = sys.argv[1], sys.argv[2]


    def long_task(path):
        open(path, "w").close()
        threading.Event().wait()  # until the process is killed


    if __name__ == "__main__":
        client = Client(n_workers=2, threads_per_worker=1)
        data = client.scatter(np.ones(2**20))  # 8 MiB: a shared-memory segment
        pids = [
            client.submit(os.getpid, workers=[address], pure=False).result()
            for address in client.scheduler.workers
        ]
        future = client.submit(long_task, started_path, pure=False)
        while not os.path.exists(started_path):
            threading.Event().wait(0.01)
        with open(info_path + ".tmp", "w") as f:
            cluster = client.cluster
            json.dump(
                {
                    "pids": pids,
                    "prefix": cluster.store.prefix,
                    "janitor": cluster._janitor[0].pid,
                    "template": cluster._template.pid,
                },
                f,
            )
        os.replace(info_path + ".tmp", info_path)
        threading.Event().wait()
    """
)

UNGUARDED_SCRIPT = textwrap.dedent(
    """
    from localsched import Client

    client = Client(n_workers=1, threads_per_worker=1)
    print("result:", client.submit(sum, [1, 2, 3]).result(timeout=30))
    client.close()
    """
)

UNCLOSED_SCRIPT = textwrap.dedent(
    """
    import json, os, threading

    import numpy as np
    import psutil

    from localsched import Client


    def long_task():
        threading.Event().wait()  # still running when the program ends


    if __name__ == "__main__":
        client = Client(n_workers=2, threads_per_worker=1)
        data = client.scatter(np.ones(2**20))
        print(client.submit(np.sum, data).result(timeout=30))
        future = client.submit(long_task)
        children = [p.pid for p in psutil.Process().children(recursive=True)]
        print(json.dumps(children))
        # ends without closing anything
    """
)


def _segments(prefix: str) -> list[str]:
    """The cluster directories of the process in ``prefix`` (``localsched-<pid>-``,
    maybe more) and their files, in /dev/shm and the temporary directory."""
    pid_prefix = "-".join(prefix.split("-")[:2]) + "-"
    return sorted(shm_entries(pid_prefix))


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    return alive


def test_sigkill_of_the_user_process_leaves_no_worker_and_no_segment(tmp_path):
    user, details, descendants = _run_user_script(tmp_path)
    try:
        prefix = details["prefix"]
        assert prefix.startswith(f"localsched-{user.pid}-")
        assert _segments(prefix), "the script made no shared-memory segment"
        workers = [psutil.Process(p) for p in details["pids"]]
        assert len(workers) == 2
        assert {w.pid for w in workers} <= {d.pid for d in descendants}
        # Forked from the template, which must die with the user process too.
        assert {w.ppid() for w in workers} == {details["template"]}

        os.kill(user.pid, signal.SIGKILL)
        assert user.wait(timeout=DEADLINE) == -signal.SIGKILL

        assert poll(lambda: not _alive(workers), CLEANUP_DEADLINE), _alive(workers)
        assert poll(lambda: not _segments(prefix), CLEANUP_DEADLINE), _segments(prefix)
        assert poll(lambda: not _alive(descendants), CLEANUP_DEADLINE), [
            (p.pid, p.cmdline()) for p in _alive(descendants)
        ]
    finally:
        if user.poll() is None:
            user.kill()
            user.wait()


def test_script_without_main_guard_runs_or_fails_with_one_clear_error(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    with subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    ) as user:
        try:
            stdout, stderr = user.communicate(timeout=DEADLINE * 2)
        except subprocess.TimeoutExpired:
            user.kill()
            stdout, stderr = user.communicate()
            pytest.fail(f"the script hung:\n{stdout}{stderr}")
    done = subprocess.CompletedProcess(user.args, user.returncode, stdout, stderr)
    output = done.stdout + done.stderr
    prefix = f"localsched-{user.pid}-"
    assert poll(lambda: not _segments(prefix), CLEANUP_DEADLINE), _segments(prefix)
    assert "bootstrapping phase" not in output
    assert "freeze_support" not in output
    if done.returncode == 0:
        assert done.stdout.splitlines() == ["result: 6"], output
        assert "Traceback" not in output
    else:
        assert output.count("Traceback") == 1, output
        assert "RuntimeError" in done.stderr.strip().splitlines()[-1], output


def test_program_ending_without_close_exits_promptly_and_cleans_up(tmp_path):
    script = tmp_path / "unclosed.py"
    script.write_text(UNCLOSED_SCRIPT)
    with subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    ) as user:
        try:
            stdout, stderr = user.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            user.kill()
            stdout, stderr = user.communicate()
            pytest.fail(f"the program did not exit:\n{stdout}{stderr}")
    assert user.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    total, children = stdout.splitlines()
    assert float(total) == 2**20
    procs = []
    for child in json.loads(children):
        try:
            procs.append(psutil.Process(child))
        except psutil.NoSuchProcess:
            continue
    assert poll(lambda: not _alive(procs), CLEANUP_DEADLINE), _alive(procs)
    prefix = f"localsched-{user.pid}-"
    assert poll(lambda: not _segments(prefix), CLEANUP_DEADLINE), _segments(prefix)


def _run_user_script(tmp_path):
    """Start USER_SCRIPT; the process, its details and its descendants."""
    info = tmp_path / "info.json"
    started = tmp_path / "started"
    with open(tmp_path / "out", "w") as out:
        user = subprocess.Popen(
            [sys.executable, "-c", USER_SCRIPT, str(info), str(started)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for_file(info, timeout=30)
    except TimeoutError:
        user.kill()
        user.wait()
        pytest.fail((tmp_path / "out").read_text())
    descendants = psutil.Process(user.pid).children(recursive=True)
    return user, json.loads(info.read_text()), descendants


def test_startup_sweep_removes_segments_of_a_cluster_whose_janitor_died_too(
    tmp_path,
):
    """The last line of defence: the user process and its janitor both SIGKILLed
    (a kill of the whole tree, the OOM killer) leave segments that the next
    cluster started on the machine removes."""
    from localsched import LocalCluster

    user, details, descendants = _run_user_script(tmp_path)
    try:
        prefix = details["prefix"]
        janitors = [p for p in descendants if p.pid == details["janitor"]]
        assert len(janitors) == 1
        janitors[0].kill()
        # Dead (a zombie: its parent does not reap it) before its parent dies.
        assert poll(lambda: not _alive(janitors))
        os.kill(user.pid, signal.SIGKILL)
        assert user.wait(timeout=DEADLINE) == -signal.SIGKILL
        assert poll(lambda: not _alive(descendants), CLEANUP_DEADLINE)
        assert _segments(prefix), "nothing was left for the sweep to remove"

        with LocalCluster(n_workers=1, threads_per_worker=1):
            assert not _segments(prefix)
    finally:
        if user.poll() is None:
            user.kill()
            user.wait()


def test_close_reaps_every_process_and_segment_before_returning():
    from localsched import Client

    client = Client(n_workers=2, threads_per_worker=1)
    cluster = client.cluster
    prefix = cluster.store.prefix
    data = client.scatter(b"x" * 2**20)
    assert client.submit(len, data).result(timeout=DEADLINE) == 2**20
    children = psutil.Process().children(recursive=True)
    pids = {h.pid for h in cluster.runtime.workers.values()}
    pids.add(cluster._janitor[0].pid)
    ours = [p for p in children if p.pid in pids]
    assert len(ours) == 3  # two workers and the janitor
    assert _segments(prefix)
    client.close()
    cluster.close()
    # No polling: everything is gone (and reaped, not zombies) once close returns.
    for proc in ours:
        assert not proc.is_running(), proc
    assert not _segments(prefix)
    assert not cluster.runtime.is_running
