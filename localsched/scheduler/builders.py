"""Positional constructors of the commands the core builds per task.

Calling a dataclass with keywords costs about three times building the same
record with ``object.__new__`` and slot stores: the class call packs the
keywords into a dict for ``__init__`` to unpack. The core builds two or three
commands per task, so the ones built per task have these twins
(``tests/scheduler/test_commands.py`` checks they set every field). They live
apart from ``commands`` because this module is compiled with the core
(``setup.py``) and ``commands``' dataclasses are not.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from localsched.scheduler.commands import (
    ComputeTask,
    FreeKeys,
    KeyCancelled,
    KeyInMemory,
)

Key = Hashable

_new = object.__new__


def compute_task(
    stimulus_id: str,
    worker: str,
    key: Key,
    run_spec: object,
    priority: tuple[float, ...],
    dependencies: tuple[Key, ...],
    resource_restrictions: dict[str, float] | None,
    annotations: Mapping[str, Any],
    run_id: int,
) -> ComputeTask:
    """``ComputeTask(...)``, positionally and cheaper (see above)."""
    cmd: ComputeTask = _new(ComputeTask)
    cmd.stimulus_id = stimulus_id
    cmd.worker = worker
    cmd.key = key
    cmd.run_spec = run_spec
    cmd.priority = priority
    cmd.dependencies = dependencies
    cmd.resource_restrictions = resource_restrictions
    cmd.annotations = annotations
    cmd.run_id = run_id
    return cmd


def free_keys(stimulus_id: str, worker: str, keys: tuple[Key, ...]) -> FreeKeys:
    """``FreeKeys(...)``, positionally and cheaper (see above)."""
    cmd: FreeKeys = _new(FreeKeys)
    cmd.stimulus_id = stimulus_id
    cmd.worker = worker
    cmd.keys = keys
    return cmd


def key_in_memory(
    stimulus_id: str, client: str, key: Key, type: str | None
) -> KeyInMemory:
    """``KeyInMemory(...)``, positionally and cheaper (see above)."""
    cmd: KeyInMemory = _new(KeyInMemory)
    cmd.stimulus_id = stimulus_id
    cmd.client = client
    cmd.key = key
    cmd.type = type
    return cmd


def key_cancelled(stimulus_id: str, client: str, key: Key, reason: str) -> KeyCancelled:
    """``KeyCancelled(...)``, positionally and cheaper (see above)."""
    cmd: KeyCancelled = _new(KeyCancelled)
    cmd.stimulus_id = stimulus_id
    cmd.client = client
    cmd.key = key
    cmd.reason = reason
    return cmd
