"""The live web dashboard: opt-in, on 127.0.0.1, behind a token.

``LocalCluster(dashboard_address=":8787")`` starts a :class:`DashboardServer`;
without ``dashboard_address`` nothing listens. The server is the standard
library's ``ThreadingHTTPServer`` in one thread of the user's process::

    browser ──GET /status?token=…──▶ page: bokeh figures on AjaxDataSources
            ◀── Set-Cookie (token) ─
            ──GET /json/<name>.json (cookie) every second──▶ LiveData.*_columns()
                                                             └─ one sample on the
                                                                scheduler thread

The pages are static HTML built once (bokeh ``components`` + a header); each
figure's data source polls a JSON endpoint, so nothing holds a connection
open (no websocket, no event loop thread) and closing the cluster stops the
server, joins its threads and frees the port at once. bokeh's JavaScript is
served from the installed package (``/static/``): the pages work offline.

Security, as Jupyter does: every request needs the token, given in the link's
query (then kept in a cookie for the pages' own requests), the cookie, or the
``X-Localsched-Token`` header; anything else gets 403. A host left out of the
address (``":8787"``, ``8787``) means 127.0.0.1, never every interface: only an
explicit host (``"0.0.0.0:8787"``) listens beyond this machine.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import html
import json
import logging
import mimetypes
import os
import secrets
import socket
import sys
import threading
import warnings
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from localsched.diagnostics.live_data import LiveData
from localsched.diagnostics.live_figures import FIGURES, table_figure

#: dask's default ``distributed.dashboard.link``.
_DEFAULT_LINK = "{scheme}://{host}:{port}/status"

logger = logging.getLogger("localsched.diagnostics.web_dashboard")

#: Milliseconds between two polls of a figure's data.
POLL_MS = 1000
#: Seconds a request's socket may stay silent before the server drops it.
REQUEST_TIMEOUT = 10.0
TOKEN_HEADER = "X-Localsched-Token"
PAGES = ("status", "workers", "events")

#: (field, title, relative width) of the workers and events tables.
WORKER_COLUMNS = [
    ("worker", "worker", 80),
    ("status", "status", 60),
    ("pid", "pid", 60),
    ("nthreads", "threads", 50),
    ("processing", "processing", 60),
    ("executing", "executing", 60),
    ("in_memory", "results", 60),
    ("memory_text", "memory", 300),
    ("address", "address", 120),
]
EVENT_COLUMNS = [
    ("time", "time", 60),
    ("topic", "topic", 120),
    ("message", "message", 500),
]


def require_bokeh() -> None:
    """Raise an ``ImportError`` naming the extra when bokeh is missing."""
    try:
        import bokeh  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "The web dashboard needs bokeh: pip install 'localsched[dashboard]'"
        ) from exc


def parse_dashboard_address(address: str | int) -> tuple[str, int]:
    """``(host, port)`` of a ``dashboard_address``, as dask spells them.

    ``8787``, ``"8787"`` and ``":8787"`` have no host: they listen on
    127.0.0.1 (dask would listen on every interface). ``"host:port"`` and
    ``"[::1]:8787"`` listen where they say.

    >>> parse_dashboard_address(":8787")
    ('127.0.0.1', 8787)
    >>> parse_dashboard_address("0.0.0.0:0")
    ('0.0.0.0', 0)
    """
    if isinstance(address, int):
        return "127.0.0.1", address
    text = str(address).strip()
    for scheme in ("http://", "https://", "tcp://"):
        text = text.removeprefix(scheme)
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port) if port else 0
    except ValueError:
        raise ValueError(f"bad dashboard_address {address!r}: no port") from None
    if not 0 <= number < 65536:
        raise ValueError(f"bad dashboard_address {address!r}: port out of range")
    return host, number


class _Server(ThreadingHTTPServer):
    # Request threads are joined at ``server_close`` (no daemon threads left
    # behind), and each request is short: HTTP/1.0, one request per connection.
    daemon_threads = False
    block_on_close = True
    dashboard: DashboardServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # To the package's logger, not a traceback on the user's stderr.
        logger.exception("dashboard request from %s failed", client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class DashboardServer:
    """The web dashboard of one cluster; see the module docstring.

    Parameters
    ----------
    cluster
        The ``LocalCluster`` to show.
    address
        ``dashboard_address``: ``":8787"``, ``8787``, ``"127.0.0.1:0"``, ...
    """

    def __init__(self, cluster: Any, address: str | int) -> None:
        require_bokeh()
        host, port = parse_dashboard_address(address)
        self.token = secrets.token_urlsafe(24)
        self.data = LiveData(cluster)
        self.data.start()
        self._server = _bind(host, port)
        self._server.dashboard = self
        self.host = host
        self.port = int(self._server.server_address[1])
        self.cookie_name = f"localsched-dashboard-{self.port}"
        self._pages: dict[str, bytes] = {}
        self._pages_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"localsched-dashboard-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("dashboard at %s", self.link)

    @property
    def link(self) -> str:
        """The page to open: ``http://127.0.0.1:<port>/status?token=…``.

        dask's ``distributed.dashboard.link`` template, when the program
        imported dask and set one (e.g. behind a JupyterHub proxy), shapes it:
        ``{scheme}``, ``{host}``, ``{port}`` and environment variables, as
        dask formats it; the token is appended as a query parameter.
        """
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        template = _DEFAULT_LINK
        config = sys.modules.get("dask.config")
        if config is not None:
            template = config.get("distributed.dashboard.link", _DEFAULT_LINK)
        fields = {**os.environ, "scheme": "http", "host": host, "port": self.port}
        link = str(template).format(**fields)
        return f"{link}{'&' if '?' in link else '?'}token={self.token}"

    def close(self) -> None:
        """Stop serving, join the request threads and free the port."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def is_token(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(
            value.encode(), self.token.encode()
        )

    # -- content ---------------------------------------------------------------------

    def page(self, name: str) -> bytes:
        """The HTML of a page, built on first use (its data arrives by polling)."""
        with self._pages_lock:
            if name not in self._pages:
                self._pages[name] = _page_html(self, name).encode()
            return self._pages[name]

    def json(self, name: str) -> dict[str, Any] | None:
        data = self.data
        sources = {
            "task-stream": data.task_stream_columns,
            "progress": data.progress_columns,
            "workers": data.worker_columns,
            "events": data.event_columns,
            "summary": data.summary,
        }
        source = sources.get(name)
        return None if source is None else source()


