"""``ClusterToolsMixin``: ``Client`` methods for debugging and maintaining a cluster.

``recreate_error_locally``/``recreate_task_locally``, ``dump_cluster_state``,
``get_versions``, ``restart_workers``, ``replicate``/``rebalance`` (with the
``amm`` handle), ``normalize_collection`` and ``upload_file``, with
``distributed.Client``'s signatures. Each asks the scheduler through the
client's link (typed requests, or ``run``/``run_on_scheduler``), so each works
from inside a task too.

Shared memory changes two of them: a result has one copy that every worker
reads, so ``rebalance`` has nothing to move and ``replicate`` only records
more holders of the one copy (``who_has`` then lists them), and there is no
Active Memory Manager to start or stop.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import platform
import struct
import sys
import threading
import time
from collections.abc import Hashable, Sequence
from typing import Any

from localsched.client.dual import dual
from localsched.client.future import Future, wait
from localsched.client.graph import replace_futures
from localsched.plugins import WorkerPlugin
from localsched.transport import requests as rq

Key = Hashable

__all__ = ["ActiveMemoryManagerClient", "ClusterToolsMixin", "UploadedModules"]

#: The packages ``get_versions`` reports (dask's list, plus localsched).
REQUIRED_PACKAGES = ("python", "localsched", "cloudpickle", "dask", "distributed")
OPTIONAL_PACKAGES = ("numpy", "pandas", "msgpack", "tblib", "psutil", "toolz")


def _is_future(obj: object) -> bool:
    return isinstance(obj, Future)


def _futures_in(futures: Any) -> list[Future]:
    found: dict[Key, Future] = {}
    replace_futures(futures, _is_future, found)
    return list(found.values())


class ActiveMemoryManagerClient:
    """``client.amm``: dask's handle on the Active Memory Manager.

    localsched has none: a result lives once, in shared memory that every
    worker reads, so there are no replicas to drop or make. ``running()`` is
    always False; ``start``, ``stop`` and ``run_once`` change nothing.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def running(self) -> bool:
        """False: there is no Active Memory Manager."""
        return False

    def start(self) -> None:
        """Nothing to start (see the class docstring)."""

    def stop(self) -> None:
        """Nothing to stop (see the class docstring)."""

    def run_once(self) -> None:
        """Nothing to run (see the class docstring)."""


