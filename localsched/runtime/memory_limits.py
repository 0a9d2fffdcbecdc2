"""How much memory a worker may use: dask's ``memory_limit`` semantics.

Used by ``LocalCluster`` to turn ``memory_limit`` into bytes per worker, and by
:mod:`localsched.runtime.memory` for the machine's cap on the workers' budget.
"""

from __future__ import annotations

import logging

from localsched.units import format_bytes, parse_bytes

__all__ = ["parse_memory_limit", "system_memory_limit"]

logger = logging.getLogger("localsched.runtime.memory")


def system_memory_limit() -> int:
    """The machine's memory as dask counts it: total RAM, capped by a cgroup
    limit and by ``RLIMIT_RSS`` (``distributed.system.memory_limit``)."""
    import resource

    import psutil

    limit = int(psutil.virtual_memory().total)
    for path in (
        "/sys/fs/cgroup/memory.max",  # cgroup v2
        "/sys/fs/cgroup/memory.high",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroup v1
        "/sys/fs/cgroup/memory/memory.soft_limit_in_bytes",
    ):
        try:
            with open(path) as f:
                value = int(f.read())
        except (OSError, ValueError):  # "max" (no limit) fails int() too
            continue
        if value > 0:
            limit = min(limit, value)
    hard = resource.getrlimit(resource.RLIMIT_RSS)[1]
    if 0 < hard < limit:
        limit = hard
    return limit


def parse_memory_limit(
    limit: str | float | None,
    nthreads: int,
    total_cores: int,
    system_limit: int | None = None,
) -> int:
    """Bytes per worker for ``memory_limit``, with dask's semantics; 0: no limit.

    ``"auto"``: the machine's memory times ``nthreads / total_cores`` (capped at
    1); a number up to 1: that fraction of the machine's memory; a larger number
    or a string such as ``"4GiB"`` or ``"300 MB"``: bytes; 0 or None: no limit.
    A limit above the machine's memory is capped at it, with a warning.

    >>> parse_memory_limit("1.5 KiB", 1, 4)
    1536
    >>> parse_memory_limit(0.5, 1, 4, system_limit=1000)
    500
    """
    if limit is None:
        return 0
    system = system_memory_limit() if system_limit is None else system_limit
    original = limit
    if limit == "auto":
        return int(system * min(1.0, nthreads / max(total_cores, 1)))
    if isinstance(limit, str):
        try:
            limit = float(limit)
        except ValueError:
            limit = parse_bytes(limit)
    if isinstance(limit, float) and limit <= 1:
        limit = limit * system
    nbytes = int(limit)
    if nbytes > system:
        logger.warning(
            "Ignoring memory_limit=%r: more than the %s of memory of this machine",
            original,
            format_bytes(system),
        )
        return system
    return max(nbytes, 0)
