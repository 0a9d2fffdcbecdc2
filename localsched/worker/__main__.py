"""``python -m localsched.worker FD NTHREADS [OPTIONS]``: a worker.

(``python -m localsched.worker --template FD PARENT`` is the template process
that forks workers: ``localsched.worker.template``.)

Options: ``--resources=JSON`` (the abstract resources the worker offers) and
``--executing-fd=N`` (the page shared with the scheduler that records the
tasks executing here; see ``localsched.transport.executing``). A bare JSON
object as the third argument is accepted as ``--resources``.

Started by ``LocalCluster`` with the worker's end of a socket pair as file
descriptor ``FD``, whose first message says where to write results (the
store's prefix and private directories, or null) and the parent's
``multiprocessing`` authkey and the modules to import once ready
(``warm_imports``), as JSON: a command line is
visible to every user of the machine, so it names no path. A fresh interpreter
that imports only the worker's modules: the user's ``__main__`` is never
re-imported, so a script without an ``if __name__ == "__main__":`` guard
cannot start clusters recursively.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from multiprocessing.connection import Connection

from localsched.transport.executing import ExecutingPage
from localsched.transport.shm import BlobWriter
from localsched.worker.main import extend_path, run_worker


def main(argv: list[str]) -> None:
    if argv[:1] == ["--template"]:
        # The template that forks workers is a worker interpreter in waiting,
        # started the same way, so what keys on ``-m localsched.worker`` at
        # start-up (a ``sitecustomize``, process listings) sees its workers.
        from localsched.worker.template import main as serve_as_template

        serve_as_template(int(argv[1]), int(argv[2]))
        return
    fd, nthreads, *options = argv
    conn = Connection(int(fd))
    setup = json.loads(conn.recv_bytes())
    store = setup["store"]
    # The parent's authkey, as a multiprocessing child has it: Manager proxies
    # in a task's arguments authenticate with it.
    multiprocessing.current_process().authkey = bytes.fromhex(setup["authkey"])
    extend_path(setup.get("sys_path", ()))
    if setup.get("dask_config"):
        # dask reads it when a task first imports dask.config, as in the
        # worker processes dask's Nanny starts: the parent's config, inherited.
        os.environ["DASK_INTERNAL_INHERIT_CONFIG"] = setup["dask_config"]
        if "dask.config" in sys.modules:  # read before this message came
            sys.modules["dask.config"].refresh()
    writer = BlobWriter(*store) if store else None
    resources = None
    page = None
    for option in options:
        if option.startswith("--executing-fd="):
            page = ExecutingPage(int(option.split("=", 1)[1]))
        elif option.startswith("--resources="):
            resources = json.loads(option.split("=", 1)[1])
        else:
            resources = json.loads(option)
    warm = setup.get("warm_imports", ())
    run_worker(conn, int(nthreads), writer, resources, page, warm)


if __name__ == "__main__":
    main(sys.argv[1:])
