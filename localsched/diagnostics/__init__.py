"""What people see: progress bars, reprs and a live terminal dashboard.

rich is imported on first use only, so ``import localsched`` stays fast.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "progress":
        from localsched.diagnostics.progressbar import progress

        return progress
    if name == "dashboard":
        from localsched.diagnostics.dashboard import dashboard

        return dashboard
    raise AttributeError(f"module 'localsched.diagnostics' has no attribute {name!r}")


__all__ = ["dashboard", "progress"]
