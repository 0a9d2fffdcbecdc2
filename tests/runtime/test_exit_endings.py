"""Every way a program can end with tasks running leaves nothing behind.

A user script starts a cluster and keeps its workers busy producing large
results (4 MiB each, so every one is a shared-memory segment), holds some, and
then ends while tasks still write: it falls off its end, raises, gets SIGINT
(Ctrl-C), SIGTERM or SIGKILL, or calls ``os._exit``. Within
:data:`CLEANUP_DEADLINE` seconds of its exit no segment of its store and no
process it started (workers, janitor) may remain (issue 18, section 2).

The first three endings run the exit handlers. Before the fix, ``weakref``'s own
exit hook (registered when the first ``BlobStore`` was created, so run before
the cluster's) unlinked the segments while workers still wrote new ones, and
then turned ``store.close()`` into a no-op and told the janitor "bye": tens to
hundreds of MiB stayed in /dev/shm.

A close that was not clean (here: a hung scheduler thread) must leave the
janitor sweeping, as a death does, instead of telling it "bye".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator

import psutil
import pytest

from localsched import LocalCluster
from tests.runtime.helpers import DEADLINE, SHM_DIR, poll, wait_for_file

pytestmark = pytest.mark.timeout(90)

#: Seconds segments and processes get to go once the user's process has exited.
CLEANUP_DEADLINE = 5.0

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, threading

    import numpy as np
    import psutil

    import localsched.transport.segment_files
    from localsched import Client

    info_path, ending, local_directory, shm_directory = sys.argv[1:5]
    # A private directory in /dev/shm: a cluster started meanwhile by another
    # program on the machine sweeps segments whose process died, which would
    # hide a leak in the shared /dev/shm.
    localsched.transport.segment_files.SHM_DIR = shm_directory


    def produce(i):
        return np.full(2**19, i, dtype=np.float64)  # 4 MiB: a segment


    if __name__ == "__main__":
        client = Client(
            n_workers=2, threads_per_worker=1, local_directory=local_directory
        )
        futures = client.map(produce, range(400))
        for future in futures[:6]:
            future.result(timeout=60)  # held: live segments at exit
        store = client.cluster.store
        info = {
            "directory": store.directory,
            "prefix": store.prefix,
            "children": [p.pid for p in psutil.Process().children(recursive=True)],
            "pending": sum(not f.done() for f in futures),
            "segments": len(os.listdir(store.directory)),
        }
        with open(info_path + ".tmp", "w") as f:
            json.dump(info, f)
        os.replace(info_path + ".tmp", info_path)
        if ending == "exception":
            raise RuntimeError("an unhandled error while tasks run")
        if ending == "os._exit":
            os._exit(3)
        if ending != "normal":
            threading.Event().wait()  # until the test's signal arrives
        # "normal": the script ends here, without closing anything
    """
)

#: Ending -> (signal the test sends or None, the exit status expected).
ENDINGS = {
    "normal": (None, 0),
    "exception": (None, 1),
    "SIGINT": (signal.SIGINT, -signal.SIGINT),  # KeyboardInterrupt, then re-raised
    "SIGTERM": (signal.SIGTERM, -signal.SIGTERM),
    "SIGKILL": (signal.SIGKILL, -signal.SIGKILL),
    "os._exit": (None, 3),
}


@pytest.fixture
def shm_directory() -> Iterator[str]:
    """A directory of /dev/shm (tmpfs) that only the test's script uses."""
    path = tempfile.mkdtemp(prefix="exit-endings-", dir=SHM_DIR)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _leftovers(*roots: str) -> list[str]:
    """Every file under ``roots``: what the script's store left."""
    return [
        os.path.join(d, n) for root in roots for d, _, ns in os.walk(root) for n in ns
    ]


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_ending_with_results_in_flight_leaves_no_segment_and_no_process(
    tmp_path, shm_directory, ending
):
    send, expected_status = ENDINGS[ending]
    info_path = tmp_path / "info.json"
    spill_root = tmp_path / "spill"
    spill_root.mkdir()
    with open(tmp_path / "out", "w") as out:
        user = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SCRIPT,
                str(info_path),
                ending,
                str(spill_root),
                shm_directory,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        try:
            wait_for_file(info_path, timeout=60)
        except TimeoutError:
            user.kill()
            pytest.fail((tmp_path / "out").read_text())
        info = json.loads(info_path.read_text())
        assert info["directory"].startswith(shm_directory)
        assert info["segments"] > 0, "the script held no segment"
        assert info["pending"] > 0, "no task was running any more: nothing in flight"
        assert len(info["children"]) >= 3  # two workers and the janitor
        if send is not None:
            os.kill(user.pid, send)
        status = user.wait(timeout=DEADLINE)
    finally:
        if user.poll() is None:
            user.kill()
            user.wait()
    output = (tmp_path / "out").read_text()
    assert status == expected_status, output
    if ending == "normal":
        assert "Traceback" not in output, output

    assert poll(lambda: not _alive(info["children"]), CLEANUP_DEADLINE), (
        _alive(info["children"]),
        output,
    )
    roots = (shm_directory, str(spill_root))
    assert poll(lambda: not _leftovers(*roots), CLEANUP_DEADLINE), _leftovers(*roots)


def test_janitor_sweeps_after_a_close_that_was_not_clean(monkeypatch):
    """A hung scheduler thread makes close() unclean: the janitor is not told
    "bye" and removes what was written after the store closed (a worker's late
    segment), as it does when the program dies."""
    cluster = LocalCluster(n_workers=1, threads_per_worker=1)
    store = cluster.store
    # The store's own directory goes with close(); what a late worker can still
    # make is the disk fallback directory it links to, and a segment in it.
    late = os.path.join(store.fallback_directory, f"{store.prefix}999999.0")
    close_store = store.close

    def close_then_write_late() -> None:
        close_store()
        os.makedirs(store.fallback_directory, mode=0o700, exist_ok=True)
        with open(late, "wb") as f:
            f.write(b"written by a worker after the store closed")

    monkeypatch.setattr(store, "close", close_then_write_late)
    janitor = psutil.Process(cluster._janitor[0].pid)
    workers = [psutil.Process(h.pid) for h in cluster.runtime.workers.values()]
    gate = threading.Event()
    cluster.runtime.call(gate.wait)  # the scheduler thread hangs in it
    try:
        cluster.close(timeout=1.0)
        assert poll(lambda: not os.path.exists(late), CLEANUP_DEADLINE)
        assert not janitor.is_running()  # it swept, then exited, and was reaped
        assert poll(lambda: not _alive([w.pid for w in workers]), CLEANUP_DEADLINE)
    finally:
        gate.set()
        assert poll(lambda: not cluster.runtime.is_running)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(late)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(store.fallback_directory)
