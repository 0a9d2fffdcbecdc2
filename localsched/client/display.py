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

    @property
    def dashboard_link(self) -> None:
        """None: localsched serves no web dashboard (see ``dashboard()``)."""
        return None

    def __repr__(self) -> str:
        if self.status != "running" or not self._link.is_running:
            return "<Client: No scheduler connected>"
        try:
            info = self.scheduler_info(n_workers=-1)
        except Exception:
            return "<Client: No scheduler connected>"
        workers = info["workers"].values()
        text = (
            f"<Client: {info['address']!r} processes={len(workers)} "
            f"threads={sum(w['nthreads'] for w in workers)}"
        )
        memory = sum(w.get("memory_limit") or 0 for w in workers)
        return text + (f", memory={format_bytes(memory)}>" if memory else ">")

    def dashboard(self, **kwargs: Any) -> None:
        """Show a live view of this client's cluster in the terminal; blocks.

        The same as ``localsched.diagnostics.dashboard(client, **kwargs)``:
        workers with CPU, memory and executing tasks, and progress per task
        prefix, refreshed with rich ``Live``. dask serves a web dashboard at
        ``client.dashboard_link`` instead.

        Parameters
        ----------
        **kwargs
            ``interval``, ``duration``, ``until`` (futures: stop once they are
            done) and ``console``, as :func:`localsched.diagnostics.dashboard`.
        """
        from localsched.diagnostics.terminal_dashboard import dashboard

        dashboard(self, **kwargs)

    def _repr_html_(self) -> str:
        from localsched.reprs import client_html

        return client_html(self)

    def __rich__(self) -> Any:
        from localsched.reprs import client_rich

        return client_rich(self)
