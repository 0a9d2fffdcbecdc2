"""Deployment: ``LocalCluster``, its worker processes and ``Adaptive``, as
``distributed.deploy`` exports them.

>>> from localsched.deploy import Adaptive, LocalCluster  # doctest: +SKIP

Names are imported on first use (PEP 562): importing a submodule such as
``processes`` does not start the whole cluster machinery.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Adaptive": "localsched.deploy.adaptive",
    "LocalCluster": "localsched.deploy.local",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
