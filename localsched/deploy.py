"""Deployment classes, as ``distributed.deploy`` exports them.

>>> from localsched.deploy import Adaptive, LocalCluster  # doctest: +SKIP
"""

from __future__ import annotations

from localsched.adaptive import Adaptive
from localsched.cluster import LocalCluster

__all__ = ["Adaptive", "LocalCluster"]
