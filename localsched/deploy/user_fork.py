"""The template forked from the user's process: workers warm from the start.

A worker needs the modules its tasks' pickles name: the first dask-collection
compute after ``Client()`` deserializes numpy, pandas, pyarrow and
dask.dataframe in every worker, 0.3-0.8 s of CPU each, while the user's
process has imported them already. Importing them anywhere after the start
costs that CPU again (twice on two workers), and before the first fork it
delays the start. A fork of the user's process has them for nothing: so when
it is safe, the cluster's template process (``deploy/template.py``) is a
fork of the user's process, made first thing in ``Client()``, instead of a
fresh interpreter, and the workers it forks start with everything the user's
program had imported.

It is safe when the fork copies no lock another thread holds and no state a
library cannot carry across ``fork``, and when it pins little memory; so the
process is forked only if (:func:`refusal`):

- it runs one Python thread (the one calling ``Client()``: no scheduler
  thread of another cluster, no Jupyter kernel threads);
- every extension module it has loaded is CPython's own or one of
  :data:`FORK_SAFE_EXTENSIONS`, whose native thread pools handle ``fork`` (as
  ``multiprocessing``'s fork start method relies on); any other one (polars,
  torch, grpc, ...) refuses it;
- its own anonymous memory is at most :data:`MAX_HEAP` (and a quarter of an
  explicit ``memory_limit``): the template and its workers share those pages
  and a worker counts them as its own memory (``runtime/memory.py``), and a
  page the user's process writes afterwards is copied for it (the template
  keeps the old one): the fork costs at most that much memory more;
- dask's config key ``localsched.worker.fork-user-process`` is not False.

Otherwise the template is a fresh interpreter, as before: only time differs.

The child keeps nothing of the user's program that a fresh interpreter would
not have (:func:`_become_template`): every inherited file descriptor but
stdout and stderr now reads ``/dev/null`` (so it holds no pipe end, socket or
file of the user's open; the numbers stay taken, so a descriptor a user's
object still names is never one of ours), standard input is ``/dev/null``,
signal handlers, warning filters, exception, trace and profile hooks and the
root logger's handlers are the interpreter's defaults, the collector leaves
the inherited objects alone (``gc.freeze``: no copy-on-write of the user's
pages by a collection), and it never returns to the user's code: it serves as
the template and leaves with ``os._exit`` (no ``atexit`` handler of the
user's runs twice).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.machinery
import logging
import os
import signal
import socket
import sys
import sysconfig
import threading
import warnings
from collections.abc import Mapping
from typing import Any, Literal

logger = logging.getLogger("localsched.deploy.user_fork")

__all__ = [
    "CONFIG_KEY",
    "FORK_SAFE_EXTENSIONS",
    "MAX_HEAP",
    "fork_template",
    "memory_refusal",
    "refusal",
]

#: dask config key: whether the template may be a fork of the user's process.
CONFIG_KEY = "localsched.worker.fork-user-process"

#: Largest anonymous memory (``RssAnon``) of the user's process it forks.
MAX_HEAP = 256 * 2**20

#: Packages whose extension modules leave a process safe to fork: no thread
#: of their own, or native pools that re-create themselves in a forked child
#: (OpenBLAS's ``pthread_atfork``, Arrow's and jemalloc's fork handlers).
#: ``localsched`` for its compiled core; names ending in ``__mypyc`` are
#: mypyc's shared runtime modules.
FORK_SAFE_EXTENSIONS = frozenset(
    {
        "localsched",
        "numpy",
        "pandas",
        "pyarrow",
        "scipy",
        "_cyutility",  # Cython's shared utility module (pandas, pyarrow)
        "psutil",
        "xxhash",
        "yaml",
        "_yaml",
        "markupsafe",
        "msgpack",
        "tornado",
        "cytoolz",
        "lz4",
        "zstandard",
        "charset_normalizer",
    }
)

#: CPython's warning filters in a fresh (release-build) interpreter, most
#: important first, before ``-W`` and ``PYTHONWARNINGS``.
_DEFAULT_WARNING_FILTERS: tuple[
    tuple[Literal["default", "ignore"], type[Warning], str], ...
] = (
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
)


def refusal(options: Mapping[str, Any] | None = None) -> str | None:
    """Why this process must not be forked into a template now (None: it may).

    Parameters
    ----------
    options
        The ``LocalCluster`` keywords, if known (an explicit ``memory_limit``
        lowers the memory allowed).
    """
    if not _config_allows():
        return f"dask's config {CONFIG_KEY!r} is False"
    from localsched.deploy.warming import WarmImports

    with contextlib.suppress(TypeError):  # a bad option: the cluster raises it
        option = None if options is None else options.get("warm_imports")
        if not WarmImports(option).names:  # given, else dask's config
            return "warm_imports is off: workers start lean"
    if threading.active_count() != 1:
        return f"{threading.active_count()} Python threads run"
    foreign = foreign_extensions()
    if foreign:
        return "extension modules not known to be fork-safe: " + ", ".join(foreign)
    return memory_refusal(options)


def memory_refusal(options: Mapping[str, Any] | None = None) -> str | None:
    """The memory rule of :func:`refusal` alone."""
    heap = anonymous_memory()
    allowed = MAX_HEAP
    limit = _explicit_memory_limit(options)
    if limit is not None:
        allowed = min(allowed, limit // 4)
    if heap is None or heap > allowed:
        return f"its anonymous memory ({heap} bytes) is over {allowed}"
    return None


def _config_allows() -> bool:
    config = sys.modules.get("dask.config")
    return config is None or bool(config.get(CONFIG_KEY, True))


def foreign_extensions() -> list[str]:
    """Top-level names of the loaded extension modules that are neither
    CPython's own (``lib-dynload``) nor of :data:`FORK_SAFE_EXTENSIONS`."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    # CPython's own: its lib-dynload (DESTSHARED), the base interpreter's
    # even in a virtual environment.
    prefix = sys.base_exec_prefix
    base = {"installed_platbase": prefix, "platbase": prefix}
    dynload = sysconfig.get_config_var("DESTSHARED") or os.path.join(
        sysconfig.get_path("platstdlib", vars=base), "lib-dynload"
    )
    foreign: set[str] = set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not path.endswith(suffixes):
            continue
        if os.path.dirname(path) == dynload:
            continue
        top = name.partition(".")[0]
        if top not in FORK_SAFE_EXTENSIONS and not top.endswith("__mypyc"):
            foreign.add(top)
    return sorted(foreign)


