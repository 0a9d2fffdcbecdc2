"""``examples/async_service.py``: an asyncio service that submits work per
request on an asynchronous client and awaits it; requests served at once."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from localsched import Client, LocalCluster
from tests.runtime.helpers import DEADLINE

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "async_service", ROOT / "examples" / "async_service.py"
)
assert _spec is not None
assert _spec.loader is not None
service = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(service)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_service_answers_concurrent_requests_from_tasks() -> None:
    with anyio.fail_after(DEADLINE):
        async with (
            LocalCluster(n_workers=2, threads_per_worker=1, asynchronous=True) as lc,
            Client(lc, asynchronous=True) as client,
        ):
            server = await service.start_service(client, "127.0.0.1", 0)
            host, port = server.sockets[0].getsockname()[:2]
            assert host == "127.0.0.1"  # loopback only
            async with server:
                targets = [f"/square?x={x}" for x in range(30)]
                answers = await asyncio.gather(
                    *(service.get(host, port, t) for t in targets),
                    service.get(host, port, "/sum_squares?n=200"),
                )
                assert [a[0] for a in answers] == [200] * 31
                assert [a[1]["result"] for a in answers[:30]] == [
                    x * x for x in range(30)
                ]
                assert answers[30][1]["result"] == sum(x * x for x in range(200))
                # The task's own error, with its type; an unknown route.
                status, body = await service.get(host, port, "/factorial?n=-1")
                assert (status, body["error"]) == (500, "ValueError")
                status, body = await service.get(host, port, "/nothing")
                assert status == 404
                assert "/square" in body["routes"]


def test_service_demo_runs() -> None:
    # The script imports this checkout's localsched, whatever is installed.
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), path]))}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "async_service.py"), "--demo"],
        capture_output=True,
        text=True,
        timeout=2 * DEADLINE,
        cwd=ROOT,
        env=env,
        check=True,
    )
    assert "50 requests answered: True" in done.stdout
    assert "sum_squares?n=1000 -> 200 332833500" in done.stdout
    assert "factorial?n=-1 -> 500 ValueError" in done.stdout