def _bind(host: str, port: int) -> _Server:
    """Listen on ``(host, port)``; on another port if that one is taken."""
    kind = _Server6 if ":" in host else _Server
    try:
        return kind((host, port), _Handler)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            raise
    server = kind((host, 0), _Handler)
    warnings.warn(
        f"Port {port} is already in use. Perhaps you already have a cluster "
        f"running? Hosting the dashboard on port {server.server_address[1]} "
        "instead",
        UserWarning,
        stacklevel=_outside_localsched(),
    )
    return server


def _outside_localsched() -> int:
    """The ``stacklevel`` of the caller's first frame outside this package:
    the warning names the user's ``LocalCluster(...)`` or ``Client(...)`` line."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and str(
        frame.f_globals.get("__name__", "")
    ).startswith("localsched"):
        frame = frame.f_back
        level += 1
    return level


def _source(dashboard: DashboardServer, name: str) -> Any:
    from bokeh.models import AjaxDataSource

    return AjaxDataSource(
        data_url=f"/json/{name}.json",
        polling_interval=POLL_MS,
        mode="replace",
        method="GET",
        http_headers={TOKEN_HEADER: dashboard.token},
        data=dashboard.json(name),
    )


def _page_html(dashboard: DashboardServer, name: str) -> str:
    from bokeh.embed import components
    from bokeh.layouts import column
    from bokeh.resources import Resources

    if name == "status":
        sources = {url: _source(dashboard, url) for url, _ in FIGURES.values()}
        figures = [build(sources[url]) for url, build in FIGURES.values()]
        layout = column(*figures, sizing_mode="stretch_width")
    elif name == "workers":
        layout = table_figure(_source(dashboard, "workers"), WORKER_COLUMNS)
    else:
        layout = table_figure(_source(dashboard, "events"), EVENT_COLUMNS)
    script, div = components(layout)
    resources = Resources(
        mode="server",
        root_url="/",
        components=["bokeh", "bokeh-widgets", "bokeh-tables"],
        # Warnings and errors only: bokeh logs at info level when all is well.
        log_level="warn",
    )
    nav = " · ".join(
        f'<a href="/{p}"{" class=current" if p == name else ""}>{p}</a>' for p in PAGES
    )
    title = html.escape(f"localsched: {dashboard.data.cluster.name}")
    return _TEMPLATE.format(
        title=title,
        js=resources.render_js(),
        nav=nav,
        div=div,
        script=script,
        token=json.dumps(dashboard.token),
        header=json.dumps(TOKEN_HEADER),
        poll=POLL_MS,
    )


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="icon" href="data:,">
<style>
body {{font-family: sans-serif; margin: 0 1em;}}
header {{display: flex; gap: 2em; align-items: baseline; padding: 0.5em 0;
  border-bottom: 1px solid #ddd; margin-bottom: 0.5em}}
header a {{color: #1f77b4}} header a.current {{font-weight: bold}}
#summary span {{font-variant-numeric: tabular-nums}}
</style>
{js}
</head><body>
<header><strong>{title}</strong><nav>{nav}</nav>
<div id="summary">status <span id="status">?</span> · workers
<span id="workers">?</span> · threads <span id="threads">?</span> · processing
<span id="processing">?</span> · tasks <span id="tasks">?</span> · task stream
<span id="tasks_in_stream">?</span></div></header>
{div}
{script}
<script>
(function () {{
  const token = {token};
  function show(summary) {{
    for (const name of ["status", "workers", "threads", "processing",
                        "tasks_in_stream"]) {{
      document.getElementById(name).textContent = summary[name];
    }}
    const tasks = Object.entries(summary.tasks).map(([s, n]) => s + " " + n);
    document.getElementById("tasks").textContent = tasks.join(", ") || "none";
  }}
  function poll() {{
    fetch("/json/summary.json", {{headers: {{[{header}]: token}}}})
      .then((r) => r.ok ? r.json() : null)
      .then((s) => {{ if (s) show(s); }})
      .catch(() => {{}});
  }}
  poll();
  setInterval(poll, {poll});
}})();
</script>
</body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    server_version = "localsched-dashboard"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        dashboard = self.server.dashboard
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        from_query = query["token"][0] if query.get("token") else None
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        morsel = cookie.get(dashboard.cookie_name)
        if not (
            dashboard.is_token(from_query)
            or dashboard.is_token(morsel.value if morsel else None)
            or dashboard.is_token(self.headers.get(TOKEN_HEADER))
        ):
            self._send(
                403,
                b"403 Forbidden: open the dashboard with the link that has its "
                b"token (client.dashboard_link)\n",
                "text/plain; charset=utf-8",
            )
            return
        headers = {}
        if dashboard.is_token(from_query):
            headers["Set-Cookie"] = (
                f"{dashboard.cookie_name}={dashboard.token}; Path=/; HttpOnly; "
                "SameSite=Strict"
            )
        self._route(dashboard, url.path, headers)

    def _route(
        self, dashboard: DashboardServer, path: str, headers: dict[str, str]
    ) -> None:
        name = path.strip("/") or "status"
        if name in PAGES:
            self._send(200, dashboard.page(name), "text/html; charset=utf-8", headers)
        elif name.startswith("json/") and name.endswith(".json"):
            data = dashboard.json(name[len("json/") : -len(".json")])
            if data is None:
                self._send(404, b"no such data\n", "text/plain")
            else:
                body = json.dumps(data, default=str).encode()
                self._send(200, body, "application/json", headers)
        elif name.startswith("static/"):
            self._static(name[len("static/") :], headers)
        else:
            self._send(404, b"not found\n", "text/plain")

    def _static(self, relative: str, headers: dict[str, str]) -> None:
        from bokeh.util.paths import static_path

        root = Path(static_path()).resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            self._send(404, b"not found\n", "text/plain")
            return
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._send(200, path.read_bytes(), kind, headers, cache=True)

    def _send(
        self,
        status: int,
        body: bytes,
        kind: str,
        headers: dict[str, str] | None = None,
        cache: bool = False,
    ) -> None:
        with contextlib.suppress(ConnectionError):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            # The token must not leave in a Referer header.
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
