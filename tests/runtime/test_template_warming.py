"""Warm imports in the worker template (``worker/template.py``,
``deploy/warming.py``): the template imports the warm modules once idle, its
later forks inherit them; an import that fails is logged and skipped; one that
starts a thread stops the template forking (workers then spawn)."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator

import psutil
import pytest

from localsched import Client, LocalCluster
from localsched.deploy import local as local_module
from localsched.deploy import warming as deploy_warming
from localsched.deploy.template import ForkedProcess, Template, TemplateError
from localsched.deploy.warming import TEMPLATE_CONFIG_KEY, WarmImports
from localsched.worker.warming import TemplateWarmUp, children_cpu_ticks
from tests.runtime.helpers import DEADLINE, poll

#: A stdlib module with its own shared library (``_decimal``), which no
#: worker or template imports by itself: its mapping shows it was imported.
_MODULE, _LIBRARY = "decimal", "_decimal"


def _maps(pid: int, library: str) -> bool:
    return any(library in m.path for m in psutil.Process(pid).memory_maps())


@pytest.fixture
def template() -> Iterator[Template]:
    template = Template()
    try:
        yield template
    finally:
        template.close()
    assert template.process.exitcode == 0


def _fork_janitor(template: Template) -> tuple[ForkedProcess, list]:
    """A process forked from ``template`` that only waits (a janitor on a
    pipe), and the pipe's ends to close."""
    reader, writer = multiprocessing.Pipe(duplex=False)
    child = template.fork(
        "localsched.transport.janitor", [{"fd": 1}], [2, reader.fileno()], "t"
    )
    return child, [reader, writer]


def _stop(child: ForkedProcess, ends: list) -> None:
    child.kill()
    child.join(DEADLINE)
    for end in ends:
        end.close()


def _prepend_pythonpath(monkeypatch: pytest.MonkeyPatch, path: object) -> None:
    """A template's sys.path is its environment's (a fresh interpreter)."""
    paths = [str(path), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


def test_template_imports_warm_modules_and_its_later_forks_inherit_them(template):
    template.warm([_MODULE], quiet=0.0)
    assert poll(lambda: _maps(template.pid, _LIBRARY))
    child, ends = _fork_janitor(template)
    try:
        # The janitor never imports decimal: it has it from the template.
        assert _maps(child.pid, _LIBRARY)
    finally:
        _stop(child, ends)


def test_a_failed_warm_import_in_the_template_is_logged_and_skipped(
    tmp_path, monkeypatch, capfd
):
    (tmp_path / "localsched_warm_broken.py").write_text(
        "raise RuntimeError('broken at import')\n"
    )
    _prepend_pythonpath(monkeypatch, tmp_path)
    template = Template()
    try:
        template.warm(["localsched_no_such_module", "localsched_warm_broken"], 0.0)
        template.warm([_MODULE], quiet=0.0)
        # The module after the failures is still imported, forks go on.
        assert poll(lambda: _maps(template.pid, _LIBRARY))
        child, ends = _fork_janitor(template)
        _stop(child, ends)
    finally:
        template.close()
    err = capfd.readouterr().err
    assert "Warm import of 'localsched_no_such_module' failed; skipped" in err
    assert "Warm import of 'localsched_warm_broken' failed; skipped" in err
    assert "RuntimeError: broken at import" in err
    assert template.process.exitcode == 0


def test_a_warm_import_that_starts_a_thread_stops_the_template_forking(
    tmp_path, monkeypatch, capfd
):
    (tmp_path / "localsched_warm_threaded.py").write_text(
        "import threading\n"
        "threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
    )
    _prepend_pythonpath(monkeypatch, tmp_path)
    template = Template()
    try:
        template.warm(["localsched_warm_threaded"], quiet=0.0)
        assert poll(lambda: "started a thread" in capfd.readouterr().err)
        # A fork now could copy a lock that thread holds: refused, the
        # cluster then spawns (TemplateError).
        with pytest.raises(TemplateError, match="started a thread"):
            _fork_janitor(template)
    finally:
        template.close()


def test_cluster_has_its_template_warm_the_fork_safe_modules(monkeypatch):
    monkeypatch.setattr(deploy_warming, "FORK_SAFE", frozenset({_MODULE}))
    monkeypatch.setattr(local_module, "TEMPLATE_QUIET", 0.0)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, warm_imports=[_MODULE, "colorsys"]
        ) as cluster,
        Client(cluster) as client,
    ):
        template = cluster._template
        assert template is not None
        assert cluster.warm_imports.template_modules() == [_MODULE]
        assert poll(lambda: _maps(template.pid, _LIBRARY))
        cluster.scale(2)
        client.wait_for_workers(2, timeout=DEADLINE)
        assert client.submit(sum, [1, 2]).result(DEADLINE) == 3


