"""``python -m localsched.worker FD NTHREADS PREFIX DIRECTORY [RESOURCES]``: a worker.

``RESOURCES`` is a JSON object of the abstract resources the worker offers.

Started by ``LocalCluster`` with the worker's end of a socket pair as file
descriptor ``FD``. A fresh interpreter that imports only the worker's modules:
the user's ``__main__`` is never re-imported, so a script without an
``if __name__ == "__main__":`` guard cannot start clusters recursively.
"""

from __future__ import annotations

import json
import sys
from multiprocessing.connection import Connection

from localsched.transport.shm import BlobWriter
from localsched.worker.main import run_worker


def main(argv: list[str]) -> None:
    fd, nthreads, prefix, directory, *rest = argv
    writer = BlobWriter(prefix, directory) if prefix else None
    resources = json.loads(rest[0]) if rest else None
    run_worker(Connection(int(fd)), int(nthreads), writer, resources)


if __name__ == "__main__":
    main(sys.argv[1:])
