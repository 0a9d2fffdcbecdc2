"""Durations and byte sizes written as text, read and written as dask does.

``parse_timedelta``, ``parse_bytes`` and ``format_bytes`` give what
``dask.utils``'s functions of the same names give, errors included (the tests
compare them on generated input), without importing dask: the worker and
``import localsched`` must stay light. One deliberate difference: dask reads
``".5s"`` as 1.5 seconds (it puts a ``1`` in front of anything that does not
start with a digit, meant for a bare unit such as ``"ms"``); here it is 0.5.

Nor does this module import :mod:`datetime` or :mod:`numbers`, which
``import localsched`` does not otherwise load: a value can only be a
``timedelta`` or a third-party number if the program has imported those
modules already, so they are looked up in ``sys.modules`` instead.

>>> parse_timedelta("300ms")
0.3
>>> parse_timedelta("3", default="ms")
0.003
>>> parse_bytes("1.5 KiB")
1536
>>> format_bytes(1234567890)
'1.15 GiB'
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Literal, cast, overload

if TYPE_CHECKING:
    from datetime import timedelta

__all__ = ["format_bytes", "parse_bytes", "parse_timedelta"]

# dask's unit tables, in its order (the error message lists the time units).
_SHORT_TIME_UNITS = {
    "s": 1,
    "ms": 1e-3,
    "us": 1e-6,
    "ns": 1e-9,
    "m": 60,  # minutes, whatever the case: "1M" is a minute too
    "h": 3600,
    "d": 86400,
    "w": 604800,
}
_LONG_TIME_UNITS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 604800,
    "millisecond": 1e-3,
    "microsecond": 1e-6,
    "nanosecond": 1e-9,
}
#: Seconds per time unit, keyed by the unit in lower case.
SECONDS_PER_UNIT: dict[str, float] = {
    **_SHORT_TIME_UNITS,
    **_LONG_TIME_UNITS,
    **{name + "s": seconds for name, seconds in _LONG_TIME_UNITS.items()},
}
# Lookups lower the unit, so any case works; the message names both cases.
_VALID_TIME_UNITS = ", ".join(
    [*SECONDS_PER_UNIT, *(unit.upper() for unit in SECONDS_PER_UNIT)]
)

#: Bytes per size unit, keyed by the unit in lower case: decimal (``kB``, and
#: ``k`` for short) and binary (``KiB``, and ``Ki``); no unit means bytes.
BYTES_PER_UNIT: dict[str, int] = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgtp", start=1):
    BYTES_PER_UNIT[_letter] = BYTES_PER_UNIT[_letter + "b"] = 1000**_power
    BYTES_PER_UNIT[_letter + "i"] = BYTES_PER_UNIT[_letter + "ib"] = 1024**_power
del _power, _letter


@overload
def parse_timedelta(value: None, default: str | Literal[False] = ...) -> None: ...
@overload
def parse_timedelta(
    value: str | float | timedelta, default: str | Literal[False] = ...
) -> float: ...
def parse_timedelta(
    value: str | float | timedelta | None, default: str | Literal[False] = "seconds"
) -> float | None:
    """Seconds in a duration: dask's ``parse_timedelta``.

    Parameters
    ----------
    value : str, number, timedelta or None
        ``"300ms"``, ``"1.5 hours"``, ``"10 S"`` (spaces and the unit's case do
        not matter; a bare unit such as ``"ms"`` means one of it), a number of
        ``default`` units, or a ``datetime.timedelta``. None gives None.
    default : str or False
        The unit of a value that names none; False requires one.

    Returns
    -------
    int or float
        Seconds, as an ``int`` when whole (``parse_timedelta("3s") == 3``).

    Raises
    ------
    ValueError
        For a malformed number (negative ones included, as in dask: durations
        are not negative) or a missing unit with ``default=False``.
    KeyError
        For an unknown unit (dask raises ``KeyError`` here), naming the valid ones.
    TypeError
        For a ``default`` that is neither a string nor False, when it is needed.
    """
    if value is None:
        return None
    datetime = sys.modules.get("datetime")
    if datetime is not None and isinstance(value, datetime.timedelta):
        return _whole_if_integral(value.total_seconds())
    if _is_number(value):
        value = str(value)  # as dask: "-1" then fails below, "nan" is a bad unit
    # Not str(value): another type fails here with dask's error.
    text = cast("str", value).replace(" ", "")
    # text[0]: "" raises IndexError, as in dask. ".5s" is half a second (dask:
    # 1.5, see the module docstring).
    if not text[0].isdigit() and not (text[0] == "." and text[1:2].isdigit()):
        text = "1" + text  # a bare unit, such as "ms"
    number, unit = _split_unit(text)
    if not unit:
        if default is False:
            raise ValueError(f"Missing time unit: {text}")
        if not isinstance(default, str):
            raise TypeError(f"default must be str or False, got {default!r}")
        unit = default
    amount = float(number)
    try:
        per_unit = SECONDS_PER_UNIT[unit.lower()]
    except KeyError:
        message = f"Invalid time unit: {unit}. Valid units are: {_VALID_TIME_UNITS}"
        raise KeyError(message) from None
    return _whole_if_integral(amount * per_unit)


def parse_bytes(value: str | float) -> int:
    """Bytes in a size: dask's ``parse_bytes``.

    Parameters
    ----------
    value : str or number
        ``"100 MB"``, ``"1.5GiB"``, ``"5k"``, ``"1e6"``, ``"MiB"`` (one of it):
        spaces and case do not matter, ``k``/``kB`` are powers of 1000 and
        ``Ki``/``KiB`` powers of 1024. A number is truncated to an ``int``.

    Returns
    -------
    int
        Bytes, truncated towards zero.

    Raises
    ------
    ValueError
        ``Could not interpret '...' as a number`` or ``... as a byte unit``.
    """
    if isinstance(value, int | float):
        return int(value)
    text = value.replace(" ", "")
    if not any(char.isdigit() for char in text):
        text = "1" + text  # a bare unit, such as "MiB"
    number, unit = _split_unit(text)
    try:
        amount = float(number)
    except ValueError as e:
        raise ValueError(f"Could not interpret '{number}' as a number") from e
    try:
        per_unit = BYTES_PER_UNIT[unit.lower()]
    except KeyError as e:
        raise ValueError(f"Could not interpret '{unit}' as a byte unit") from e
    return int(amount * per_unit)


def format_bytes(n: float) -> str:
    """``"1.15 GiB"``, ``"11.77 MiB"``, ``"1.21 kiB"``, ``"12 B"``: dask's
    ``format_bytes``, binary units with two decimals from 0.9 of each unit
    (a float below that is written as it is, as in dask: ``"12.5 B"``)."""
    for prefix, size in (
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("ki", 1 << 10),
    ):
        if n >= size * 0.9:
            return f"{n / size:.2f} {prefix}B"
    return f"{n} B"


def _split_unit(text: str) -> tuple[str, str]:
    """``"1.5GiB"`` → ``("1.5", "GiB")``: the unit is the trailing letters."""
    end = len(text)
    while end and text[end - 1].isalpha():
        end -= 1
    return text[:end], text[end:]


def _is_number(value: object) -> bool:
    """Whether dask counts ``value`` as a number (``numbers.Number``)."""
    if isinstance(value, int | float | complex):
        return True
    # Any other Number registered itself through the numbers module, which
    # must then be loaded already.
    numbers = sys.modules.get("numbers")
    return numbers is not None and isinstance(value, numbers.Number)


def _whole_if_integral(seconds: float) -> float:
    """``3`` for ``3.0``, as dask returns (an infinite value raises)."""
    whole = int(seconds)
    return whole if whole == seconds else seconds
