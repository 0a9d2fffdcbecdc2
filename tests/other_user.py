"""Acting as a second local user, for the tests of what another user can do.

CI runs as root, so a test forks a child that drops to uid/gid 65534 (the
``nobody`` user of most systems; no passwd entry is needed) and runs a small
function there: a real second user, whose permissions the kernel checks. Only
``os`` calls run in the child (it is a fork of a threaded process), and it
reports back as JSON through a pipe.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterable

import pytest

OTHER_UID = 65534


def as_other_user(function: Callable[..., object], *args: object) -> object:
    """``function(*args)`` run as uid ``OTHER_UID``; its (JSON-able) result.

    Skips the test where this process cannot switch user (not root).
    """
    if os.geteuid() != 0:
        pytest.skip("acting as a second user needs root (CI runs as root)")
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            out = {"result": function(*args)}
        except BaseException as exc:  # reported to the parent, which raises
            out = {"error": repr(exc)}
        os.write(writer, json.dumps(out).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    reply = json.loads(data)
    if "error" in reply:
        raise AssertionError(f"the other user's code failed: {reply['error']}")
    return reply["result"]


def give_away(*paths: str | os.PathLike[str]) -> None:
    """Make another user own ``paths`` (links themselves, not their targets)."""
    if os.geteuid() != 0:
        pytest.skip("giving files to a second user needs root (CI runs as root)")
    for path in paths:
        os.lchown(path, OTHER_UID, OTHER_UID)


def squat(paths: Iterable[str]) -> dict[str, list[str]]:
    """Create each path as an empty file (what a squatter does): the paths made,
    and the errors (by errno name) of those refused."""
    made, refused = [], []
    for path in paths:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except OSError as exc:
            refused.append(errno.errorcode.get(exc.errno or 0, str(exc)))
            continue
        os.close(fd)
        made.append(path)
    return {"made": made, "refused": refused}
