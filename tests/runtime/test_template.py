"""The worker template (``deploy/template.py``, ``worker/template.py``): workers
are forked from a pre-imported process; its lifetime, reports and fallback."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal

import psutil
import pytest

from localsched import Client, LocalCluster
from localsched.deploy.template import (
    CONFIG_KEY,
    Template,
    TemplateError,
    resolve_start_method,
)
from tests.runtime.helpers import DEADLINE, poll


def _parents(client: Client) -> set[int]:
    """The parent pids of the client's workers, as they report them."""
    return set(client.run(os.getppid).values())


def test_workers_and_scale_up_are_forked_from_the_template():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        template = cluster._template
        assert template is not None
        assert _parents(client) == {template.pid}
        janitor = psutil.Process(cluster._janitor[0].pid)
        assert janitor.ppid() == template.pid
        cluster.scale(3)
        client.wait_for_workers(3, timeout=DEADLINE)
        assert client.submit(sum, [1, 2]).result(DEADLINE) == 3
        assert _parents(client) == {template.pid}
        process = psutil.Process(template.pid)
    # Closed and reaped once close returns (the leak check covers the rest).
    assert not template.process.is_alive()
    assert not process.is_running()


def test_spawn_starts_no_template():
    with Client(
        n_workers=1, threads_per_worker=1, worker_start_method="spawn"
    ) as client:
        assert client.cluster._template is None
        assert _parents(client) == {os.getpid()}


def test_template_death_kills_its_workers_and_they_are_replaced_by_spawning(
    caplog,
):
    with Client(n_workers=2, threads_per_worker=1) as client:
        cluster = client.cluster
        template = cluster._template
        assert template is not None
        pids = client.run(os.getpid)
        forked = [psutil.Process(pid) for pid in pids.values()]
        os.kill(template.pid, signal.SIGKILL)
        # Its workers die with it (PR_SET_PDEATHSIG), the cluster replaces them.
        assert poll(lambda: not _alive(forked))
        workers = cluster.scheduler.workers
        assert poll(lambda: len(workers) == 2 and set(workers).isdisjoint(pids))
        assert _parents(client) == {os.getpid()}
        assert client.submit(sum, [1, 2]).result(DEADLINE) == 3
        assert template.is_broken
    assert any("template process" in r.getMessage() for r in caplog.records)


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            continue
    return alive


def test_template_reports_exit_codes_and_refuses_other_modules():
    template = Template()
    reader, writer = multiprocessing.Pipe(duplex=False)
    try:
        with pytest.raises(TemplateError, match="does not run 'os'"):
            template.fork("os", [], [2], "nothing")
        # Still serving after a refusal: a janitor waiting on its pipe.
        janitor = template.fork(
            "localsched.transport.janitor",
            [{"fd": 1}],
            [2, reader.fileno()],
            "test-janitor",
        )
        assert psutil.Process(janitor.pid).ppid() == template.pid
        assert janitor.is_alive()
        janitor.kill()
        janitor.join(DEADLINE)
        assert janitor.exitcode == -signal.SIGKILL
        assert not janitor.is_alive()
    finally:
        reader.close()
        writer.close()
        template.close()
    assert template.process.exitcode == 0  # left at its socket's EOF


def test_start_method_from_argument_or_dask_config(monkeypatch):
    assert resolve_start_method("spawn") == "spawn"
    assert resolve_start_method(None) == "template"
    # Where a template cannot work (no pidfds: not Linux 5.3+), workers spawn.
    with monkeypatch.context() as patch:
        patch.delattr(os, "pidfd_open")
        assert resolve_start_method("template") == "spawn"
    with pytest.raises(ValueError, match="worker_start_method"):
        resolve_start_method("fork")
    dask = pytest.importorskip("dask")
    with dask.config.set({CONFIG_KEY: "spawn"}):
        assert resolve_start_method(None) == "spawn"


def test_template_is_quiet_about_its_end_when_the_cluster_closes(caplog):
    with (
        caplog.at_level(logging.WARNING, logger="localsched.deploy.template"),
        LocalCluster(n_workers=1, threads_per_worker=1) as cluster,
    ):
        assert cluster._template is not None
    assert not caplog.records
