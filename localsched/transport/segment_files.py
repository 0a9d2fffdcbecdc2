"""Segment files on disk: where they go, who may remove them, and raw IO.

Helpers of :mod:`localsched.transport.shm`: choosing /dev/shm or the private
disk-backed fallback directory (one :class:`SharedMemoryWarning` per process),
sweeping segments whose cluster died, and the system calls the store and the
writers share. A segment's name starts with ``localsched-<store pid>-``; a
spilled segment (see :mod:`localsched.transport.spill`) is a symbolic link with
that name, to a copy of the same name in the spill directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import tempfile
import warnings
from typing import TYPE_CHECKING

from localsched.transport.spill import private_directory, spill_directory_path
from localsched.units import format_bytes

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["SHM_DIR", "SharedMemoryWarning", "sweep_stale_segments"]

SHM_DIR = "/dev/shm"
NAME_PREFIX = "localsched-"
_NAME_RE = re.compile(r"localsched-(\d+)-")
_MAX_IO = 1 << 30  # Linux moves at most 2 GiB - 4 KiB per read/write call
_fallback_warned = False


class SharedMemoryWarning(UserWarning):
    """/dev/shm is missing or full, so segments go to a disk-backed directory."""


def sweep_stale_segments(directories: Iterable[str] | None = None) -> list[str]:
    """Remove segments whose store process (the pid in the name) is gone.

    Files of other users and of live pids are kept; a reused pid errs toward keeping.

    Parameters
    ----------
    directories : iterable of str, optional
        Where to look; default /dev/shm, the disk fallback directory and the
        default spill directory.

    Returns
    -------
    list of str
        Paths removed.
    """
    if directories is None:
        directories = [SHM_DIR, _fallback_path(), spill_directory_path()]
    removed = []
    for directory in directories:
        for entry in _scan(directory, NAME_PREFIX):
            match = _NAME_RE.match(entry.name)
            if match is None or _pid_alive(int(match.group(1))):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # its owner or another sweep got there first
            # Links are spilled segments (spill.py); their copies are swept too.
            if st.st_uid == os.getuid() and (
                stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)
            ):
                _unlink_quietly([entry.path])
                removed.append(entry.path)
    return removed


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < view.nbytes:
        done += os.pwrite(fd, view[done : done + _MAX_IO], offset + done)


def _create_file(path: str) -> int:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask, so we can reopen it
    return fd


def _lock_exclusive(path: str) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlink_quietly(paths: Iterable[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _unlink_prefix(prefix: str, directories: list[str], owner_pid: int) -> None:
    # A forked child inherits this finalizer; only the owner may remove the files.
    if os.getpid() == owner_pid:
        for directory in [*directories, _fallback_path()]:
            _unlink_quietly([e.path for e in _scan(directory, prefix)])


def _scan(directory: str, prefix: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return [e for e in entries if e.name.startswith(prefix)]
    except FileNotFoundError:
        return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except (OverflowError, ValueError):
        return False
    return True


def _memory_available() -> int:
    """MemAvailable of /proc/meminfo: what can be allocated without swapping."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62  # unknown: do not refuse


def _check_fits_in_memory(nbytes: int) -> None:
    available = _memory_available()
    if nbytes > available:
        raise MemoryError(
            f"This value takes {format_bytes(nbytes)}, more than the"
            f" {format_bytes(available)} of memory available on this machine:"
            " it was not copied into shared memory, which would exhaust the"
            " machine's memory. Return or scatter smaller pieces (for example,"
            " chunks of the array) or free memory."
        )


def _free_space(directory: str) -> int:
    try:
        st = os.statvfs(directory)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _choose_directory(min_bytes: int) -> str:
    if os.access(SHM_DIR, os.W_OK | os.X_OK) and _free_space(SHM_DIR) >= min_bytes:
        return SHM_DIR
    directory = _fallback_path(create=True)
    _warn_fallback(f"{SHM_DIR} is missing or has less than {min_bytes} bytes free")
    return directory


def _fallback_path(create: bool = False) -> str:
    path = os.path.join(tempfile.gettempdir(), f"localsched-shm-{os.getuid()}")
    return private_directory(path) if create else path


def _warn_fallback(reason: str) -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"{reason}; shared-memory segments go to {_fallback_path()}, which is"
            " disk-backed and slower (give the machine a larger /dev/shm)",
            SharedMemoryWarning,
            stacklevel=4,
        )
