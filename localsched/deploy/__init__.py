"""Deployment: ``LocalCluster``, its worker processes and ``Adaptive``, as
``distributed.deploy`` exports them.

>>> from localsched.deploy import Adaptive, LocalCluster  # doctest: +SKIP

Names are imported on first use (PEP 562): importing a submodule such as
``processes`` does not start the whole cluster machinery.
"""

from __future__ import annotations

from localsched.lazy_exports import lazy_exports

_EXPORTS = {
    "Adaptive": "localsched.deploy.adaptive",
    "LocalCluster": "localsched.deploy.local",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
