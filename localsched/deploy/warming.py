"""Which modules workers import in the background once ready (warm imports).

``LocalCluster(warm_imports=...)``, else dask's config key
``localsched.worker.warm-imports`` (read only if the program imported dask;
dask fills it from ``DASK_LOCALSCHED__WORKER__WARM_IMPORTS`` too), else
``"auto"``:

- ``"auto"`` or True: the modules of :data:`WARM_CANDIDATES` that this process
  has imported when a worker starts (so a worker added later by ``scale`` or
  ``adapt`` also warms what the program imported since);
- a list of module names, which may include ``"auto"``;
- False, None-valued config or an empty list: nothing.

The worker side is ``localsched.worker.warming``.

The cluster's template process (``deploy/template.py``) imports them too, the
ones of :data:`FORK_SAFE`, once it had no fork to make for
:data:`TEMPLATE_QUIET` seconds: workers forked after that (``scale``,
``adapt``, replacements) start with them imported and share their pages with
the template. The first workers are forked before (start-up never waits for
a warm import), and import them themselves. dask's config key
``localsched.worker.warm-template`` (default True) turns that off.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

__all__ = [
    "CONFIG_KEY",
    "FORK_SAFE",
    "TEMPLATE_CONFIG_KEY",
    "TEMPLATE_QUIET",
    "WARM_CANDIDATES",
    "WarmImports",
]

#: dask config key read when ``warm_imports`` is not given.
CONFIG_KEY = "localsched.worker.warm-imports"

#: Heavy modules a worker imports ahead when the user's process has them:
#: the data stack a first dask-collection compute deserializes. In this order:
#: the most used first, each one's dependencies before it. Others can be named
#: explicitly.
WARM_CANDIDATES = (
    "numpy",
    "dask",
    "dask.array",
    "pandas",
    "pyarrow",
    "dask.dataframe",
    "dask.bag",
    "scipy",
    "xarray",
    "polars",
    "sklearn",
)

#: Modules whose import leaves a process safe to fork (no Python thread
#: started, native thread pools that handle ``fork``, as multiprocessing's
#: fork start method relies on): the template imports only these. Not polars
#: (documented as deadlocking in a forked child) nor scikit-learn (OpenMP).
FORK_SAFE = frozenset(
    {"numpy", "dask", "dask.array", "pandas", "pyarrow", "dask.dataframe", "dask.bag"}
    | {"scipy", "xarray"}
)

#: dask config key: whether the template imports warm modules too.
TEMPLATE_CONFIG_KEY = "localsched.worker.warm-template"

#: Seconds the template waits without a fork request before a warm import: it
#: does not compete with the first workers' start and their first tasks.
TEMPLATE_QUIET = 1.0

WarmOption = bool | str | Iterable[str] | None


class WarmImports:
    """The modules to warm in each new worker.

    Parameters
    ----------
    option
        ``LocalCluster``'s ``warm_imports`` (see the module docstring); None
        reads dask's config, else ``"auto"``.
    """

    def __init__(self, option: WarmOption = None) -> None:
        if option is None:
            config = sys.modules.get("dask.config")
            option = "auto" if config is None else config.get(CONFIG_KEY, "auto")
        if option is True:
            option = "auto"
        if option is False or option is None:
            option = ()
        names = [option] if isinstance(option, str) else list(option)
        for name in names:
            if not isinstance(name, str) or not name:
                raise TypeError(
                    f"warm_imports takes module names or 'auto', got {name!r}"
                )
        #: The option as given: module names and maybe "auto".
        self.names = names

    def modules(self) -> list[str]:
        """The modules for a worker starting now (each once, in order)."""
        chosen: list[str] = []
        for name in self.names:
            if name == "auto":
                chosen.extend(m for m in WARM_CANDIDATES if m in sys.modules)
            else:
                chosen.append(name)
        return list(dict.fromkeys(chosen))

    def template_modules(self) -> list[str]:
        """The modules for the template to import now (:data:`FORK_SAFE`
        ones; none if dask's config turned it off)."""
        config = sys.modules.get("dask.config")
        if config is not None and not config.get(TEMPLATE_CONFIG_KEY, True):
            return []
        return [name for name in self.modules() if name in FORK_SAFE]

    def __repr__(self) -> str:
        return f"WarmImports({self.names!r})"
