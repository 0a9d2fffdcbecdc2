"""The sans-IO scheduler core.

```
 events (facts, requests)                         commands (orders)
 UpdateGraph, TaskFinished, WorkerRemoved ...     ComputeTask, FreeKeys, KeyInMemory ...
            │                                                ▲
            ▼                                                │
   SchedulerState.handle(*events) ── stimuli.py ── recommendations {key: state}
                                     transitions.py (table, run to a fixed point)
                                     placement.py   (decide_worker, occupancy)
                                     policies.py    (adaptive, stealing)
                                     validate.py    (every invariant)
```

Pure state in, commands out: no threads, pipes, pickling, clocks or global config
here. The runtime (``localsched.runtime``) owns a ``SchedulerState``, feeds it the
events it observes and performs the commands it gets back.
"""
