"""``localsched.units`` against ``dask.utils``: the same values, the same types
(``int`` when whole) and the same errors on generated durations and sizes, plus
the examples of dask's docstrings and the one deliberate difference."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import dask.utils
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from localsched.units import (
    BYTES_PER_UNIT,
    SECONDS_PER_UNIT,
    format_bytes,
    parse_bytes,
    parse_timedelta,
)


def outcome(func: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    """What a call gives: its value and type, or its error's type and message."""
    try:
        result = func(*args)
    except Exception as e:
        return ("raises", type(e), str(e))
    return ("returns", type(result), result)


# -- generated input ------------------------------------------------------------------

UNITS = sorted(
    {*SECONDS_PER_UNIT, *BYTES_PER_UNIT, *dask.utils.timedelta_sizes}
    | {*dask.utils.byte_sizes, "sec", "min", "hr", "µs", "bytes", "foo", "e", "ki"}
)
NUMBER_TEXT = st.one_of(
    st.integers(-(10**6), 10**22).map(str),
    st.floats().map(repr),
    st.from_regex(
        r"[+-]?[0-9_]{0,3}\.?[0-9]{0,3}([eE][+-]?[0-9]{1,3})?", fullmatch=True
    ),
    st.sampled_from(["", ".", "1e400", "nan", "inf", "\u0661", "²", "0x10", "1,5"]),
)


@st.composite
def amounts(draw: st.DrawFn) -> str:
    """A number and a unit in any case, with spaces (and rarely a tab) anywhere."""
    unit = draw(st.sampled_from(UNITS))
    unit = "".join(c.upper() if draw(st.booleans()) else c for c in unit)  # "mS", "KIB"
    text = draw(NUMBER_TEXT) + unit
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from([" ", "  ", "\t"])) + text[at:]
    return text


TEXT = st.one_of(
    amounts(),
    st.text(alphabet="0123456789.eE+-_ sSmMuUnNhHdDwWkKgGtTpPiIbB", max_size=8),
    st.text(max_size=6),
)
NUMBERS = st.one_of(
    st.integers(),
    st.floats(),
    st.booleans(),
    st.decimals(),
    st.fractions(),
    st.complex_numbers(),
    st.integers(-(10**6), 10**6).map(np.int64),
    st.floats().map(np.float64),
)
DEFAULTS = st.sampled_from(
    ["seconds", "s", "ms", "MS", "hours", "w", "", "bogus", False, None, 3]
)


def leading_dot(value: Any) -> bool:
    """Whether dask reads ``value`` as ``"1" + value``, such as ``".5s"``."""
    text = value.replace(" ", "") if isinstance(value, str) else ""
    return text[:1] == "." and text[1:2].isdigit()


@given(value=st.one_of(TEXT, NUMBERS, st.timedeltas(), st.none()), default=DEFAULTS)
@example(value="", default="seconds")
@example(value="5 foos", default="seconds")
@example(value="-1", default="seconds")
@example(value=-1, default="seconds")
@example(value="10", default=False)
@example(value="10", default=None)
@example(value="1e400", default="seconds")
@example(value=".5 ms", default="seconds")
def test_parse_timedelta_is_dasks(value: Any, default: Any) -> None:
    ours = outcome(parse_timedelta, value, default)
    if not leading_dot(value):
        assert ours == outcome(dask.utils.parse_timedelta, value, default)
    else:  # dask: 1.5 for ".5s" (see units.py); ours is its "0.5s"
        text = "0" + value.replace(" ", "")
        theirs = outcome(dask.utils.parse_timedelta, text, default)
        if ours[0] == "raises":  # the message quotes the text
            ours, theirs = ours[:2], theirs[:2]
        assert ours == theirs


@given(value=st.one_of(TEXT, NUMBERS))
@example(value="")
@example(value="5 foos")
@example(value="1e400")
@example(value=float("nan"))
@example(value="-1.5 KiB")
def test_parse_bytes_is_dasks(value: Any) -> None:
    assert outcome(parse_bytes, value) == outcome(dask.utils.parse_bytes, value)


