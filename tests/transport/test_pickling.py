"""Code pickled by value keeps its file name (and a cell's lines travel)."""

from __future__ import annotations

import linecache
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from localsched.transport import pickling

SOURCE = """\
def outer(n):
    square = lambda x: x * x
    def inner(m):
        return [square(i) for i in range(m)]
    return inner(n)
"""


@pytest.fixture
def by_value_module(tmp_path: Path) -> Iterator[types.ModuleType]:
    """A module with a real file, registered with cloudpickle by value."""
    path = tmp_path / "user_code_by_value.py"
    path.write_text(SOURCE)
    module = types.ModuleType("user_code_by_value")
    module.__file__ = str(path)
    exec(compile(SOURCE, str(path), "exec"), module.__dict__)
    sys.modules[module.__name__] = module
    cloudpickle.register_pickle_by_value(module)
    try:
        yield module
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        del sys.modules[module.__name__]


def _code_filenames(code: types.CodeType) -> list[str]:
    names = [code.co_filename]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += _code_filenames(const)
    return names


def test_by_value_function_keeps_file_name_of_every_nested_code_object(
    by_value_module,
):
    data = pickling.dumps(by_value_module.outer)
    del sys.modules[by_value_module.__name__]  # loads must rebuild it by value
    try:
        loaded = pickle.loads(data)
    finally:
        sys.modules[by_value_module.__name__] = by_value_module
    assert loaded is not by_value_module.outer
    names = _code_filenames(loaded.__code__)
    assert len(names) == 4  # outer, the lambda, inner, the comprehension
    assert set(names) == {by_value_module.__file__}
    assert loaded(3) == [0, 1, 4]


def test_plain_cloudpickle_is_what_this_replaces(by_value_module):
    # Documents the behaviour being fixed: with cloudpickle >= 3.1 the file name
    # is lost; with 3.0 it was kept. Either way ours keeps it.
    data = cloudpickle.dumps(by_value_module.outer)  # noqa: TID251 (the point)
    name = pickle.loads(data).__code__.co_filename
    assert name in {by_value_module.__file__, "<dynamic-code>"}


def test_cell_code_keeps_cell_name_and_brings_its_lines():
    cell = "<ipython-input-7-0123456789ab>"
    source = "def from_cell(x):\n    raise ValueError(x)\n"
    linecache.cache[cell] = (len(source), None, source.splitlines(True), cell)
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(source, cell, "exec"), namespace)
    function = namespace["from_cell"]
    assert isinstance(function, types.FunctionType)
    data = pickling.dumps(function)
    del linecache.cache[cell]  # as in a worker, which never saw the cell
    loaded = pickle.loads(data)
    assert loaded.__code__.co_filename == cell
    assert linecache.getline(cell, 2) == "    raise ValueError(x)\n"


def test_lines_of_one_cell_are_written_once_per_pickle():
    cell = "<ipython-input-8-feedfacecafe>"
    source = "def a():\n    return lambda: 1\n\ndef b():\n    return 2\n" + "#\n" * 500
    linecache.cache[cell] = (len(source), None, source.splitlines(True), cell)
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(source, cell, "exec"), namespace)
    one = len(pickling.dumps(namespace["a"]))
    both = len(pickling.dumps([namespace["a"], namespace["b"]]))
    assert both - one < 1000  # b's code, not another copy of 500 lines
