"""Segment files on disk: where they go, who may remove them, and raw IO.

Helpers of :mod:`localsched.transport.shm`. Every cluster keeps its segments in
a directory of its own, ``/dev/shm/localsched-<store pid>-<random>``, made with
an exclusive ``mkdir`` (a new random name if the name is taken) and mode 0700:
no other user can create, replace or even look up a file in it, so a name
inside it cannot be squatted, whatever the name. Its disk fallback (when
/dev/shm is missing, too small or full) and its spill directory are private
directories of the same kind, named with their own random tokens, and the main
directory holds a symbolic link to each (``.fallback``, ``.spill``), so that
removing the main directory (:func:`remove_cluster_directory`) removes them
too, wherever they are. Only those links are ever followed, and only to a
directory or file this user owns.

A segment's name inside the directory starts with the store's prefix,
``localsched-<store pid>-<token>-``; a spilled segment (see
:mod:`localsched.transport.spill`) is a symbolic link with that name, to a copy
of the same name in the spill directory.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
import warnings
from typing import TYPE_CHECKING, Protocol

from localsched.units import format_bytes

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["SHM_DIR", "SharedMemoryWarning", "sweep_stale_segments"]

logger = logging.getLogger("localsched.transport")

SHM_DIR = "/dev/shm"
NAME_PREFIX = "localsched-"
_NAME_RE = re.compile(r"localsched-(\d+)-")
#: Only a name :func:`private_directory_name` can make is swept as a directory.
_DIRECTORY_RE = re.compile(r"localsched-\d+-[0-9a-f]{32}\Z")
#: Links in a cluster directory to the private directories attached to it.
FALLBACK_LINK = ".fallback"
SPILL_LINK = ".spill"
_ATTACHMENTS = (FALLBACK_LINK, SPILL_LINK)
_MAX_IO = 1 << 30  # Linux moves at most 2 GiB - 4 KiB per read/write call
_NAME_ATTEMPTS = 64  # random names tried before giving up (a collision is ~2^-128)
_fallback_warned = False


class SharedMemoryWarning(UserWarning):
    """/dev/shm is missing or full, so segments go to a disk-backed directory."""


def private_directory_name() -> str:
    """A fresh unguessable name for a cluster's directory, with our pid in it
    (so that :func:`sweep_stale_segments` knows when its owner died)."""
    return f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(16)}"


def make_private_directory(parent: str) -> str:
    """Create a new 0700 directory with an unguessable name in ``parent``.

    ``mkdir`` fails if the name exists, whoever made it, so what it creates is
    ours alone; a taken name (never seen in practice) is retried with another.

    Raises
    ------
    OSError
        ``parent`` cannot be written.
    """
    for _ in range(_NAME_ATTEMPTS):
        path = os.path.join(parent, private_directory_name())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        _make_private(path)
        return path
    raise FileExistsError(errno.EEXIST, "no free directory name", parent)


def claim_directory(path: str) -> str:
    """Create ``path`` (0700), or accept it if this user already made it so.

    For a directory whose unguessable name the cluster's processes agreed on
    (the disk fallback, made by whichever process first needs it).

    Raises
    ------
    PermissionError
        ``path`` exists but is not a private directory of this user.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not (
            stat.S_ISDIR(st.st_mode)
            and st.st_uid == os.getuid()
            and not st.st_mode & 0o077
        ):
            raise PermissionError(
                errno.EACCES, "not a private directory of this user", path
            ) from None
        return path
    _make_private(path)
    return path


def attach_directory(directory: str, link: str, parent: str) -> str:
    """Make a private directory in ``parent`` and record it in ``directory``.

    The link ``directory/link`` is written before the new directory is made, so
    a process killed in between leaves nothing that removing ``directory``
    would miss.
    """
    link_path = os.path.join(directory, link)
    for _ in range(_NAME_ATTEMPTS):
        target = os.path.join(parent, private_directory_name())
        point_link(link_path, target)
        try:
            os.mkdir(target, 0o700)
        except FileExistsError:
            continue
        _make_private(target)
        return target
    raise FileExistsError(errno.EEXIST, "no free directory name", parent)


def point_link(link_path: str, target: str) -> None:
    """Make ``link_path`` a symbolic link to ``target``, replacing it atomically."""
    temporary = f"{link_path}.{secrets.token_hex(8)}"
    os.symlink(target, temporary)
    try:
        os.replace(temporary, link_path)
    except BaseException:
        _unlink_quietly([temporary])
        raise


def _make_private(path: str) -> None:
    # mkdir's mode is filtered by the umask: set exactly 0700 through a
    # descriptor, which cannot be redirected by a link planted meanwhile.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _owned(st: os.stat_result) -> bool:
    return st.st_uid == os.getuid()


def remove_cluster_directory(directory: str) -> list[str]:
    """Remove a cluster's directory, its files and its attached directories.

    Never raises: what cannot be removed is logged and left. Nothing is
    removed unless ``directory`` is a real directory (not a link) this user
    owns, and only its ``.fallback`` and ``.spill`` links are followed, to
    directories this user owns.

    Returns
    -------
    list of str
        Paths removed.
    """
    removed: list[str] = []
    if not _is_own_directory(directory):
        return removed
    for link in _ATTACHMENTS:
        target = _read_link(os.path.join(directory, link))
        if target is not None:
            removed += _empty_directory(target)
            _rmdir_quietly(target, removed)
    removed += _empty_directory(directory)
    _rmdir_quietly(directory, removed)
    return removed


