"""The scheduler thread pauses the cyclic GC while the core takes in a big
graph (``runtime/collector.py``), and always resumes it."""

from __future__ import annotations

import gc

import pytest

from localsched.runtime import collector
from localsched.runtime.collector import PAUSE_FROM, paused_for_graphs
from localsched.scheduler import events as ev


def graph(n: int) -> ev.UpdateGraph:
    return ev.UpdateGraph(stimulus_id="g", client="c", tasks=dict.fromkeys(range(n)))


def test_big_graphs_pause_the_collector_and_it_always_resumes():
    seen: list[bool] = []
    with paused_for_graphs([graph(PAUSE_FROM // 2), graph(PAUSE_FROM // 2)]):
        seen.append(gc.isenabled())
    with paused_for_graphs([graph(PAUSE_FROM - 1)]):
        seen.append(gc.isenabled())
    assert seen == [False, True]
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError), paused_for_graphs([graph(PAUSE_FROM)]):
        1 / 0  # noqa: B018 the block fails: the collector still resumes
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_for_graphs([graph(PAUSE_FROM)]):
            pass
        assert not gc.isenabled()  # it was off: left off
    finally:
        gc.enable()


def test_the_scheduler_thread_pauses_for_a_big_map(client, monkeypatch):
    pauses: list[bool] = []
    disable = gc.disable

    def counted_disable() -> None:
        pauses.append(True)
        disable()

    monkeypatch.setattr(collector, "PAUSE_FROM", 3)
    monkeypatch.setattr(gc, "disable", counted_disable)
    futures = client.map(lambda x: x + 1, range(3))
    assert client.gather(futures) == [1, 2, 3]
    assert pauses  # the graph of 3 counted as big
    assert gc.isenabled()  # resumed before the tasks were even sent
