"""Spilling: moving a live shared-memory segment to a disk file, transparently.

A :class:`~localsched.transport.shm.BlobRef` names its segment by path, and refs
may already be on their way to a worker (in a task message) when the segment is
spilled, so the path must keep working. :func:`spill_segment` copies the segment
to a file of the same name in a spill directory on disk, then atomically replaces
the segment with a symbolic link to that copy::

    <cluster dir>/localsched-<pid>-<token>-7   (tmpfs: memory)
        ── spill ──▶  <cluster dir>/localsched-<pid>-<token>-7  ->  <spill dir>/…-7
                      <spill dir>/localsched-<pid>-<token>-7   (disk: page cache)

Both directories are the cluster's own (0700, unguessable names; see
:mod:`localsched.transport.segment_files`), so no other user can squat the copy's
name or the temporary name of the link.

Readers open the same path and follow the link: the copy carries the same stamp,
so :func:`~localsched.transport.shm.load` maps it exactly as before, and its pages
come from the page cache, which the kernel may evict, unlike tmpfs pages. A reader
that opened the segment before the swap keeps the memory it maps until it unmaps
it; the memory goes back to the system after that. Live segments are never
rewritten, so copying needs no lock. A spilled segment is never reused: releasing
it unlinks the link and the copy.
"""

from __future__ import annotations

import contextlib
import os
import secrets

__all__ = [
    "copy_segment",
    "is_memory_backed",
    "link_to_copy",
    "spill_segment",
]

_MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "shm"})
_COPY_CHUNK = 1 << 30


def is_memory_backed(directory: str) -> bool:
    """True if ``directory`` lives on a RAM filesystem (tmpfs), per mountinfo.

    Its files are memory the kernel cannot evict (without swap): what the memory
    budget counts and spilling frees. A disk-backed directory is neither.
    """
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = f.read().splitlines()
    except OSError:
        return os.path.realpath(directory).startswith("/dev/shm")
    target = os.path.realpath(directory)
    best, best_type = "", ""
    for line in mounts:
        fields = line.split()
        try:
            separator = fields.index("-")
        except ValueError:
            continue
        mount_point = fields[4].replace("\\040", " ")
        inside = target == mount_point or target.startswith(
            mount_point.rstrip("/") + "/"
        )
        # The longest mount point containing the path is the one it lives on;
        # a later line for the same point overmounts the earlier one.
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fields[separator + 1]
    return best_type in _MEMORY_FILESYSTEMS


def spill_segment(path: str, spill_directory: str) -> str:
    """Copy segment ``path`` into ``spill_directory`` and link ``path`` to it.

    Returns the copy's path. On failure (e.g. a full disk, ``ENOSPC``) nothing
    changed: the partial copy is removed and the error raised.
    """
    target = copy_segment(path, spill_directory)
    link_to_copy(path, target)
    return target


def copy_segment(path: str, spill_directory: str) -> str:
    """Copy segment ``path`` to a file of the same name in ``spill_directory``
    (0600); its path. A partial copy is removed if that fails.

    ``spill_directory`` is the cluster's private directory, so a file already
    there under that name can only be a copy of ours that a failed spill could
    not remove: it is replaced.
    """
    target = os.path.join(spill_directory, os.path.basename(path))
    source = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        size = os.fstat(source).st_size
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            copy = os.open(target, flags, 0o600)
        except FileExistsError:
            os.unlink(target)
            copy = os.open(target, flags, 0o600)
        try:
            os.fchmod(copy, 0o600)
            _copy(source, copy, size)
        except BaseException:
            os.close(copy)
            _remove_quietly(target)
            raise
        os.close(copy)
    finally:
        os.close(source)
    return target


def link_to_copy(path: str, target: str) -> None:
    """Replace segment ``path`` by a symbolic link to its copy ``target``.

    On failure the copy is removed (never raising for that) and the segment
    stays as it was; the error is raised.
    """
    # A fresh random name each time: a leftover of an earlier attempt (or a
    # name someone made) cannot block the spill.
    link = f"{path}.{secrets.token_hex(8)}.link"
    made = False
    try:
        os.symlink(target, link)
        made = True
        # rename() replaces the segment atomically: a reader opens either the
        # tmpfs file or the link, never nothing.
        os.rename(link, path)
    except BaseException:
        # Only what this call made: never someone else's file of that name.
        _remove_quietly(target)
        if made:
            _remove_quietly(link)
        raise


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _copy(source: int, destination: int, size: int) -> None:
    # sendfile copies in the kernel (file to file since Linux 2.6.33), across
    # filesystems, where copy_file_range is refused by some kernels.
    offset = 0
    while offset < size:
        sent = os.sendfile(destination, source, offset, min(_COPY_CHUNK, size - offset))
        if sent == 0:
            raise OSError(f"segment shrank while spilling ({offset} of {size} bytes)")
        offset += sent
