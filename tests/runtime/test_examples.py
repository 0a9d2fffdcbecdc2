"""The scripts in ``examples/`` that are not plugin examples run and print what
they promise (the plugin examples are run in ``test_plugins.py``)."""

from __future__ import annotations

import re

import pytest

from tests.runtime.test_plugins import run_example


@pytest.mark.timeout(60)
def test_quickstart_example_runs():
    out = run_example("quickstart.py").stdout
    assert "inc(10) = 11" in out
    assert "sum of 10,000 tasks = 50005000" in out
    assert "add(inc(1), inc(2)) = 5" in out
    assert "ValueError('cannot handle 3')" in out
    assert sorted(eval(out.split("as they completed:", 1)[1].splitlines()[0])) == [
        x * x for x in range(8)
    ]


@pytest.mark.timeout(60)
def test_context_manager_example_runs():
    out = run_example("context_manager.py").stdout
    assert "| 100% Completed |" in out
    assert "sum of squares: 328350" in out
    assert "client closed, cluster still running" in out
    assert "a second client on the same cluster: 144" in out
    assert "the error came back and the cluster closed: TypeError" in out
    assert "client closed / its cluster closed" in out


@pytest.mark.timeout(60)
def test_core_demo_example_runs():
    out = run_example("core_demo.py").stdout
    assert "'total' is in memory after 20,001 task results" in out
    assert "processing -> memory      20,001" in out
    # The figure says why it differs from docs/benchmarks.md: both are shown.
    assert re.search(r"[\d.]+ us per task with the plugin, [\d.]+ us without it", out)
    assert "docs/benchmarks.md quotes the core without plugins" in out


@pytest.mark.timeout(60)
def test_small_client_helpers_match_dask():
    from localsched import Client, LocalCluster, futures_of

    cluster = LocalCluster(n_workers=1, threads_per_worker=1)
    client = Client(cluster)
    try:
        a = client.submit(bytes, 100)
        b = client.submit(len, a)
        nested = [a, {"b": b}, (1, 2)]
        assert futures_of(nested) == [a, b]
        assert client.futures_of(nested) == [a, b]
        assert b.result(timeout=30) == 100
        assert a.type is bytes
        sizes = client.nbytes(keys=[a.key], summary=False)
        assert sizes[a.key] >= 100
        assert client.nbytes(summary=True)["bytes"] >= 100
    finally:
        client.shutdown()
    assert cluster.status == "closed"


@pytest.mark.timeout(60)
def test_adaptive_example_grows_and_shrinks():
    out = run_example("adaptive.py").stdout
    assert "burst: 4 workers after" in out
    assert "on 4 worker processes" in out
    assert "idle again: 1 worker" in out
    assert f"read after the pool shrank: {sum(x * x for x in range(400))}" in out
    assert "{'status': 'down'" in out


@pytest.mark.timeout(60)
def test_dask_array_example_runs():
    pytest.importorskip("dask.array")
    out = run_example("dask_array.py").stdout
    assert "(x + x.T).mean() = 0.999999" in out
    assert "delayed sum = 285, bag sum = 328350" in out


@pytest.mark.timeout(90)
def test_performance_report_example_writes_its_report(tmp_path):
    import os
    import subprocess
    import sys

    from tests.runtime.test_plugins import ROOT

    report = tmp_path / "report.html"
    path = os.environ.get("PYTHONPATH")
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "performance_report.py"), str(report)],
        capture_output=True,
        text=True,
        timeout=80,
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), path])),
        },
        check=True,
    )
    assert f"total 276000000, 1 corrupt record, report in {report}" in done.stdout
    assert "was killed by SIGKILL" in done.stderr  # the worker it kills on purpose
    page = report.read_text()
    assert "<td>died</td>" in page
    assert "<td>errors</td><td>1</td>" in page
    # 24 loads, 24 + 8 cleans, 5 totals, 10 checks; the crash never ends a run
    assert "<td>tasks</td><td>71</td>" in page
