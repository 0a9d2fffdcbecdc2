"""Worker processes: where tasks run.

A worker is a child process with one duplex pipe to the scheduler thread, a
control thread reading it and ``nthreads`` task threads::

    scheduler ══ pipe ══▶ main.Worker: control thread ──▶ priority queue
        ▲                                                    │
        └══ pipe ══ TaskDone / TaskFailed ◀── execute.run_task (task threads)
                    (results >= INLINE_THRESHOLD: BlobRef into shared memory)

``main.run_worker`` is the process entry point; ``execute`` runs one task and is
callable in-process. Nothing here imports ``localsched.scheduler``.
"""
