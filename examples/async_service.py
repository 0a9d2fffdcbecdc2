"""A small asyncio web service that runs each request's work on localsched.

Plain ``asyncio`` (no web framework): each HTTP request submits tasks with an
asynchronous client and awaits them, so one event loop serves many requests at
once while the work runs in the cluster's worker processes.

    python examples/async_service.py            # serve on http://127.0.0.1:8080
    curl 'http://127.0.0.1:8080/square?x=12'    # {"x": 12, "result": 144}
    curl 'http://127.0.0.1:8080/sum_squares?n=100'
    python examples/async_service.py --demo     # start, send 50 requests, stop

Routes: ``/square?x=N`` (one task), ``/sum_squares?n=N`` (``n`` tasks and one
that sums their results on a worker), ``/factorial?n=N`` (an error, such as
``n=-1``, answers 500 with the task's exception type). The tasks are functions
of the standard library, so the workers need nothing of this file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import operator
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

from localsched import Client, LocalCluster

Route = Callable[[Client, dict[str, str]], Awaitable[dict[str, object]]]


async def square(client: Client, query: dict[str, str]) -> dict[str, object]:
    x = int(query["x"])
    return {"x": x, "result": await client.submit(operator.mul, x, x)}


async def sum_squares(client: Client, query: dict[str, str]) -> dict[str, object]:
    n = int(query["n"])
    squares = client.map(operator.mul, range(n), range(n))
    total = client.submit(sum, squares)  # summed where the squares are
    return {"n": n, "result": await total}


async def factorial(client: Client, query: dict[str, str]) -> dict[str, object]:
    n = int(query["n"])
    return {"n": n, "result": await client.submit(math.factorial, n)}


ROUTES: dict[str, Route] = {
    "/square": square,
    "/sum_squares": sum_squares,
    "/factorial": factorial,
}


async def answer(client: Client, target: str) -> tuple[int, dict[str, object]]:
    """Status and JSON body for a request target such as ``/square?x=3``."""
    url = urlsplit(target)
    route = ROUTES.get(url.path)
    if route is None:
        return 404, {"error": f"no route {url.path}", "routes": sorted(ROUTES)}
    query = {key: values[-1] for key, values in parse_qs(url.query).items()}
    try:
        return 200, await route(client, query)
    except (KeyError, ValueError) as exc:  # a missing or bad parameter, or
        # the task's own error (math.factorial(-1) raises ValueError)
        return 500, {"error": type(exc).__name__, "message": str(exc)}


async def handle(
    client: Client, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One HTTP/1.0-style exchange: read the request line and headers, answer."""
    try:
        request_line = (await reader.readline()).decode("latin-1").split()
        while (await reader.readline()).strip():  # the headers: not needed here
            pass
        if len(request_line) < 2 or request_line[0] != "GET":
            status, body = 405, {"error": "only GET"}
        else:
            status, body = await answer(client, request_line[1])
        payload = json.dumps(body).encode()
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}
        writer.write(
            f"HTTP/1.0 {status} {reason.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
    finally:
        writer.close()


async def start_service(
    client: Client, host: str = "127.0.0.1", port: int = 8080
) -> asyncio.Server:
    """Serve the routes with ``client`` (an asynchronous ``Client``)."""
    return await asyncio.start_server(
        lambda reader, writer: handle(client, reader, writer), host, port
    )


async def get(host: str, port: int, target: str) -> tuple[int, dict[str, object]]:
    """A minimal HTTP GET for the demo and the tests: status and JSON body."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {target} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


async def main(port: int, demo: bool) -> None:
    async with (
        LocalCluster(n_workers=2, threads_per_worker=1, asynchronous=True) as cluster,
        Client(cluster, asynchronous=True) as client,
    ):
        server = await start_service(client, "127.0.0.1", 0 if demo else port)
        host, bound = server.sockets[0].getsockname()[:2]
        async with server:
            if not demo:
                print(f"serving on http://{host}:{bound} (Ctrl-C stops)")
                await server.serve_forever()
                return
            # 50 requests at once: the loop serves them all while tasks run.
            targets = [f"/square?x={x}" for x in range(50)]
            answers = await asyncio.gather(*(get(host, bound, t) for t in targets))
            results = [body["result"] for _, body in answers]
            print(f"50 requests answered: {results == [x * x for x in range(50)]}")
            status, body = await get(host, bound, "/sum_squares?n=1000")
            print(f"sum_squares?n=1000 -> {status} {body['result']}")
            status, body = await get(host, bound, "/factorial?n=-1")
            print(f"factorial?n=-1 -> {status} {body['error']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--demo", action="store_true", help="send 50 requests, stop")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the service stops
        asyncio.run(main(args.port, args.demo))