def test_numpy_works_in_workers_forked_from_a_template_that_imported_it(
    monkeypatch,
):
    np = pytest.importorskip("numpy")
    monkeypatch.setattr(local_module, "TEMPLATE_QUIET", 0.0)
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, warm_imports=["numpy"]) as c,
        Client(c) as client,
    ):
        template = c._template
        assert template is not None
        assert poll(lambda: _maps(template.pid, "_multiarray_umath"))
        c.scale(2)
        client.wait_for_workers(2, timeout=DEADLINE)
        # Its BLAS threads were started in the template: the fork's own
        # (OpenBLAS re-creates them after a fork) must work.
        a = np.arange(250_000.0).reshape(500, 500)
        futures = [client.submit(np.dot, a, a, pure=False) for _ in range(4)]
        for future in futures:
            assert np.array_equal(future.result(DEADLINE), a @ a)


def test_template_modules_are_the_fork_safe_warm_modules_unless_turned_off():
    warm = WarmImports(["numpy", "polars", "colorsys", "pandas"])
    assert warm.template_modules() == ["numpy", "pandas"]
    assert WarmImports(False).template_modules() == []
    dask = pytest.importorskip("dask")
    with dask.config.set({TEMPLATE_CONFIG_KEY: False}):
        assert warm.template_modules() == []


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_template_warm_up_waits_for_quiet_children_and_imports_one_per_step(
    caplog,
):
    clock = _Clock()
    cpu = {"ticks": 0}
    warm = TemplateWarmUp(clock=clock, cpu_of=lambda pids: cpu["ticks"])
    assert warm.timeout() is None  # nothing to import: no wake-up
    warm.add(["localsched_no_such_module", "colorsys", "colorsys"], quiet=1.0)
    warm.children.add(12345)
    assert warm.pending == ["localsched_no_such_module", "colorsys"]
    assert warm.step() is None  # not quiet for 1 s yet
    clock.now += 0.6
    cpu["ticks"] = 5  # a child worked meanwhile: quiet from now on
    assert warm.step() is None
    clock.now += 0.6
    assert warm.step() is None  # 0.6 s of quiet
    clock.now += 0.3
    warm.on_request()  # a fork request: quiet again from now on
    clock.now += 0.9
    assert warm.step() is None
    clock.now += 0.2
    with caplog.at_level(logging.WARNING, logger="localsched.worker.warming"):
        assert warm.step() == "localsched_no_such_module"  # failed: logged
    assert "Warm import of 'localsched_no_such_module' failed" in caplog.text
    assert warm.timeout() == 0.0  # the next one at once, if still quiet
    assert warm.step() == "colorsys"
    assert warm.timeout() is None
    assert warm.thread_starter is None


def test_children_cpu_ticks_counts_live_processes_only():
    assert children_cpu_ticks([os.getpid()]) >= 0
    # A pid that is not running counts 0 (a child that ended).
    assert children_cpu_ticks([2**22 + 1]) == 0
