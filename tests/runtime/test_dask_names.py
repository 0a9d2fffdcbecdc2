"""dask.distributed names: ``Reschedule``, ``MultiLock``, ``get_task_metadata``."""

from __future__ import annotations

import os

import pytest

import localsched
from localsched import Client, Reschedule
from tests.runtime.helpers import DEADLINE

pytestmark = pytest.mark.timeout(60)


def reschedule_once(marker: str) -> int:
    """Raise Reschedule on the first run (the marker file does not exist yet)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return 42
    os.close(fd)
    raise Reschedule()


def test_a_task_raising_reschedule_runs_again_and_finishes(client: Client, tmp_path):
    marker = str(tmp_path / "ran-once")
    future = client.submit(reschedule_once, marker, pure=False)
    assert future.result(timeout=DEADLINE) == 42
    assert os.path.exists(marker)
    assert future.status == "finished"


def test_reschedule_is_dask_s_exception():
    assert localsched.Reschedule is Reschedule
    assert issubclass(Reschedule, Exception)
