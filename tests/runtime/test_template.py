"""The worker template (``deploy/template.py``, ``worker/template.py``): workers
are forked from a pre-imported process; its lifetime, reports and fallback."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Mapping
from typing import Any

import psutil
import pytest

from localsched import Client, LocalCluster
from localsched.deploy import local as local_module
from localsched.deploy import template as template_module
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


def _record_template_starts(monkeypatch) -> list[Template | None]:
    """Every template started from now on, by ``Client()`` or a cluster."""
    started: list[Template | None] = []
    real = template_module.start_template

    def start(options: Mapping[str, Any] | None = None) -> Template | None:
        started.append(real(options))
        return started[-1]

    monkeypatch.setattr(template_module, "start_template", start)
    monkeypatch.setattr(local_module, "start_template", start)
    return started


def test_client_starts_the_template_ahead_and_its_cluster_takes_it(monkeypatch):
    started = _record_template_starts(monkeypatch)
    taken: list[Template | None] = []
    real_take = template_module.take_template_ahead

    def take() -> Template | None:
        taken.append(real_take())
        return taken[-1]

    monkeypatch.setattr(local_module, "take_template_ahead", take)
    with Client(n_workers=1, threads_per_worker=1) as client:
        template = client.cluster._template
        assert template is not None
        # One template, started before the cluster existed, which took it.
        assert started == [template]
        assert taken == [template]
        assert _parents(client) == {template.pid}
        assert client.submit(sum, [1, 2]).result(DEADLINE) == 3
    assert not template.process.is_alive()


def test_client_starts_no_template_ahead_where_the_cluster_needs_none(
    monkeypatch,
):
    started = _record_template_starts(monkeypatch)
    with Client(n_workers=1, threads_per_worker=1, processes=False):
        pass
    with Client(n_workers=1, threads_per_worker=1, worker_start_method="spawn"):
        pass
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        template = cluster._template
        # Attaching to a cluster starts nothing either.
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2]).result(DEADLINE) == 3
    assert started == [template]
    with pytest.raises(ValueError, match="worker_start_method"):
        Client(n_workers=1, worker_start_method="fork")
    assert started == [template]


def test_a_template_started_ahead_for_a_refused_cluster_is_closed(monkeypatch):
    started = _record_template_starts(monkeypatch)
    with pytest.raises(TypeError, match="n_worker"):
        Client(n_worker=1)  # the typo is refused after the template started
    assert len(started) == 1
    assert started[0] is not None
    assert not started[0].process.is_alive()  # closed and reaped


def test_a_cluster_refused_after_its_template_started_closes_it(monkeypatch):
    started = _record_template_starts(monkeypatch)
    with pytest.raises(ValueError, match="lots"):
        LocalCluster(n_workers=1, memory_limit="lots")
    assert len(started) == 1
    assert started[0] is not None
    assert not started[0].process.is_alive()


def test_template_ahead_is_taken_once(monkeypatch):
    started = _record_template_starts(monkeypatch)
    with template_module.template_ahead({}):
        first = template_module.take_template_ahead()
        # A second cluster built in the block starts its own.
        assert template_module.take_template_ahead() is None
    assert started == [first]
    assert first is not None
    assert first.process.is_alive()  # taken: the block leaves it alone
    first.close()
    assert not first.process.is_alive()
    with template_module.template_ahead(None):
        assert template_module.take_template_ahead() is None
    assert started == [first]
