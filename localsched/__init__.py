"""localsched: dask.distributed's scheduler for one machine."""

from localsched.errors import KilledWorker

__all__ = ["KilledWorker"]
