"""The positional twins of the commands built per task equal the dataclasses."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from localsched.scheduler import builders as b
from localsched.scheduler import commands as c


def _distinct(field: dataclasses.Field[Any], i: int) -> Any:
    """A value for ``field`` told apart by ``i``, of the field's type (the
    twins are compiled with the core, which checks their arguments' types)."""
    hint = str(field.type)
    if hint == "int":
        return 1000 + i
    if hint.startswith("tuple[float"):
        return (float(i),)
    if hint.startswith("tuple"):
        return (f"value-{i}",)
    if hint.startswith(("dict", "Mapping")):
        return {f"value-{i}": float(i)}
    return f"value-{i}"


@pytest.mark.parametrize(
    ("twin", "cls"),
    [
        (b.compute_task, c.ComputeTask),
        (b.free_keys, c.FreeKeys),
        (b.key_in_memory, c.KeyInMemory),
        (b.key_cancelled, c.KeyCancelled),
    ],
)
def test_positional_twin_sets_every_field(
    twin: Callable[..., c.Command], cls: type[c.Command]
) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    # Distinct values, one per field, in the dataclass's order: a field left
    # out, swapped or added to the class without its twin fails here.
    values = [_distinct(f, i) for i, f in enumerate(dataclasses.fields(cls))]
    built = twin(*values)
    assert type(built) is cls
    assert built == cls(**dict(zip(names, values, strict=True)))
    assert [getattr(built, name) for name in names] == values
