"""While a client is active, ``dask.compute`` runs on it; closing it gives
dask back the scheduler it had."""

from __future__ import annotations

import pytest

from localsched import Client

dask = pytest.importorskip("dask")


def _runs_on(client: Client) -> bool:
    before = len(client.scheduler.transition_log)
    assert dask.delayed(sum)([1, 2, 3]).compute() == 6
    return len(client.scheduler.transition_log) > before


def test_default_client_drives_dask_and_restores_previous_scheduler():
    with dask.config.set(scheduler="sync"):
        with Client(n_workers=1, threads_per_worker=1) as client:
            assert _runs_on(client)
            assert dask.config.get("scheduler") != "sync"
            # A second client: the newest one is current.
            with Client(client.cluster) as second:
                assert _runs_on(second)
            assert _runs_on(client)
        assert dask.config.get("scheduler") == "sync"


def test_as_current_without_default():
    previous = dask.config.get("scheduler", None)
    with Client(n_workers=1, threads_per_worker=1, set_as_default=False) as client:
        assert dask.config.get("scheduler", None) == previous
        with client.as_current():
            assert _runs_on(client)
            (total,) = dask.persist(dask.delayed(sum)([4, 5]))
            assert total.compute() == 9
        assert dask.config.get("scheduler", None) == previous


def test_client_as_the_scheduler_argument():
    from operator import add

    with Client(n_workers=1, threads_per_worker=1, set_as_default=False) as client:
        before = len(client.scheduler.transition_log)
        total = dask.delayed(sum)([1, 2, 3])
        assert dask.compute(total, scheduler=client) == (6,)
        assert total.compute(scheduler=client) == 6
        assert len(client.scheduler.transition_log) > before
        # Futures inside a raw graph: as an argument, and as a key's value.
        future = client.submit(add, 1, 2)
        dsk = {"f": future, "y": (add, future, 10), "z": (add, "f", "y")}
        assert client.get(dsk, ["y", "z"]) == [13, 16]


_DASK_IMPORTED_LATER = """
import sys
from localsched import Client

if __name__ == "__main__":
    with Client(n_workers=1, threads_per_worker=1) as client:
        # Starting a client does not import dask (0.2 s of start-up)...
        assert "dask" not in sys.modules, "Client() imported dask"
        import dask
        import dask.base

        # ...and importing it afterwards makes collections run here at once.
        assert dask.base.get_scheduler() == client.get
        before = len(client.scheduler.transition_log)
        assert dask.delayed(sum)([1, 2, 3]).compute() == 6
        assert len(client.scheduler.transition_log) > before
    assert dask.config.get("scheduler", None) is None
    print("ok")
"""


def test_client_before_dask_is_imported_drives_dask_once_imported(tmp_path):
    import subprocess
    import sys

    from tests.runtime.helpers import DEADLINE

    script = tmp_path / "late_dask.py"
    script.write_text(_DASK_IMPORTED_LATER)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
