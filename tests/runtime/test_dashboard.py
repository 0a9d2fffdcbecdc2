"""The live web dashboard (opt-in, loopback, token) and the notebook panel.

Pages are loaded in a real headless Chromium when one is installed (Debian's
``chromium``); those tests are skipped, with the reason, without it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import nbclient
import nbformat
import psutil
import pytest
from rich.console import Console

from localsched import Client, LocalCluster, reprs, wait
from localsched.diagnostics.web_dashboard import parse_dashboard_address
from tests.runtime import helpers

pytest.importorskip("bokeh")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium (apt-get install chromium)"
)


def inc(x: int) -> int:
    return x + 1


def fail(x: int) -> None:
    raise ValueError(x)


def _listening() -> set[tuple[str, int]]:
    """The (ip, port) this process listens on."""
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def _get(link: str, path: str | None = None, headers: dict[str, str] | None = None):
    """GET ``path`` (default: the link's path and query): status, headers, body."""
    url = urlsplit(link)
    target = path if path is not None else f"{url.path}?{url.query}"
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request("GET", target, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _token(link: str) -> str:
    return link.rsplit("token=", 1)[1]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- off by default -------------------------------------------------------------------


def test_nothing_listens_when_the_dashboard_is_off():
    before = _listening()
    with Client(n_workers=1, threads_per_worker=1) as client:
        assert client.submit(inc, 1).result(timeout=helpers.DEADLINE) == 2
        assert _listening() - before == set()
        assert client.dashboard_link is None
        assert client.cluster.dashboard_link is None
        assert "dashboard" not in repr(client)


def test_a_missing_bokeh_is_named_before_anything_starts(monkeypatch):
    monkeypatch.setitem(sys.modules, "bokeh", None)
    threads = set(threading.enumerate())
    with pytest.raises(ImportError, match=r"localsched\[dashboard\]"):
        LocalCluster(n_workers=1, dashboard_address=":0")
    assert set(threading.enumerate()) <= threads


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (":8787", ("127.0.0.1", 8787)),
        (8787, ("127.0.0.1", 8787)),
        ("8787", ("127.0.0.1", 8787)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:8787", ("0.0.0.0", 8787)),
        ("[::1]:8787", ("::1", 8787)),
        ("http://127.0.0.1:8787", ("127.0.0.1", 8787)),
    ],
)
def test_an_address_without_host_means_loopback(address, expected):
    assert parse_dashboard_address(address) == expected


# -- on -------------------------------------------------------------------------------


def test_the_dashboard_listens_on_loopback_and_refuses_requests_without_the_token():
    before = _listening()
    with Client(n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        link = client.dashboard_link
        assert link == client.cluster.dashboard_link
        port = urlsplit(link).port
        assert link == f"http://127.0.0.1:{port}/status?token={_token(link)}"
        assert _listening() - before == {("127.0.0.1", port)}

        for path in (
            "/status",
            "/workers",
            "/json/summary.json",
            "/static/js/bokeh.min.js",
        ):
            status, _, body = _get(link, path)
            assert status == 403, path
            assert b"token" in body
            status, _, _ = _get(link, f"{path}?token=wrong")
            assert status == 403, path

        status, headers, body = _get(link)
        assert status == 200
        # The figures' data sources poll the JSON endpoints.
        for name in ("task-stream", "progress", "workers"):
            assert f"/json/{name}.json".encode() in body
        cookie = headers["Set-Cookie"].split(";")[0]
        assert cookie == f"localsched-dashboard-{port}={_token(link)}"
        assert "HttpOnly" in headers["Set-Cookie"]
        # The page's own requests carry the cookie, or the header.
        assert _get(link, "/json/summary.json", {"Cookie": cookie})[0] == 200
        token_header = {"X-Localsched-Token": _token(link)}
        assert _get(link, "/static/js/bokeh.min.js", token_header)[0] == 200
        assert _get(link, "/static/../../__init__.py", token_header)[0] == 404


def test_a_port_in_use_makes_the_dashboard_take_another_and_say_so():
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.warns(UserWarning, match=f"Port {port} is already in use") as said:
            client = Client(n_workers=1, dashboard_address=f":{port}")
        assert len(said) == 1
        assert said[0].filename == __file__  # names the user's line
        with client:
            link = client.dashboard_link
            assert urlsplit(link).port != port
            assert _get(link)[0] == 200
    finally:
        taken.close()


def test_closing_the_cluster_stops_the_server_and_frees_its_port():
    fds = _open_fds()
    cluster = LocalCluster(n_workers=1, dashboard_address=":0")
    link = cluster.dashboard_link
    port = urlsplit(link).port
    assert _get(link)[0] == 200
    assert any(t.name.startswith("localsched-dashboard") for t in threading.enumerate())
    cluster.close()
    assert cluster.dashboard_link is None
    assert not any(
        t.name.startswith("localsched-dashboard") for t in threading.enumerate()
    )
    with pytest.raises(ConnectionRefusedError):
        _get(link)
    again = socket.socket()
    try:
        # As any server binds (the closed connections' TIME_WAIT stays): this
        # fails on Linux while something still listens on the port.
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()
    finally:
        again.close()
    assert helpers.poll(lambda: _open_fds() <= fds), (_open_fds(), fds)


def test_the_link_is_in_every_repr():
    with Client(n_workers=1, dashboard_address=":0") as client:
        link = client.dashboard_link
        assert f"dashboard={link}" in repr(client)
        assert f"dashboard={link}" in repr(client.cluster)
        assert f'href="{link}"' in client._repr_html_()
        assert f'href="{link}"' in client.cluster._repr_html_()
        console = Console(record=True, width=200)
        console.print(client)
        assert link in console.export_text()


def test_the_data_matches_the_scheduler_and_has_one_bar_per_task_run():
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=":0") as client:
        good = client.map(inc, range(30))
        bad = client.map(fail, range(2))
        wait(good + bad, timeout=helpers.DEADLINE)
        link = client.dashboard_link
        data = client.cluster._dashboard.data

        def read(name: str) -> dict:
            status, _, body = _get(link, f"/json/{name}.json?token={_token(link)}")
            assert status == 200
            return json.loads(body)

        assert helpers.poll(lambda: read("summary")["tasks_in_stream"] == 32)
        snapshot = reprs.cluster_snapshot(client.cluster)
        summary = read("summary")
        assert summary["tasks"] == snapshot.task_states == {"memory": 30, "erred": 2}
        assert summary["workers"] == 2
        assert summary["threads"] == 2
        stream = read("task-stream")
        assert sorted(stream["key"]) == sorted(str(f.key) for f in good + bad)
        assert stream["status"].count("error") == 2
        assert len(set(stream["row"])) <= 2 + 1  # one row per worker thread
        progress = read("progress")
        rows = {
            prefix: (progress["done"][i], progress["erred"][i])
            for i, prefix in enumerate(progress["prefix"])
        }
        assert rows == {"inc": (30, 0), "fail": (0, 2)}
        workers = read("workers")
        assert sorted(workers["address"]) == sorted(client.cluster.scheduler.workers)
        assert sum(workers["in_memory"]) == 30
        events = read("events")
        assert events["topic"].count("worker-added") == 2
        assert data.tasks_seen == 32


# -- in a browser ----------------------------------------------------------------------


def _chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            # Runs the page's timers: the data sources' first polls happen.
            "--virtual-time-budget=4000",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _console_messages(stderr: str) -> list[str]:
    """Console messages but the one the page logs on purpose.

    Chromium logs every console message (errors and failed loads included) as
    ``INFO:CONSOLE...``, without the level. The pages set bokeh's log level to
    ``warn`` (its info messages are routine), and bokeh says so at info level
    first: that message is the only one allowed.
    """
    return [
        line
        for line in stderr.splitlines()
        if ":CONSOLE" in line and "setting log level to: 'warn'" not in line
    ]


def _span(dom: str, name: str) -> str:
    match = re.search(rf'<span id="{name}">(.*?)</span>', dom)
    assert match, dom[:2000]
    return match.group(1)


@needs_chromium
@pytest.mark.timeout(240)
def test_pages_load_in_a_browser_without_errors_and_show_the_schedulers_numbers(
    tmp_path,
):
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=":0") as client:
        futures = client.map(inc, range(25))
        wait(futures, timeout=helpers.DEADLINE)
        assert helpers.poll(
            lambda: client.cluster._dashboard.data.summary()["tasks_in_stream"] == 25
        )
        link = client.dashboard_link
        for page in ("status", "workers", "events"):
            result = _chromium(
                tmp_path, link.replace("/status", f"/{page}"), "--dump-dom"
            )
            assert result.returncode == 0, result.stderr[-2000:]
            assert _console_messages(result.stderr) == [], page
            dom = result.stdout
            assert _span(dom, "status") == "running"
            assert _span(dom, "workers") == "2"
            assert _span(dom, "threads") == "2"
            assert _span(dom, "tasks") == "memory 25"
            assert _span(dom, "tasks_in_stream") == "25"
            assert "bk-root" in dom or "data-root-id" in dom  # bokeh rendered here

        # The control: a page without its token is refused and says so.
        refused = _chromium(tmp_path, link.split("?")[0], "--dump-dom")
        assert "403 Forbidden" in refused.stdout


