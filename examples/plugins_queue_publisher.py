"""The RabbitMQ example of dask's plugin docs, with a ``multiprocessing`` queue.

    python examples/plugins_queue_publisher.py

A scheduler plugin publishes every task transition to a queue; a consumer in
another process prints them (with RabbitMQ it would be on another machine).
As in dask's example, the plugin is installed by a preload script's
``dask_setup(scheduler)``: this very file, passed as ``preload=[__file__]``.
``dask_teardown(scheduler)`` ends the consumer when the cluster closes.
"""

from __future__ import annotations

import json
import multiprocessing
import sys

from localsched import Client, LocalCluster, SchedulerPlugin

_consumer = None
_queue = None


class QueuePlugin(SchedulerPlugin):
    name = "queue-publisher"

    def __init__(self, queue):
        self.queue = queue

    def transition(self, key, start, finish, *args, **kwargs):
        message = {"key": str(key), "start": start, "finish": finish}
        self.queue.put(json.dumps(message))


def say(line: str) -> None:
    """Print ``line`` in one write: this process and the consumer share stdout,
    and ``print`` may write the text and its newline separately (unbuffered
    output), which can split a line between the two."""
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


def consume(queue) -> None:
    """The consumer process: print each message until the ``None`` sentinel."""
    while (body := queue.get()) is not None:
        message = json.loads(body)
        say(f"transition {message['key']}: {message['start']} -> {message['finish']}")
    say("consumer done")


def dask_setup(scheduler) -> None:
    global _consumer, _queue
    context = multiprocessing.get_context("spawn")  # never fork a threaded process
    _queue = context.Queue()
    _consumer = context.Process(target=consume, args=(_queue,))
    _consumer.start()
    scheduler.add_plugin(QueuePlugin(_queue))


def dask_teardown(scheduler) -> None:
    _queue.put(None)
    _consumer.join()


def inc(x: int) -> int:
    return x + 1


def main() -> None:
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, preload=[__file__])
    with cluster, Client(cluster) as client:
        x = client.submit(inc, 1, key="x")
        y = client.submit(inc, x, key="y")
        say(f"y = {y.result()}")
    # Closing the cluster ran dask_teardown: every message has been printed.
    say("cluster closed")


if __name__ == "__main__":
    main()
