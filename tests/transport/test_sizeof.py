"""``transport/sizeof.py``: results are sized as dask's ``sizeof`` sizes them."""

from __future__ import annotations

import array
from typing import Any

import pytest

from localsched.transport import sizeof as sizeof_module
from localsched.transport.sizeof import DEFAULT_SIZE, sizeof

np = pytest.importorskip("numpy")
dask_sizeof = pytest.importorskip("dask.sizeof").sizeof

# Values whose dask size does not depend on sampling (ten items or fewer, or
# items of equal size).
VALUES: list[Any] = [
    1,
    1.5,
    "text",
    b"x" * 1000,
    bytearray(100),
    memoryview(b"abcdef"),
    array.array("d", [1.0, 2.0, 3.0]),
    [1, 2, 3],
    (1, "a", b"bb"),
    {1, 2},
    frozenset({"a"}),
    {"a": 1, "b": [1, 2]},
    list(range(100)),
    {i: i for i in range(50)},
    np.arange(1000),
    np.broadcast_to(np.arange(10), (1000, 10)),
    [np.ones(10), np.ones(10)],
    None,
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_sizes_without_dask_follow_dask_s_rules(value: Any) -> None:
    # The worker's own rules, used while it has not imported dask.
    assert sizeof_module._sizeof(value) == dask_sizeof(value)


def test_dask_s_sizeof_is_used_once_dask_is_imported() -> None:
    class Sized:
        pass

    seen = []

    @dask_sizeof.register(Sized)
    def _size(value: Sized) -> int:
        seen.append(value)
        return 12345

    value = Sized()
    assert sizeof(value) == 12345
    assert seen == [value]


def test_a_failing_size_counts_as_dask_s_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def __sizeof__(self) -> int:
            raise RuntimeError("no size")

    assert sizeof(Broken()) == DEFAULT_SIZE
    assert "Sizeof calculation failed" in caplog.text
