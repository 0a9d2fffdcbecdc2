"""The scheduler thread and what runs on it.

``scheduler_thread.SchedulerRuntime`` owns the pure core
(:mod:`localsched.scheduler`) and is its only caller: it turns worker messages
and client events into core events, carries out the commands the core returns,
and answers clients' typed requests (``request_handler``). Around it:
supervision of worker processes, the memory monitor, restarts, the state of
coordination primitives, and ``local_link.LocalLink``, the one module of this
package a client imports::

    client ──LocalLink──▶ inbox ─┐
    worker pipes ───────────────┼─▶ SchedulerRuntime ──handle()──▶ core
    process sentinels ──────────┘        │  ◀──commands──
                                         └─▶ worker pipes, store, result cells

Nothing here is imported by a worker process.
"""
