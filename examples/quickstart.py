"""localsched in one minute: the dask.distributed API on local worker processes.

    python examples/quickstart.py

Swap the import for ``from distributed import Client, as_completed`` and the
script runs unchanged on dask.distributed.
"""

from __future__ import annotations

import time

from localsched import Client, as_completed


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def slow_square(x: int) -> int:
    time.sleep(0.05)  # stands for real work
    return x * x


def fails(x: int) -> int:
    raise ValueError(f"cannot handle {x}")


def main() -> None:
    started = time.perf_counter()
    with Client() as client:
        print(client)
        print(f"cluster up in {time.perf_counter() - started:.2f} s")

        future = client.submit(inc, 10)
        print("inc(10) =", future.result())

        tick = time.perf_counter()
        total = client.submit(sum, client.map(inc, range(10_000)))
        print(
            f"sum of 10,000 tasks = {total.result()} "
            f"in {time.perf_counter() - tick:.2f} s"
        )

        a, b = client.submit(inc, 1), client.submit(inc, 2)
        print("add(inc(1), inc(2)) =", client.submit(add, a, b).result())

        squares = client.map(slow_square, range(8))
        done = [f.result() for f in as_completed(squares)]
        print("squares as they completed:", done)

        try:
            client.submit(fails, 3).result()
        except ValueError as error:
            print("the task's own exception comes back:", repr(error))

    print(f"closed; whole run {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