# -- in a notebook ---------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_the_notebook_panel_updates_in_place_to_the_final_state(tmp_path):
    cells = [
        "from localsched import Client\n"
        "client = Client(n_workers=2, threads_per_worker=1)",
        "panel = client.dashboard(interval=0.2)",
        "import threading, time\n"
        "def slow_inc(x):\n"
        "    import time\n"
        "    threading.Event().wait(0.01)  # 10 ms of work to watch\n"
        "    return x + 1\n"
        "futures = client.map(slow_inc, range(20))\n"
        "total = sum(client.gather(futures))\n"
        # The panel's thread draws the finished state while this cell runs.
        "deadline = time.monotonic() + 20\n"
        "while 'memory 20' not in panel.last_text and time.monotonic() < deadline:\n"
        "    threading.Event().wait(0.05)\n"
        "total",
        "type(panel).__name__, client.dashboard_link",
        "client.close()",
    ]
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in cells]
    )
    nbclient.NotebookClient(
        notebook,
        timeout=60,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    code = notebook.cells
    for cell in code:
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.outputs
    # One display, updated in place (by display id) to the final state.
    (panel,) = [o for o in code[1].outputs if "data" in o]
    assert panel["output_type"] == "display_data"
    html = panel["data"]["text/html"]
    assert "slow_inc" in html
    assert "20/20" in html
    assert html.count("<rect") == 20  # one bar per task run in the task stream
    assert "memory 20" in panel["data"]["text/plain"]
    (total,) = [o for o in code[2].outputs if "data" in o]
    assert total["data"]["text/plain"] == str(sum(range(1, 21)))
    (answer,) = [o for o in code[3].outputs if "data" in o]
    assert answer["data"]["text/plain"] == "('NotebookDashboard', None)"
