"""What people see: progress bars, reprs and a live terminal dashboard.

The public names are ``progress`` and ``dashboard``, imported on first use
(PEP 562) so that ``import localsched`` stays fast. No submodule may carry a
public name: importing ``localsched.diagnostics.<name>`` binds the submodule as
an attribute of this package, and from then on ``from localsched.diagnostics
import <name>`` would return the module instead of the function
(``tests/test_public_api.py`` guards this).

- ``progressbar.py``: ``progress``, drawn with rich; ``progress_tracker.py``:
  the ``SchedulerPlugin`` that counts for it.
- ``terminal_dashboard.py``: ``dashboard``.
- ``reprs.py``: the HTML and rich reprs of clients, clusters and futures.
- ``report.py``: ``performance_report`` (exported by ``localsched``);
  ``figures.py``: the bokeh figures it draws from plain records, shared with
  ``get_task_stream(plot=...)`` and the dashboard (needs bokeh: the
  ``dashboard`` extra; the recording is ``localsched.runtime.recording``).
- ``live_data.py``: samples and columns behind the live views;
  ``live_figures.py``: their bokeh figures; ``web_dashboard.py``: the opt-in web
  dashboard (``dashboard_address=``); ``notebook_dashboard.py``: the Jupyter panel
  of ``client.dashboard()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from localsched.lazy_exports import lazy_exports

_EXPORTS = {
    "dashboard": "localsched.diagnostics.terminal_dashboard",
    "progress": "localsched.client.progress",
}

__all__ = ["dashboard", "progress"]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


if TYPE_CHECKING:
    from localsched.client.progress import progress
    from localsched.diagnostics.terminal_dashboard import dashboard
