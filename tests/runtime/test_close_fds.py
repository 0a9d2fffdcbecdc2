"""``close()`` gives back every file descriptor the cluster opened (issue 18, §5).

A long-lived program (a notebook, a service) opens and closes clusters many
times; a descriptor kept per cycle ends in ``EMFILE``. Each cycle here has
results in shared memory, futures still held and a task still running at
close, the paths that open the most: segments, worker pipes, pidfds, stderr
pipes, the executing page (a ``memfd``), the janitor's pipe, the wakeup pipe.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from localsched import Client, LocalCluster
from tests.runtime.helpers import block

pytestmark = pytest.mark.timeout(120)

CYCLES = 10


def _open_fds() -> dict[int, str]:
    """This process's descriptors and what each one is."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the directory's own descriptor, closed since
    return found


def _new(before: dict[int, str]) -> dict[int, str]:
    return {fd: what for fd, what in _open_fds().items() if before.get(fd) != what}


def big(i: int) -> np.ndarray:
    return np.full(2**16, i, dtype=np.float64)  # 512 KiB: a segment


# processes=False: one worker, as in-process workers share the process's pid.
@pytest.mark.parametrize(
    ("processes", "n_workers"), [(True, 2), (False, 1)], ids=["processes", "threads"]
)
def test_close_gives_back_every_descriptor_over_ten_cycles(
    tmp_path, processes, n_workers
):
    before = _open_fds()
    for cycle in range(CYCLES):
        release = tmp_path / f"release-{cycle}"
        with (
            LocalCluster(
                n_workers=n_workers, threads_per_worker=2, processes=processes
            ) as cluster,
            Client(cluster) as client,
        ):
            futures = client.map(big, range(8))
            values = client.gather(futures, errors="raise")
            assert [v[0] for v in values] == list(range(8))
            del values  # mapped segments: the caller's to give back
            assert cluster.store.memory_bytes > 0  # held results in shared memory
            running = client.submit(block, str(release), pure=False)
            assert not running.done()
        release.touch()  # a thread worker's task thread outlives close: end it
        assert cluster.status == "closed"
        assert _new(before) == {}, f"after cycle {cycle}"
