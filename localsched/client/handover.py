"""Handing over to dask.distributed: ``Client("tcp://host:8786")``.

localsched runs on one machine. A scheduler address means the user has
outgrown it: ``localsched.Client(address)`` then returns a
``distributed.Client`` connected to that address (see ``docs/outgrowing.md``),
so a script keeps working when its ``Client(...)`` line gets an address.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MISSING_DISTRIBUTED", "distributed_client"]

MISSING_DISTRIBUTED = (
    "Connecting to a dask scheduler at {where} needs dask.distributed; "
    "install it with: pip install 'localsched[dask]'"
)


def distributed_client(address: str | None, *args: Any, **kwargs: Any) -> Any:
    """A ``distributed.Client(address, *args, **kwargs)``.

    Raises
    ------
    ImportError
        distributed is not installed; the message names the extra to install.
    """
    try:
        import distributed
    except ImportError as error:
        where = address or kwargs.get("scheduler_file")
        raise ImportError(MISSING_DISTRIBUTED.format(where=repr(where))) from error
    return distributed.Client(address, *args, **kwargs)
