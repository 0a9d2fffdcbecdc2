"""Outgrowing one machine: ``Client(address)`` returns a ``distributed.Client``
(or says which extra to install), and ``examples/dask_array.py`` prints the same
on localsched and, with its import line changed, on dask.distributed.

dask.distributed runs in subprocesses only: its event-loop thread would outlive
a test in this process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dask_array.py"
LOCALSCHED_IMPORT = "from localsched import Client"


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), path]))}
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=55,
        cwd=ROOT,
        env=env,
        check=True,
    )


@pytest.mark.timeout(120)
def test_example_prints_the_same_on_localsched_and_distributed(tmp_path):
    pytest.importorskip("dask.array")
    pytest.importorskip("distributed")
    source = EXAMPLE.read_text()
    assert source.count(LOCALSCHED_IMPORT) == 1
    ported = tmp_path / "dask_array_distributed.py"
    ported.write_text(
        source.replace(LOCALSCHED_IMPORT, "from distributed import Client")
    )
    ours = _run([str(EXAMPLE)]).stdout
    theirs = _run([str(ported)]).stdout
    assert "(x + x.T).mean() = 0.999999" in ours
    assert "bag sum = 328350" in ours
    assert ours == theirs


@pytest.mark.timeout(60)
def test_client_with_an_address_hands_over_to_distributed():
    pytest.importorskip("distributed")
    script = textwrap.dedent(
        """
        import distributed, localsched

        if __name__ == "__main__":
            with distributed.LocalCluster(
                n_workers=1, threads_per_worker=1, processes=False,
                dashboard_address=None,
            ) as cluster:
                client = localsched.Client(cluster.scheduler_address)
                assert type(client) is distributed.Client, type(client)
                assert client.submit(pow, 2, 5).result() == 32
                client.close()
            print("handed over")
        """
    )
    assert "handed over" in _run(["-c", script]).stdout


def test_client_with_an_address_names_the_extra_without_distributed():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["distributed"] = None  # as if it were not installed
        import localsched
        try:
            localsched.Client("tcp://127.0.0.1:8786")
        except ImportError as error:
            print(error)
        """
    )
    out = _run(["-c", script]).stdout
    assert "pip install 'localsched[dask]'" in out
    assert "tcp://127.0.0.1:8786" in out
