"""Which tasks a worker is executing, readable after the worker died.

When a worker process dies, only the tasks it was *executing* may have killed
it: tasks merely queued in it are placed again without being counted
suspicious. Asking the worker is impossible (it is dead), and a message per task
start would cost the hot path a pipe write. Instead each worker shares a small
page of memory with the scheduler process::

    slot 0      tasks running without a slot (all slots taken): then unknown
    slot 1..N   run_id of a task running in that slot, 0 when free

A task thread writes the task's ``run_id`` (unique across the cluster, never 0)
into a free slot when it starts the task and zeroes it when the task ends, both
under the worker lock it already holds: two 8-byte stores per task. A seceded
task keeps its slot until it ends, so it is counted too. The page is an
anonymous ``memfd`` passed to the child as an inherited descriptor, so it can
neither leak nor be seen by another process; the kernel keeps its contents
after the worker's death for the scheduler to read.

A worker that is a thread of the scheduler's process (``processes=False``)
shares plain anonymous memory instead (:meth:`ExecutingPage.in_process`): no
descriptor at all, so none can outlive the cluster however late the worker's
objects are garbage-collected (a ``memfd`` there stayed open until the cyclic
garbage collector ran, one per cluster).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile

__all__ = ["ExecutingPage"]

#: Slots for tasks running at once in one worker (seceded ones included).
SLOTS = 511
_SIZE = (SLOTS + 1) * 8  # 4 KiB: one page


class ExecutingPage:
    """The shared page of one worker (see the module docstring).

    Parameters
    ----------
    fd : int, optional
        The descriptor of an existing page (in the worker); it is closed once
        mapped, the mapping keeps the memory. Without it a new anonymous page is
        created (in the scheduler process), whose descriptor :meth:`fileno`
        gives to the worker.

    Notes
    -----
    ``start``/``end`` are called by the worker with its lock held: the free-slot
    list needs no lock of its own.
    """

    def __init__(self, fd: int | None = None) -> None:
        is_new = fd is None
        if fd is None:
            fd = _anonymous_file(_SIZE)
        # The mapping keeps a descriptor of its own (CPython's mmap dups it).
        self._init(mmap.mmap(fd, _SIZE))
        if not is_new:
            os.close(fd)  # the worker never passes it on: no child inherits it
        self._fd = fd if is_new else -1

    def _init(self, mapping: mmap.mmap) -> None:
        self._map = mapping
        self._fd = -1
        self._is_closed = False
        self._slots = memoryview(mapping).cast("q")
        #: Free slot numbers (worker side); the last one is taken first.
        self._free = list(range(SLOTS, 0, -1))

    @classmethod
    def in_process(cls) -> tuple[ExecutingPage, ExecutingPage]:
        """A page for a worker that is a thread of this process, without a
        descriptor: ``(scheduler side, worker side)``, two views of the same
        anonymous memory. Each side closes its own; the memory goes with the
        last one, so the worker's task threads may outlive the scheduler's side.
        """
        mapping = mmap.mmap(-1, _SIZE)  # MAP_SHARED | MAP_ANONYMOUS: no file
        sides = (cls.__new__(cls), cls.__new__(cls))
        for side in sides:
            side._init(mapping)
        return sides

    def fileno(self) -> int:
        """The page's descriptor, to pass to a worker (scheduler side only)."""
        if self._fd < 0:
            raise ValueError("this page has no descriptor (in-process, or mapped)")
        return self._fd

    def start(self, run_id: int) -> int:
        """Record ``run_id`` as executing; the slot to give back to :meth:`end`."""
        if self._free:
            slot = self._free.pop()
            self._slots[slot] = run_id
            return slot
        self._slots[0] += 1
        return 0

    def end(self, slot: int) -> None:
        """The task started in ``slot`` ended."""
        if slot:
            self._slots[slot] = 0
            self._free.append(slot)
        else:
            self._slots[0] -= 1

    def executing(self) -> set[int] | None:
        """The run_ids recorded as executing; None if some went unrecorded."""
        slots = self._slots
        if slots[0] > 0:
            return None
        return {run_id for run_id in slots[1:] if run_id}

    def close(self) -> None:
        """Unmap and close the descriptor (idempotent).

        Only for the side that no thread writes any more: an in-process worker
        (``processes=False``) gets a page of its own over the same memory.
        """
        if self._is_closed:
            return
        self._is_closed = True
        self._slots.release()
        with contextlib.suppress(BufferError):  # the other in-process side's view
            self._map.close()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def _anonymous_file(size: int) -> int:
    """A descriptor of ``size`` zeroed bytes that no path names."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("localsched-executing", os.MFD_CLOEXEC)
    else:  # macOS and other systems without memfd: an unlinked temporary file
        fd, path = tempfile.mkstemp(prefix="localsched-executing-")
        os.unlink(path)
    os.ftruncate(fd, size)
    return fd
