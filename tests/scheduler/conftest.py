from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from localsched.scheduler.state import SchedulerState
from localsched.scheduler.tasks import Key


@pytest.fixture
def state() -> Iterator[SchedulerState]:
    """An empty validating core; every invariant is checked again at teardown."""
    s = SchedulerState(validate=True, transition_counter_max=100_000)
    yield s
    s.validate_state()


class RecordingHooks:
    """A plugin stand-in: records every hook call in order."""

    def __init__(self, state: SchedulerState | None = None) -> None:
        self.state = state
        self.transitions: list[tuple[Key, str, str, str, dict[str, Any]]] = []
        self.notifications: list[tuple[str, dict[str, Any]]] = []
        #: key -> whether ``state.tasks`` held the key while its hook ran.
        self.visible_during_hook: dict[Key, bool] = {}

    def transition(
        self,
        key: Key,
        start: str,
        finish: str,
        stimulus_id: str,
        kwargs: dict[str, Any],
    ) -> None:
        self.transitions.append((key, start, finish, stimulus_id, dict(kwargs)))
        if self.state is not None and finish == "forgotten":
            ts = self.state.tasks.get(key)
            self.visible_during_hook[key] = ts is not None and ts.state == "forgotten"

    def notify(self, hook: str, **kwargs: Any) -> None:
        self.notifications.append((hook, kwargs))


@pytest.fixture
def hooks(state: SchedulerState) -> RecordingHooks:
    """A recorder installed as ``state``'s hooks and transition hook."""
    recorder = RecordingHooks(state)
    state.hooks = recorder
    state.transition_hook = recorder.transition
    return recorder
