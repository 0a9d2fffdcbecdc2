"""Shared test configuration.

Hypothesis profiles, chosen with ``LOCALSCHED_HYPOTHESIS_PROFILE``:

- ``dev`` (default): quick, for the edit-test loop.
- ``ci`` (default when ``CI`` is set): more examples, no deadline on slow runners.
- ``deep``: long exploratory runs, e.g. before touching the scheduler core::

      LOCALSCHED_HYPOTHESIS_PROFILE=deep python -m pytest tests/scheduler \
          -p no:cacheprovider
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("dev", max_examples=50, stateful_step_count=30, deadline=None)
settings.register_profile("ci", max_examples=200, deadline=None, print_blob=True)
settings.register_profile(
    "deep", max_examples=2000, stateful_step_count=100, deadline=None, print_blob=True
)
settings.load_profile(
    os.environ.get(
        "LOCALSCHED_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"
    )
)
