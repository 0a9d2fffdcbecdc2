"""Pausing the cyclic garbage collector around bulk work that makes no cycles.

Building or taking in a map of a million tasks makes several tracked objects
per task, none of them garbage, and each generation's threshold sets off a
collection that walks them all again. The client (``client.graph``) and the
scheduler thread (``runtime.collector``) pause the collector around such work.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["collector_paused_if"]


@contextlib.contextmanager
def collector_paused_if(pause: bool) -> Iterator[None]:
    """Pause the collector while the block runs if ``pause`` and it is on; it
    resumes however the block ends (and stays off if it was off)."""
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