@given(n=st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False)))
@example(n=int(0.9 * 2**10))
@example(n=int(0.9 * 2**10) - 1)
def test_format_bytes_is_dasks(n: float) -> None:
    # dask annotates n as int but formats floats too: compare both.
    assert format_bytes(n) == dask.utils.format_bytes(n)  # type: ignore[arg-type]


# -- explicit cases -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "default", "seconds"),
    [
        ("3s", "seconds", 3),
        ("3.5 seconds", "seconds", 3.5),
        ("300ms", "seconds", 0.3),
        ("300 MS", "seconds", 0.3),
        ("1M", "seconds", 60),  # minutes in any case: there is no month
        ("2 hours", "seconds", 7200),
        ("1w", "seconds", 604800),
        ("ms", "seconds", 0.001),  # a bare unit: one of it
        ("10", "ms", 0.01),
        (10, "seconds", 10),
        (0.25, "seconds", 0.25),
        (timedelta(seconds=3), "seconds", 3),
        (timedelta(milliseconds=1500), "seconds", 1.5),
        (None, "seconds", None),
        (".5s", "seconds", 0.5),  # dask: 1.5
    ],
)
def test_parse_timedelta_examples(value: Any, default: Any, seconds: Any) -> None:
    result = parse_timedelta(value, default)
    assert result == seconds
    assert type(result) is type(seconds)  # int when whole, as in dask


@pytest.mark.parametrize(
    ("value", "default", "error", "message"),
    [
        ("5 foos", "seconds", KeyError, "Invalid time unit: foos. Valid units are: s,"),
        ("10", False, ValueError, "Missing time unit: 10"),
        ("10", None, TypeError, "default must be str or False, got None"),
        ("-1s", "seconds", ValueError, "could not convert string to float: '1-1'"),
        (-1, "seconds", ValueError, "could not convert"),  # no negative durations
        ("", "seconds", IndexError, ""),
        (b"1s", "seconds", TypeError, ""),
        ([1], "seconds", AttributeError, "replace"),
    ],
)
def test_parse_timedelta_errors(
    value: Any, default: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        parse_timedelta(value, default)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("value", "nbytes"),
    [
        ("100", 100),
        ("100 MB", 100_000_000),
        ("100M", 100_000_000),
        ("5kB", 5000),
        ("5.4 kB", 5400),
        ("1kiB", 1024),
        ("1.5 Gi", 3 << 29),
        ("1e6", 1_000_000),
        ("1e6 kB", 1_000_000_000),
        ("MB", 1_000_000),
        ("2PiB", 2 << 50),
        (123, 123),
        (12.9, 12),
        ("-1 KiB", -1024),
    ],
)
def test_parse_bytes_examples(value: Any, nbytes: int) -> None:
    result = parse_bytes(value)
    assert result == nbytes
    assert type(result) is int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5 foos", "Could not interpret 'foos' as a byte unit"),
        ("1.2.3 kB", "Could not interpret '1.2.3' as a number"),
    ],
)
def test_parse_bytes_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_bytes(value)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (1, "1 B"),
        (922, "0.90 kiB"),
        (1234, "1.21 kiB"),
        (12345678, "11.77 MiB"),
        (1234567890, "1.15 GiB"),
        (1234567890000, "1.12 TiB"),
        (1234567890000000, "1.10 PiB"),
    ],
)
def test_format_bytes_examples(n: int, text: str) -> None:
    assert format_bytes(n) == text


def test_units_load_neither_dask_nor_datetime_nor_numbers() -> None:
    # A timedelta or third-party number can only exist once its module is
    # loaded, so units.py looks them up in sys.modules instead of importing.
    code = (
        "import sys; from localsched.units import parse_timedelta, parse_bytes; "
        "parse_timedelta('1s'); parse_bytes('1 KiB'); "
        "print(sorted({'dask', 'datetime', 'numbers'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
