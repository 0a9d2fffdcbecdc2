"""Finalizers that keep working at exit and run after the clusters' exit hook."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

from localsched.transport.finalizers import Finalizer


class Owner:
    pass


def test_runs_once_when_called_then_never_again():
    calls = []
    owner = Owner()
    finalizer = Finalizer(owner, calls.append, "cleaned")
    assert finalizer.alive
    finalizer()
    finalizer()
    del owner
    gc.collect()
    assert calls == ["cleaned"]
    assert not finalizer.alive


def test_runs_when_its_owner_is_garbage_even_in_a_cycle():
    calls = []
    owner = Owner()
    owner.self = owner  # type: ignore[attr-defined]  # only the cyclic GC frees it
    owner.finalizer = Finalizer(owner, calls.append, "cleaned")  # type: ignore[attr-defined]
    del owner
    gc.collect()
    assert calls == ["cleaned"]


EXIT_SCRIPT = textwrap.dedent(
    """
    import atexit, weakref

    from localsched.transport.finalizers import Finalizer


    class Owner:
        pass


    pending, called_late = Owner(), Owner()
    Finalizer(pending, print, "pending finalizer")
    late = Finalizer(called_late, print, "finalizer called by the later hook")


    @atexit.register
    def later_hook():  # as cluster.py's _close_open_clusters: registered later
        print("later hook")
        late()


    # weakref.finalize's own exit hook is registered now, so it runs first and
    # marks every weakref.finalize as shut down: ours must not care.
    keep = Owner()
    weakref.finalize(keep, print, "weakref finalizer")
    """
)


def test_at_exit_they_run_after_hooks_registered_later_and_still_when_called():
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.splitlines() == [
        "weakref finalizer",
        "later hook",
        "finalizer called by the later hook",
        "pending finalizer",
    ], done.stderr
