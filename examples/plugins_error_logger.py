"""The ``ErrorLogger`` worker plugin from dask's ``WorkerPlugin`` docs.

    python examples/plugins_error_logger.py

The plugin is pickled and set up in every worker process; when a task fails
there, its ``transition`` hook logs the exception (to the worker's stderr,
which is this terminal). With dask.distributed, import ``Client`` and
``WorkerPlugin`` from ``distributed`` instead.
"""

from __future__ import annotations

import logging

from localsched import Client, WorkerPlugin


class ErrorLogger(WorkerPlugin):
    name = "error-logger"

    def __init__(self, logger):
        self.logger = logger

    def setup(self, worker):
        self.worker = worker
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "error":
            exc = self.worker.exceptions[key]
            self.logger.error("Task '%s' has failed with exception: %s", key, exc)


def check(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(f"{x} is a multiple of three")
    return x


def main() -> None:
    with Client(n_workers=2, threads_per_worker=1) as client:
        plugin = ErrorLogger(logging.getLogger("error-logger"))
        client.register_plugin(plugin)
        futures = [client.submit(check, x, key=f"check-{x}") for x in range(1, 7)]
        for future in futures:
            if future.exception() is not None:
                print(f"{future.key} failed: {future.exception()}")
            else:
                print(f"{future.key} = {future.result()}")
        client.unregister_worker_plugin("error-logger")


if __name__ == "__main__":
    main()