def anonymous_memory() -> int | None:
    """This process's ``RssAnon`` in bytes (None if Linux does not say)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return None


def _explicit_memory_limit(options: Mapping[str, Any] | None) -> int | None:
    """An explicit per-worker ``memory_limit`` in bytes (None: none or auto)."""
    value = None if options is None else options.get("memory_limit")
    if value is None or value == "auto" or isinstance(value, bool):
        return None
    if isinstance(value, float) and 0 < value <= 1:
        return None  # a fraction of the machine's memory: large
    from localsched.units import parse_bytes

    try:
        limit = parse_bytes(value)
    except (TypeError, ValueError):
        return None  # the cluster raises it
    return limit if limit > 0 else None


def fork_template(theirs: socket.socket) -> int:
    """Fork this process into a template serving on socket ``theirs``; the
    child's pid (``template.UserForkProcess`` watches it)."""
    parent = os.getpid()
    # What the user printed and Python still buffers would be written again
    # by every process that flushes its copy (multiprocessing flushes too).
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    with warnings.catch_warnings():
        # Python 3.12+ warns about native threads (OpenBLAS's pool, ...):
        # refusal() admitted only the libraries that handle fork.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _become_template(theirs.fileno(), parent)
            code = 0
        except BaseException:
            with contextlib.suppress(Exception):
                import traceback

                traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _become_template(fd: int, parent: int) -> None:
    """In the forked child: shed the user's program, then serve (never
    returns to the caller's frames: the template ends with ``os._exit``)."""
    os.setsid()  # as a spawned template: its own session, no terminal Ctrl-C
    _shed_descriptors(keep=(1, 2, fd))
    _reset_interpreter()
    gc.freeze()  # inherited objects: never scanned, never copied by a collection
    from localsched.worker.template import main, set_process_name

    # Its command line stays the user's program's: ``ps -o comm`` and ``top``
    # show this name (and each worker's own).
    set_process_name("localsched-tmpl")
    main(fd, parent)


def _shed_descriptors(keep: tuple[int, ...]) -> None:
    """Point every inherited descriptor but ``keep`` at ``/dev/null``."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for name in os.listdir("/proc/self/fd"):
            number = int(name)
            if number in keep or number == null:
                continue
            with contextlib.suppress(OSError):  # the listing's own, now closed
                os.fstat(number)
                os.dup2(null, number, inheritable=number <= 2)
    finally:
        os.close(null)


def _reset_interpreter() -> None:
    """What a fresh interpreter has: default signal handlers, warning
    filters, hooks, standard streams and root logger."""
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError):
            handler = signal.getsignal(signum)
            if callable(handler) and handler is not signal.default_int_handler:
                signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with contextlib.suppress(Exception):
        import faulthandler

        faulthandler.disable()
    sys.settrace(None)
    sys.setprofile(None)
    threading.settrace(None)
    threading.setprofile(None)
    sys.excepthook = sys.__excepthook__
    sys.unraisablehook = sys.__unraisablehook__
    threading.excepthook = threading.__excepthook__
    # Standard input anew on /dev/null: the user's object may hold read-ahead.
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    warnings.resetwarnings()
    for action, category, module in reversed(_DEFAULT_WARNING_FILTERS):
        warnings.filterwarnings(action, category=category, module=module)
    with contextlib.suppress(Exception):
        warnings._processoptions(sys.warnoptions)  # type: ignore[attr-defined]
    root = logging.getLogger()
    for log_handler in list(root.handlers):
        root.removeHandler(log_handler)
    root.setLevel(logging.WARNING)
    logging.disable(logging.NOTSET)
    # The package's own loggers as first made: a ``dictConfig`` of the user's
    # (``disable_existing_loggers``) or a level set in a test must not silence
    # the workers' warnings (``Client.get_worker_logs``).
    for name, log in list(logging.root.manager.loggerDict.items()):
        if name.startswith("localsched") and isinstance(log, logging.Logger):
            log.disabled = False
            log.setLevel(logging.NOTSET)
            log.propagate = True
            for log_handler in list(log.handlers):
                log.removeHandler(log_handler)
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    if tracker is not None:  # the user's tracker pipe is /dev/null now
        with contextlib.suppress(Exception):
            tracker._resource_tracker.__init__()
