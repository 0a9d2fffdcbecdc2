"""Actor tasks in the core: marked by ``UpdateGraph.actors``, kept by one worker,
erred (never recomputed) when that worker goes, as in dask."""

from __future__ import annotations

from localsched.scheduler import events as ev
from localsched.scheduler.commands import (
    CloseWorker,
    FreeData,
    FreeKeys,
    KeyErred,
    KeyLost,
    RetirementFailed,
)
from localsched.scheduler.transitions import ACTOR_LOST
from tests.scheduler.factories import (
    add_worker,
    finish,
    of_type,
    remove_worker,
    states,
    submit,
)


def test_update_graph_marks_the_actor_keys_only(state):
    add_worker(state, "w1")
    submit(state, {"counter": [], "x": []}, actors=["counter"])

    assert state.tasks["counter"].actor
    assert not state.tasks["x"].actor


def test_losing_the_actors_worker_errs_it_and_its_dependents(state):
    add_worker(state, "w1")
    add_worker(state, "w2")
    submit(state, ["counter"], actors=["counter"], restrictions={"counter": ["w1"]})
    finish(state, "counter")  # an actor's result is never in the shared store
    submit(state, {"use": ["counter"]}, restrictions={"use": ["w2"]})

    cmds = remove_worker(state, "w1")

    assert states(state, "counter", "use") == {"counter": "erred", "use": "erred"}
    erred = {c.key: c for c in of_type(cmds, KeyErred)}
    assert isinstance(erred["counter"].exception, RuntimeError)
    assert str(erred["counter"].exception) == ACTOR_LOST
    assert erred["use"].exception is erred["counter"].exception
    assert not of_type(cmds, KeyLost)  # not recomputed: its state is gone
    assert FreeData.match(key="counter") in cmds  # the stored handle goes


def test_releasing_an_actor_frees_its_object_and_handle(state):
    add_worker(state, "w1")
    submit(state, ["counter"], actors=["counter"])
    finish(state, "counter")

    cmds = state.handle(
        ev.ClientReleasesKeys(stimulus_id="release", client="c", keys=["counter"])
    )

    assert states(state, "counter") == {"counter": "forgotten"}
    assert FreeKeys.match(worker="w1", keys=("counter",)) in cmds
    assert FreeData.match(key="counter") in cmds


def test_retiring_the_actors_worker_does_not_try_to_move_the_actor(state):
    add_worker(state, "w1")
    submit(state, ["counter"], actors=["counter"])
    finish(state, "counter")

    cmds = state.handle(
        ev.RetireWorkers(stimulus_id="retire", workers=["w1"], close_workers=True)
    )

    # Alone, the worker can retire: its actor could not move anyway, and is
    # lost with it (dask's RetireWorker policy skips actors too).
    assert not of_type(cmds, RetirementFailed)
    assert CloseWorker.match(worker="w1") in cmds
    assert states(state, "counter") == {"counter": "erred"}
    assert str(state.tasks["counter"].exception) == ACTOR_LOST
