"""Statuses as dask's objects spell them, without importing distributed.

dask's clusters and scheduler have a ``Status`` (an ``Enum`` of strings:
``cluster.status == Status.running``); localsched's are plain strings
(``"running"``). :class:`StatusStr` is a ``str`` that also equals dask's member
of the same value, so that code and tests written either way work.
"""

from __future__ import annotations

__all__ = ["StatusStr"]


class StatusStr(str):
    """A status string, equal to dask's ``Status`` member of that value too."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        value = getattr(other, "value", other)  # an Enum member: its value
        return str.__eq__(self, value) if isinstance(value, str) else False

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__
