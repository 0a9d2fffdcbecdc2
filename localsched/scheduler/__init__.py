"""The sans-IO scheduler core.

```
 events (facts, requests)                         commands (orders)
 UpdateGraph, TaskFinished, WorkerRemoved ...     ComputeTask, FreeKeys, KeyInMemory ...
            │                                                ▲
            ▼                                                │
   SchedulerState.handle(*events)                  state._commands
            │  (state.py: the record; _DISPATCH)             ▲
            ▼                                                │
   stimuli.py / graphs.py  ── recommendations {key: state} ──┤
   engine.py      (run to a fixed point, log, story)         │
   transitions.py (one function per edge of the table) ──────┘
   placement.py   (decide_worker, occupancy)   clients.py (who wants what)
   stealing.py    (WorkStealing: its own fields, balance)
   policies.py    (adaptive)                   validate.py (every invariant)
```

``SchedulerState`` is one record of data; the modules are plain functions that
take it first (``func(state, ...)``), so no class is split across files.

Pure state in, commands out: no threads, pipes, pickling, clocks or global config
here. The runtime (``localsched.runtime.scheduler_thread``) owns a
``SchedulerState``, feeds it the events it observes and performs the commands
it gets back.

Installed, most of these modules are compiled with mypyc (``setup.py``); the
same sources run as pure Python when no compiled build is there, when it is
older than the sources, or with ``LOCALSCHED_PURE_PYTHON=1`` (``_loader``).
"""

from pathlib import Path as _Path

from localsched.scheduler import _loader

#: Whether this process imports the compiled (mypyc) core or the pure Python
#: one, and why (``_loader``; ``LOCALSCHED_PURE_PYTHON=1`` forces pure).
COMPILED, COMPILED_REASON = _loader.select(__name__, _Path(__file__).parent)
