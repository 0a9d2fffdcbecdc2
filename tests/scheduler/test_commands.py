"""The positional twins of the commands built per task equal the dataclasses."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from localsched.scheduler import commands as c


@pytest.mark.parametrize(
    ("twin", "cls"),
    [
        (c.compute_task, c.ComputeTask),
        (c.free_keys, c.FreeKeys),
        (c.key_in_memory, c.KeyInMemory),
        (c.key_cancelled, c.KeyCancelled),
    ],
)
def test_positional_twin_sets_every_field(
    twin: Callable[..., c.Command], cls: type[c.Command]
) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    # Distinct values, one per field, in the dataclass's order: a field left
    # out, swapped or added to the class without its twin fails here.
    values: list[Any] = [f"value-{i}" for i in range(len(names))]
    built = twin(*values)
    assert type(built) is cls
    assert built == cls(**dict(zip(names, values, strict=True)))
    assert [getattr(built, name) for name in names] == values