def versions(packages: Sequence[str] = ()) -> dict[str, Any]:
    """This process's ``host`` and ``packages`` (dask's ``get_versions`` shape)."""
    from importlib import metadata

    host: dict[str, Any] = {
        "python": ".".join(map(str, sys.version_info[:3])),
        "python-bits": struct.calcsize("P") * 8,
        "OS": platform.system(),
        "OS-release": platform.release(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "byteorder": sys.byteorder,
    }
    found: dict[str, str | None] = {"python": host["python"]}
    for name in (*REQUIRED_PACKAGES[1:], *OPTIONAL_PACKAGES, *packages):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return {"host": host, "packages": found}


def _mismatches(report: dict[str, Any], names: Sequence[str]) -> list[str]:
    every = [report["client"], report["scheduler"], *report["workers"].values()]
    out = []
    for name in names:
        seen = {v["packages"].get(name) for v in every}
        if len(seen) > 1:
            out.append(f"{name}: {sorted(map(str, seen))}")
    return out


class ClusterToolsMixin:
    """Debugging and maintenance methods of ``Client``."""

    _link: Any
    #: dask's serialization families for comms; a ``local://`` comm moves
    #: objects within this process, so none are chosen (dask's default).
    _serializers: list[str] | None = None
    _deserializers: list[str] | None = None

    @property
    def connection_args(self) -> dict[str, Any]:
        """What dask's ``distributed.core.connect`` takes to reach this client's
        scheduler (dask's values with no ``Security``).

        distributed's own tools that open a comm to ``scheduler.address``
        (``TextProgressBar``) reach a cluster of this process through the
        ``local`` comm backend (``localsched.integrations.dask_comm``).
        """
        return {"ssl_context": None, "require_encryption": False, "extra_conn_args": {}}

    def _ask(self, request: rq.Request, timeout: float | None = None) -> Any:
        return self._link.request(request).result(timeout)

    @property
    def amm(self) -> ActiveMemoryManagerClient:
        """dask's Active Memory Manager handle (there is none here)."""
        return ActiveMemoryManagerClient(self)

    # -- recreating tasks here -----------------------------------------------------

    def _run_locally(self, key: Key, spec: Any) -> Any:
        """Run ``key``'s task in this thread, with its dependencies' results."""
        import pickle

        from localsched.transport.shm import load
        from localsched.worker.execute import substitute

        if spec is None:
            raise ValueError(f"The task {key!r} has nothing to run (data, not a task)")
        function = pickle.loads(spec.function)
        loaded: Any = load(spec.args)
        args, kwargs = loaded
        values = self._link.load_results(spec.dependencies) if spec.dependencies else {}
        args = substitute(tuple(args), values)
        kwargs = substitute(dict(kwargs), values)
        return function(*args, **kwargs)

    def recreate_task_locally(self, future: Future) -> Any:
        """Run ``future``'s task again in this thread; its result.

        Its dependencies' results come from the cluster. Useful to step into
        a task with a debugger.
        """
        wait(_futures_in(future))
        (key,) = (f.key for f in _futures_in(future))
        specs = self._ask(rq.TaskRunSpecs(keys=(key,)))
        if key not in specs:
            raise ValueError(f"The task {key!r} is not known to the scheduler")
        return self._run_locally(key, specs[key][0])

    def recreate_error_locally(self, future: Any) -> None:
        """Run the task that caused ``future``'s error here, raising its error.

        The task to blame may be a dependency of ``future``; its own
        dependencies' results come from the cluster.

        Raises
        ------
        ValueError
            No future passed erred (dask's "No errored futures passed").
        """
        futures = _futures_in(future)
        wait(futures)
        erred = tuple(f.key for f in futures if f.status == "error")
        if not erred:
            raise ValueError("No errored futures passed")
        specs = self._ask(rq.TaskRunSpecs(keys=erred))
        blamed = next(
            (blame for _, blame in specs.values() if blame is not None), erred[0]
        )
        if blamed not in specs:
            specs.update(self._ask(rq.TaskRunSpecs(keys=(blamed,))))
        self._run_locally(blamed, specs[blamed][0])
        raise RuntimeError(
            f"The task {blamed!r} did not fail when run here; it failed in the "
            "cluster (a flaky task, or one that depends on its worker)"
        )

    # -- state and versions --------------------------------------------------------

    @dual
    def get_versions(
        self, check: bool = False, packages: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Versions of Python and packages in this process, the scheduler's and
        each worker's (dask's shape: ``client``, ``scheduler``, ``workers``).

        Parameters
        ----------
        check
            Raise ``ValueError`` if a required package (Python, localsched,
            cloudpickle, dask, distributed) differs somewhere; warn for others.
        packages
            More package names to report.
        """
        extra = tuple(packages or ())
        report = {
            "scheduler": self.run_on_scheduler(versions, extra),  # type: ignore[attr-defined]
            "workers": self.run(versions, extra),  # type: ignore[attr-defined]
            "client": versions(extra),
        }
        if check:
            import warnings

            errors = _mismatches(report, REQUIRED_PACKAGES)
            if errors:
                raise ValueError("Mismatched versions found\n" + "\n".join(errors))
            others = _mismatches(report, (*OPTIONAL_PACKAGES, *extra))
            if others:
                warnings.warn(
                    "Mismatched versions found\n" + "\n".join(others), stacklevel=2
                )
        return report

    @dual
    def dump_cluster_state(
        self,
        filename: str = "dask-cluster-dump",
        write_from_scheduler: bool | None = None,
        exclude: Sequence[str] = ("run_spec",),
        format: str = "msgpack",
        **storage_options: Any,
    ) -> None:
        """Write the scheduler's and the workers' state to a file, to debug.

        The file (``<filename>.msgpack.gz`` or ``<filename>.yaml``) holds
        ``scheduler`` (tasks, clients, transition log), ``workers`` (address
        -> the scheduler's view and the worker's own description) and
        ``versions``; ``distributed.cluster_dump.load_cluster_dump`` reads it.

        Parameters
        ----------
        filename
            Path or URL (``file://``, or any fsspec URL) without the suffix.
        write_from_scheduler
            Write from the scheduler's process (default: for URLs only, as
            dask); the same process as this client's unless in a task.
        exclude
            Task attributes to leave out.
        format
            ``"msgpack"`` or ``"yaml"``.
        """
        if format not in ("msgpack", "yaml"):
            raise ValueError(f"Unsupported format {format!r}")
        filename = str(filename)
        if write_from_scheduler is None:
            write_from_scheduler = "://" in filename
        state = self._ask(rq.ClusterDump(exclude=tuple(exclude)))
        described = self.run(_describe_worker)  # type: ignore[attr-defined]
        for address, description in described.items():
            state["workers"].setdefault(address, {})["worker"] = description
        state["versions"] = {
            "scheduler": versions(),
            "workers": {a: versions() for a in state["workers"]},
        }
        if write_from_scheduler:
            self.run_on_scheduler(  # type: ignore[attr-defined]
                write_state, state, filename, format, storage_options
            )
        else:
            write_state(state, filename, format, storage_options)

    # -- workers -----------------------------------------------------------------------

    @dual
    def restart_workers(
        self,
        workers: list[str],
        timeout: str | float | None = None,
        raise_for_error: bool = True,
    ) -> dict[str, str]:
        """Restart these workers' processes; wait for their replacements.

        Tasks running there are placed again (not counted as suspicious); the
        results they made stay (shared memory). Replacements get new addresses.

        Returns
        -------
        dict
            name or address as given -> ``"OK"``, ``"removed"`` (no such
            worker) or ``"timed out"``.

        Raises
        ------
        TimeoutError
            With ``raise_for_error``, if the replacements were not running
            within ``timeout`` seconds (default 120).
        """
        from localsched.units import parse_timedelta

        seconds = 120.0 if timeout is None else parse_timedelta(timeout, "s")
        before = len(self._ask(rq.WorkerStatus()))
        old = self._ask(rq.RestartWorkers(workers=tuple(workers)))
        gone = {a for a in old.values() if a is not None}
        deadline = time.monotonic() + seconds
        pause = threading.Event()
        while True:
            status = self._ask(rq.WorkerStatus())
            running = [a for a, s in status.items() if s == "running"]
            if not gone & set(status) and len(running) >= before:
                break
            if time.monotonic() > deadline:
                if raise_for_error:
                    raise TimeoutError(
                        f"Workers {sorted(gone)} did not restart within {seconds} s"
                    )
                return {w: "timed out" if a else "removed" for w, a in old.items()}
            pause.wait(0.01)  # processes start: no event tells a client
        return {w: "OK" if a else "removed" for w, a in old.items()}

    @dual
    def replicate(
        self,
        futures: Any,
        n: int | None = None,
        workers: Any = None,
        branching_factor: int = 2,
        **kwargs: Any,
    ) -> None:
        """Count ``n`` workers (default: all) as holders of each future's result.

        No data moves: every worker reads the one copy in shared memory.
        ``who_has`` then lists the holders, and the scheduler may place
        dependents on any of them.

        Raises
        ------
        ValueError
            ``n`` is 0 or negative (dask's).
        """
        if n is not None and n <= 0:
            raise ValueError("Can not use replicate to delete data")
        found = _futures_in(futures)
        wait(found)
        names = None
        if workers is not None:
            names = (
                tuple(workers)
                if isinstance(workers, list | tuple | set)
                else (workers,)
            )
        self._ask(rq.Replicate(keys=tuple(f.key for f in found), n=n, workers=names))

    @dual
    def rebalance(
        self, futures: Any = None, workers: Any = None, **kwargs: Any
    ) -> None:
        """Nothing to balance: results live once in shared memory, not in
        workers' memory. Waits for ``futures``, as dask does before moving."""
        if futures is not None:
            wait(_futures_in(futures))

    # -- collections and code ---------------------------------------------------------

    def normalize_collection(self, collection: Any) -> Any:
        """``collection`` with its tasks whose keys this client holds futures
        for replaced by those futures (nothing recomputed); dask's method."""
        import copy

        from dask.delayed import Delayed

        graph = collection.__dask_graph__()
        held = self.futures  # type: ignore[attr-defined]
        known = [key for key in graph if key in held]
        if not known:
            return collection
        new = dict(graph)
        for key in known:
            new[key] = Future(key, self)  # type: ignore[arg-type]
        if isinstance(collection, Delayed):
            return Delayed(collection.key, new)
        out = copy.copy(collection)
        out.dask = new
        return out

    @dual
    def upload_file(self, filename: str, load: bool = True) -> dict[str, Any]:
        """Make a ``.py`` file importable on every worker, now and later.

        Workers share this machine's filesystem, so nothing is copied over a
        network: the module's source, read now, is served to ``import`` by a
        finder in each worker process (and in the scheduler's), ahead of
        ``sys.path``; a module imported before is reloaded. Archives
        (``.zip``, ``.egg``, ``.whl``) are put on ``sys.path`` where they are.

        Parameters
        ----------
        filename
            The file.
        load
            Import (or reload) it at once, so errors raise here.

        Raises
        ------
        Exception
            What importing it raised (a ``SyntaxError``, say).
        """
        path = os.path.abspath(filename)
        with open(path, "rb") as f:
            data = f.read()
        upload = UploadedModules.entry(path, data)
        self.run_on_scheduler(install_upload, upload, load)  # type: ignore[attr-defined]
        plugin: WorkerPlugin = UploadFile(upload, load)
        return self.register_plugin(  # type: ignore[attr-defined]
            plugin, name=f"upload-file-{os.path.basename(path)}"
        )


def _describe_worker(dask_worker: Any = None) -> dict[str, Any]:
    return {
        "address": dask_worker.address,
        "name": str(dask_worker.name),
        "nthreads": dask_worker.nthreads,
        "pid": os.getpid(),
        "threads": sorted(t.name for t in threading.enumerate()),
    }


def write_state(
    state: dict[str, Any], filename: str, format: str, storage_options: dict[str, Any]
) -> None:
    """Write a cluster dump (in the calling process: client or scheduler)."""
    suffix = ".msgpack.gz" if format == "msgpack" else ".yaml"
    url = filename + suffix
    if format == "msgpack":
        import msgpack

        data: bytes = gzip.compress(msgpack.packb(state, use_bin_type=True))
    else:
        import yaml

        data = yaml.safe_dump(state).encode()
    if "://" in url:
        import fsspec

        with fsspec.open(url, mode="wb", **storage_options) as f:
            f.write(data)
    else:
        with open(url, "wb") as f:
            f.write(data)


# -- upload_file -------------------------------------------------------------------


class UploadedModules(importlib.abc.MetaPathFinder):
    """Serves uploaded modules' sources to ``import``, in the process it is in.

    One instance per process, first on ``sys.meta_path`` once a module was
    uploaded there.
    """

    _lock = threading.Lock()
    _instance: UploadedModules | None = None

    def __init__(self) -> None:
        #: module name -> (path, source)
        self.sources: dict[str, tuple[str, bytes]] = {}

    @staticmethod
    def entry(path: str, data: bytes) -> tuple[str, str, bytes]:
        """``(module name, path, data)`` for an uploaded file."""
        base = os.path.basename(path)
        return base.split(".", 1)[0], path, data

    @classmethod
    def here(cls) -> UploadedModules:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
                sys.meta_path.insert(0, cls._instance)
            return cls._instance

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        entry = self.sources.get(fullname)
        if entry is None:
            return None
        return importlib.util.spec_from_loader(
            fullname, _SourceLoader(fullname, *entry), origin=entry[0]
        )


class _SourceLoader(importlib.abc.SourceLoader):
    def __init__(self, name: str, path: str, source: bytes) -> None:
        self.name, self.path, self.source = name, path, source

    def get_filename(self, fullname: str) -> str:
        return self.path

    def get_data(self, path: str) -> bytes:
        return self.source

    def path_stats(self, path: str) -> Any:
        raise OSError  # no bytecode cache: the source is in memory


def install_upload(upload: tuple[str, str, bytes], load: bool) -> None:
    """Make an uploaded file importable in this process; import it if ``load``."""
    name, path, data = upload
    if path.endswith((".zip", ".egg", ".whl")):
        if path not in sys.path:
            sys.path.insert(0, path)
        importlib.invalidate_caches()
        return
    if not path.endswith(".py"):
        return  # a data file: it is on this machine's filesystem already
    UploadedModules.here().sources[name] = (path, data)
    importlib.invalidate_caches()
    if not load:
        return
    module = sys.modules.get(name)
    if module is None:
        importlib.import_module(name)
    else:
        importlib.reload(module)


class UploadFile(WorkerPlugin):
    """The worker plugin of ``upload_file`` (dask's ``UploadFile``): installs
    the file in each worker, also in those that start later."""

    def __init__(self, upload: tuple[str, str, bytes], load: bool = True) -> None:
        self.upload = upload
        self.load = load

    def setup(self, worker: Any) -> None:
        install_upload(self.upload, self.load)
