"""Client bookkeeping: who wants which keys, and what clients are told.

Plain functions over ``SchedulerState``, shared by the transitions (a result or
an error reaches the clients that want it), graph intake and the stimulus
handlers (clients arrive, release keys, ask about keys).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from localsched.scheduler.commands import KeyErred, KeyInMemory
from localsched.scheduler.tasks import ClientState, Key, TaskState, without_link

if TYPE_CHECKING:
    from localsched.scheduler.state import SchedulerState

Recs = dict[Key, str]


def key_erred(
    ts: TaskState, failing: TaskState, client: str, stimulus_id: str
) -> KeyErred:
    """Tell ``client`` that ``ts`` erred, with the error of the task to blame."""
    return KeyErred(
        stimulus_id=stimulus_id,
        client=client,
        key=ts.key,
        exception=failing.exception,
        traceback=failing.traceback,
        exception_text=failing.exception_text,
        traceback_text=failing.traceback_text,
    )


def ensure_client(state: SchedulerState, client: str) -> ClientState:
    """The client ``client``, registered (and announced to plugins) if new."""
    cs = state.clients.get(client)
    if cs is None:
        cs = state.clients[client] = ClientState(client)
        cs.last_seen = state.now
        if state.hooks is not None:
            state.hooks.notify("add_client", client=client)
    return cs


def client_releases_keys(
    state: SchedulerState, keys: Iterable[Key], cs: ClientState, recs: Recs
) -> None:
    """``cs`` no longer wants ``keys``; recommend releasing what nobody needs."""
    released: list[TaskState] = []
    finishes: list[str] = []
    client_releases(state, keys, cs, released, finishes)
    for ts, finish in zip(released, finishes, strict=True):
        recs[ts.key] = finish


def client_releases(
    state: SchedulerState,
    keys: Iterable[Key],
    cs: ClientState,
    released: list[TaskState],
    finishes: list[str],
) -> None:
    """``cs`` no longer wants ``keys``; append to ``released`` each task nobody
    needs any more, once, in the order of ``keys``, and its next state
    (``forgotten``, or ``released`` if other tasks depend on it) to
    ``finishes``."""
    wants_what = cs.wants_what
    for key in keys:
        ts = state.tasks.get(key)
        if ts is None:
            continue
        # One hash of the task, not two (``in`` then ``discard``).
        n = len(wants_what)
        wants_what.discard(ts)
        if len(wants_what) == n:
            continue
        ts.who_wants = without_link(ts.who_wants, cs)
        if not ts.who_wants:
            if not ts.dependents:
                released.append(ts)
                finishes.append("forgotten")
            elif ts.state != "erred" and not ts.waiters:
                released.append(ts)
                finishes.append("released")


def report_on_key(
    state: SchedulerState, ts: TaskState, cs: ClientState, stimulus_id: str
) -> None:
    """Tell ``cs`` the outcome of ``ts`` if it has one (memory or erred)."""
    if ts.state == "memory":
        state._commands.append(
            KeyInMemory(
                stimulus_id=stimulus_id,
                client=cs.client_key,
                key=ts.key,
                type=ts.type,
            )
        )
    elif ts.state == "erred":
        failing = ts.exception_blame or ts
        state._commands.append(key_erred(ts, failing, cs.client_key, stimulus_id))
