"""How a ``Client`` shows itself: text, HTML and rich reprs, and its live views.

Mixed into :class:`~localsched.client.client.Client` beside its other method
groups; everything here only reads (``scheduler_info`` through the link, or a
snapshot of the cluster in this process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from localsched.units import format_bytes

__all__ = ["DisplayMixin"]


class DisplayMixin:
    """``Client``'s reprs and views."""

    status: str
    _link: Any
    if TYPE_CHECKING:  # ControlMixin's, on the same Client

        def scheduler_info(
            self, n_workers: int = -1, **kwargs: Any
        ) -> dict[str, Any]: ...

    cluster: Any

    @property
    def dashboard_link(self) -> str | None:
        """Link to the cluster's live web dashboard, with its access token.

        None when the dashboard is off (the default; start it with
        ``Client(dashboard_address=":8787")``) and for a task's client.
        """
        if self.cluster is None:
            return None
        link: str | None = self.cluster.dashboard_link
        return link

    def __repr__(self) -> str:
        if self.status != "running" or not self._link.is_running:
            return "<Client: No scheduler connected>"
        try:
            info = self.scheduler_info(n_workers=-1, asynchronous=False)
        except Exception:
            return "<Client: No scheduler connected>"
        workers = info["workers"].values()
        text = (
            f"<Client: {info['address']!r} processes={len(workers)} "
            f"threads={sum(w['nthreads'] for w in workers)}"
        )
        memory = sum(w.get("memory_limit") or 0 for w in workers)
        if memory:
            text += f", memory={format_bytes(memory)}"
        link = self.dashboard_link
        return text + ("" if link is None else f", dashboard={link}") + ">"

    def dashboard(self, notebook: bool | None = None, **kwargs: Any) -> Any:
        """Show a live view of this client's cluster, without opening a port.

        In Jupyter: a panel (progress per task prefix, memory and processing
        per worker, a compact task stream) shown at once and redrawn in place
        while the cell returns; the panel is returned (``stop()`` stops it).
        In a terminal: the same as ``localsched.diagnostics.dashboard(client,
        **kwargs)``, a table redrawn with rich ``Live``; blocks. For the web
        dashboard (dask's), start the cluster with ``dashboard_address=":8787"``
        and open ``client.dashboard_link``.

        Parameters
        ----------
        notebook
            Draw for Jupyter (default: when running in a kernel).
        **kwargs
            ``interval``, ``duration``, ``until`` (futures: stop once they are
            done); in a terminal also ``console``, as
            :func:`localsched.diagnostics.dashboard`.

        Returns
        -------
        The ``NotebookDashboard`` in a notebook, else None.
        """
        if self.cluster is None:
            raise RuntimeError(
                "dashboard() needs the cluster's process: call it from the "
                "client that created the cluster, not from inside a task"
            )
        from localsched.diagnostics.progressbar import in_notebook

        if notebook is None:
            notebook = in_notebook()
        if notebook:
            from IPython.display import display

            from localsched.diagnostics.notebook_dashboard import NotebookDashboard

            panel = NotebookDashboard(self.cluster, **kwargs)
            display(panel)
            return panel
        from localsched.diagnostics.terminal_dashboard import dashboard

        dashboard(self, **kwargs)
        return None

    def _repr_html_(self) -> str:
        from localsched.reprs import client_html

        return client_html(self)

    def __rich__(self) -> Any:
        from localsched.reprs import client_rich

        return client_rich(self)
