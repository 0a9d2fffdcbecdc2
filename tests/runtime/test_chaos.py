"""Chaos: workers killed at random while a 5,000-task graph runs.

The graph must finish with the right result, and once the cluster is closed no
process, thread or segment may be left (the leak check in ``conftest.py``).
"""

from __future__ import annotations

import os
import random
import signal
import threading

import pytest

from localsched import Client, LocalCluster
from tests.runtime.helpers import DEADLINE, pause_then_add

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

LEAVES = 4000
FAN_IN = 10
CHAIN = 555  # 4000 + 400 + 40 + 4 + 1 + 555 = 5000 tasks
HOLD = 0.004  # seconds each leaf occupies a thread


def _build(client):
    """Submit the graph; its last future and the number of tasks in it."""
    level = client.map(pause_then_add, [HOLD] * LEAVES, range(LEAVES))
    submitted = len(level)
    while len(level) > 1:
        level = [
            client.submit(pause_then_add, 0.0, *level[i : i + FAN_IN])
            for i in range(0, len(level), FAN_IN)
        ]
        submitted += len(level)
    total = level[0]
    for step in range(CHAIN):
        total = client.submit(pause_then_add, 0.0, total, 1, key=f"chain-{step}")
    return total, submitted + CHAIN


def _ready_worker_pids(cluster):
    return cluster.runtime.call(
        lambda: [h.pid for h in cluster.runtime.workers.values() if h.is_ready]
    ).result(timeout=DEADLINE)


def test_graph_completes_while_workers_are_killed_at_random():
    chooser = random.Random(5)
    pause = threading.Event()
    kills = 0
    with (
        LocalCluster(
            n_workers=3, threads_per_worker=1, allowed_failures=1000
        ) as cluster,
        Client(cluster) as client,
    ):
        total, submitted = _build(client)
        assert submitted == 5000
        while not total.done():
            pause.wait(chooser.uniform(0.15, 0.4))
            pids = _ready_worker_pids(cluster)
            if pids and not total.done():
                try:
                    os.kill(chooser.choice(pids), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    continue  # it died already
        assert total.result(timeout=DEADLINE) == sum(range(LEAVES)) + CHAIN
        assert kills >= 10, f"only {kills} workers were killed: no chaos"
        # Replacements keep the cluster at its size.
        cluster.wait_for_workers(3, timeout=DEADLINE)