def attached_directories(directory: str) -> list[str]:
    """The directories ``directory``'s ``.fallback`` and ``.spill`` links name."""
    if not _is_own_directory(directory):
        return []
    links = (os.path.join(directory, link) for link in _ATTACHMENTS)
    return [t for t in map(_read_link, links) if t is not None]


def _read_link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _is_own_directory(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and _owned(st)


def _empty_directory(directory: str) -> list[str]:
    """Unlink every entry of ``directory`` (if it is ours; links not followed)."""
    if not _is_own_directory(directory):
        return []
    paths = [e.path for e in _scan(directory, "")]
    _unlink_quietly(paths)
    return [p for p in paths if not os.path.lexists(p)]


def _rmdir_quietly(path: str, removed: list[str]) -> None:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        logger.warning("Could not remove %s: %s", path, exc)
        return
    removed.append(path)


def sweep_stale_segments(directories: Iterable[str] | None = None) -> list[str]:
    """Remove what clusters whose store process (the pid in the name) is gone left.

    Cluster directories (and what they link to) and single segment files of
    older versions are removed if this user owns them; things of other users
    and of live pids are kept, links are never followed, and a reused pid errs
    toward keeping. Never raises.

    Parameters
    ----------
    directories : iterable of str, optional
        Where to look; default /dev/shm and the temporary directory (where the
        disk fallback and the default spill directories are made).

    Returns
    -------
    list of str
        Paths removed.
    """
    if directories is None:
        directories = [SHM_DIR, tempfile.gettempdir()]
    removed = []
    for directory in directories:
        for entry in _scan(directory, NAME_PREFIX):
            match = _NAME_RE.match(entry.name)
            if match is None or _pid_alive(int(match.group(1))):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # its owner or another sweep got there first
            if not _owned(st):
                continue
            if stat.S_ISDIR(st.st_mode):
                if _DIRECTORY_RE.match(entry.name):
                    removed += remove_cluster_directory(entry.path)
            elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                # A segment of an older version, or its spilled link (unfollowed).
                _unlink_quietly([entry.path])
                if not os.path.lexists(entry.path):
                    removed.append(entry.path)
    return removed


class _CopyCounter:
    """Bytes this process copied to or from segments; see :func:`bytes_copied`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # writes of several threads add up
        self.total = 0

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.total += nbytes


_COPIED = _CopyCounter()


def bytes_copied() -> int:
    """Bytes this process has copied to or from shared-memory segments so far.

    Counts each value written (its stamp, pickle stream and buffers, each once)
    and the pickle stream a ``load`` reads; never the data of a buffer a
    ``load`` maps, nor a spill (a copy in the kernel, from file to file). The
    difference across a hand-off shows it copies each byte once: the producer
    writes the value, the consumer copies only its pickle stream
    (tests/transport/test_shm.py and tests/runtime/test_shared_arguments.py).
    """
    return _COPIED.total


#: Piece a copy that also hashes moves at a time: small enough to be hashed
#: from the cache right after it was copied (one pass over memory, not two).
HASH_CHUNK = 1 << 20


class _Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


def _pwrite_all(
    fd: int, data: bytes | memoryview, offset: int, hasher: _Hasher | None = None
) -> None:
    """Write all of ``data`` at ``offset``; feed it to ``hasher`` as it goes."""
    view = memoryview(data).cast("B") if hasher is not None else memoryview(data)
    _COPIED.add(view.nbytes)
    step = _MAX_IO if hasher is None else HASH_CHUNK
    done = 0
    while done < view.nbytes:
        end = min(view.nbytes, done + step)
        while done < end:
            written = os.pwrite(fd, view[done:end], offset + done)
            if hasher is not None:
                hasher.update(view[done : done + written])
            done += written


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
    """Unlink each path; never raises (a failure is logged, the rest go on)."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("Could not remove %s: %s", path, exc)


def _scan(directory: str, prefix: str) -> list[os.DirEntry[str]]:
    """Entries of ``directory`` whose name starts with ``prefix``; [] if it
    cannot be read."""
    try:
        with os.scandir(directory) as entries:
            return [e for e in entries if e.name.startswith(prefix)]
    except OSError:
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


def _choose_parent(min_bytes: int) -> str:
    """/dev/shm if usable, else the temporary directory (one warning)."""
    if os.access(SHM_DIR, os.W_OK | os.X_OK) and _free_space(SHM_DIR) >= min_bytes:
        return SHM_DIR
    _warn_fallback(
        f"{SHM_DIR} is missing or has less than {min_bytes} bytes free",
        tempfile.gettempdir(),
    )
    return tempfile.gettempdir()


def _warn_fallback(reason: str, directory: str) -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"{reason}; shared-memory segments go to {directory}, which is"
            " disk-backed and slower (give the machine a larger /dev/shm)",
            SharedMemoryWarning,
            stacklevel=4,
        )
