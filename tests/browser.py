"""A real headless browser for the tests of the pages we write (Debian's chromium).

``open_page`` loads a page in a fresh ``chromium --headless`` with no network
services, lets its scripts run (``--virtual-time-budget``: timers fire without
waiting in real time), and returns the DOM as it then is plus every message
the page wrote to the console. Numbers drawn on a canvas are not in the DOM:
``probe`` is a script appended to the page that writes what a test wants to
know into an element, read back from the dumped DOM.

Chromium is installed by ``.ci/install-browser``; tests that need it skip with
that reason where it is absent (``requires_chromium``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

requires_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs Debian's chromium (bash .ci/install-browser installs it)",
)

#: Flags for a browser that talks to nobody: no sync, updates, background fetches.
_FLAGS = (
    "--headless",
    "--no-sandbox",  # we run as root in CI
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
)
_CONSOLE = re.compile(r":CONSOLE(?:\(\d+\))?:?\d*\] (.*)")

#: Installed first in the page: collects errors that would not reach the console
#: log (failed resource loads, unhandled rejections) and every console.error
#: and console.warn, into ``data-errors`` of <html>.
_ERROR_CATCHER = """<script>
(function () {
  const errors = [];
  const keep = (text) => {
    errors.push(String(text));
    document.documentElement.setAttribute("data-errors", JSON.stringify(errors));
  };
  window.addEventListener("error", (e) => keep(e.message || ("failed to load "
      + (e.target && (e.target.src || e.target.href)))), true);
  window.addEventListener("unhandledrejection", (e) => keep(e.reason));
  for (const level of ["error", "warn"]) {
    const original = console[level];
    console[level] = (...args) => {
      keep(level + ": " + args.join(" "));
      original(...args);
    };
  }
  document.documentElement.setAttribute("data-errors", "[]");
})();
</script>"""


@dataclass
class Page:
    """What the browser showed."""

    dom: str
    #: Console messages, in order (bokeh's own info lines included).
    console: list[str]
    #: Errors the page raised or logged (``_ERROR_CATCHER``).
    errors: str

    def attribute(self, name: str) -> str | None:
        """An attribute of ``<html>`` that a probe set."""
        match = re.search(rf'<html[^>]*\s{re.escape(name)}="([^"]*)"', self.dom)
        return None if match is None else _unescape(match.group(1))


def _unescape(text: str) -> str:
    return (
        text.replace("&quot;", '"')
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
    )


def open_page(
    path: str | os.PathLike[str],
    probe: str = "",
    *,
    budget_ms: int = 10_000,
    timeout: float = 120.0,
) -> Page:
    """Load ``path`` (a copy with the error catcher and ``probe`` added).

    ``probe`` is JavaScript run after the page's own scripts; it reports by
    setting attributes of ``document.documentElement``.
    """
    assert CHROMIUM is not None
    text = Path(path).read_text(encoding="utf-8")
    head = text.find("<head>")
    assert head >= 0, "the page has no <head>"
    text = text[: head + 6] + _ERROR_CATCHER + text[head + 6 :]
    if probe:
        end = text.rfind("</body>")
        text = text[:end] + f"<script>{probe}</script>" + text[end:]
    with tempfile.TemporaryDirectory(prefix="localsched-browser-") as tmp:
        page = Path(tmp, "page.html")
        page.write_text(text, encoding="utf-8")
        done = subprocess.run(
            [
                CHROMIUM,
                *_FLAGS,
                f"--user-data-dir={tmp}/profile",
                f"--virtual-time-budget={budget_ms}",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    console = [m.group(1) for m in _CONSOLE.finditer(done.stderr)]
    result = Page(dom=done.stdout, console=console, errors="")
    result.errors = result.attribute("data-errors") or ""
    return result


def screenshot(
    path: str | os.PathLike[str],
    image: str | os.PathLike[str],
    *,
    width: int = 1400,
    height: int = 2000,
    budget_ms: int = 5_000,
    timeout: float = 120.0,
) -> None:
    """A PNG of the page as a person sees it."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="localsched-browser-") as tmp:
        subprocess.run(
            [
                CHROMIUM,
                *_FLAGS,
                f"--user-data-dir={tmp}/profile",
                f"--virtual-time-budget={budget_ms}",
                f"--window-size={width},{height}",
                f"--screenshot={os.fspath(image)}",
                Path(path).resolve().as_uri(),
            ],
            capture_output=True,
            timeout=timeout,
            check=True,
        )
