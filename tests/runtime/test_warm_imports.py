"""Warm imports: worker processes import heavy modules in the background once
ready (``LocalCluster(warm_imports=...)``); an import that fails is logged by
the worker and skipped."""

from __future__ import annotations

import logging
import sys
import threading
import types

import pytest

from localsched import Client, LocalCluster
from localsched.deploy.warming import CONFIG_KEY, WARM_CANDIDATES, WarmImports
from localsched.worker.warming import warm_imports
from tests.runtime import helpers

#: A stdlib module no worker imports by itself.
_RARE = "colorsys"


def _has_module(name: str) -> bool:
    return name in sys.modules


def _worker_has(client: Client, name: str) -> bool:
    return all(client.run(_has_module, name).values())


def test_workers_import_warm_modules_after_they_are_ready():
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, warm_imports=[_RARE]) as c,
        Client(c) as client,
    ):
        assert helpers.poll(lambda: _worker_has(client, _RARE))
        # A worker added later warms up too.
        c.scale(3)
        client.wait_for_workers(3, timeout=helpers.DEADLINE)
        assert helpers.poll(lambda: _worker_has(client, _RARE))


def test_warm_imports_off_imports_nothing():
    with Client(n_workers=1, threads_per_worker=1, warm_imports=False) as client:
        assert client.cluster.warm_imports.modules() == []
        assert client.submit(_has_module, _RARE).result(helpers.DEADLINE) is False


def test_failed_warm_imports_are_logged_and_skipped(tmp_path, monkeypatch):
    # One module that does not exist, one that raises while importing; the
    # worker's sys.path is the client's, so it finds the second one.
    (tmp_path / "localsched_warm_broken.py").write_text(
        "raise RuntimeError('broken at import')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    names = ["localsched_no_such_module", "localsched_warm_broken", _RARE]
    with Client(n_workers=1, threads_per_worker=1, warm_imports=names) as client:

        def failures() -> list[str]:
            [records] = client.get_worker_logs().values()
            return [text for level, text in records if level == "WARNING"]

        # Waits for the log, not for the module: a worker forked from this
        # process may have had it from the start (deploy/user_fork.py).
        assert helpers.poll(
            lambda: any("'localsched_warm_broken' failed" in t for t in failures())
        )
        assert any("'localsched_no_such_module' failed" in t for t in failures())
        # The modules after the failures are still imported, tasks still run.
        assert helpers.poll(lambda: _worker_has(client, _RARE))
        assert client.submit(sum, [1, 2]).result(helpers.DEADLINE) == 3


def test_warm_imports_returns_the_failures_and_logs_them(caplog):
    with caplog.at_level(logging.WARNING, logger="localsched.worker.warming"):
        failed = warm_imports(["localsched_no_such_module", "json"])
    assert failed == ["localsched_no_such_module"]
    [record] = caplog.records
    assert "localsched_no_such_module" in record.getMessage()
    assert record.exc_info is not None


def test_auto_picks_the_candidates_this_process_imported(monkeypatch):
    for name in WARM_CANDIDATES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "pandas", types.ModuleType("pandas"))
    monkeypatch.setitem(sys.modules, "numpy", types.ModuleType("numpy"))
    assert WarmImports("auto").modules() == ["numpy", "pandas"]
    assert WarmImports(True).modules() == ["numpy", "pandas"]
    assert WarmImports(["json", "auto", "numpy"]).modules() == [
        "json",
        "numpy",
        "pandas",
    ]
    assert WarmImports(False).modules() == []
    assert WarmImports([]).modules() == []


def test_warm_imports_default_comes_from_dask_config():
    dask = pytest.importorskip("dask")
    with dask.config.set({CONFIG_KEY: ["json"]}):
        assert WarmImports().modules() == ["json"]
    with dask.config.set({CONFIG_KEY: False}):
        assert WarmImports().modules() == []


def test_warm_imports_rejects_what_is_not_a_module_name():
    with pytest.raises(TypeError, match="module names"):
        WarmImports([3])  # type: ignore[list-item]


def test_warm_imports_wait_while_the_worker_is_busy(tmp_path, monkeypatch):
    (tmp_path / "localsched_warm_probe.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "localsched_warm_probe", raising=False)
    seen: list[bool] = []

    def is_busy() -> bool:
        # Busy for the first three looks: nothing may be imported meanwhile.
        seen.append("localsched_warm_probe" in sys.modules)
        return len(seen) <= 3

    assert warm_imports(["localsched_warm_probe"], is_busy, quiet=0.0) == []
    assert seen == [False, False, False, False]
    assert sys.modules["localsched_warm_probe"].VALUE == 1


def test_warm_imports_start_only_after_a_quiet_spell(monkeypatch):
    """Work sent right after start-up finds the worker free: no import starts
    until it has been without a task for ``quiet`` seconds (of its clock)."""
    from localsched.worker.warming import WarmUp

    now = [0.0]
    imported_at: list[float] = []

    def is_busy() -> bool:
        now[0] += 0.1  # each look takes 0.1 s of the clock
        return now[0] <= 0.45  # busy at the looks made up to 0.4

    warm = WarmUp(["json"], is_busy, quiet=0.3, clock=lambda: now[0])
    monkeypatch.setattr(warm, "_import", lambda name: imported_at.append(now[0]))
    assert warm.run() == []
    # Once, and not before 0.3 s after the last busy look (made at 0.3).
    assert len(imported_at) == 1
    assert imported_at[0] >= 0.3 + 0.3 + 0.1 - 1e-9
    assert warm.is_done


def test_a_task_waits_for_the_warm_import_in_progress():
    """Importing one package from two threads at once can fail (CPython's
    import deadlock detection): a task waits for the running warm import."""
    from localsched.worker.warming import WarmUp

    warm = WarmUp(["json"])
    with warm.lock:  # as during a warm import
        waiter = threading.Thread(target=warm.wait)
        waiter.start()
        waiter.join(0.05)
        assert waiter.is_alive()  # blocked while the import runs
    waiter.join(helpers.DEADLINE)
    assert not waiter.is_alive()
    assert warm.run() == []
    assert warm.is_done


def test_numpy_imported_by_tasks_and_warm_up_at_once():
    """The end-to-end case that failed with a deadlock error: the client has
    numpy, so workers warm it, while the first tasks unpickle numpy arrays."""
    np = pytest.importorskip("numpy")
    with Client(n_workers=2, threads_per_worker=2, warm_imports=["numpy"]) as client:
        futures = client.map(np.add, [np.arange(3)] * 8, range(8))
        assert [int(f.result(helpers.DEADLINE)[0]) for f in futures] == list(range(8))
        logs = client.get_worker_logs()
        assert not [t for r in logs.values() for lv, t in r if "Warm import" in t]
