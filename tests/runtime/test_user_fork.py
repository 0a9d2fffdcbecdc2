"""The template forked from the user's process (``deploy/user_fork.py``).

Whether it forks depends on the whole process (its threads, its extension
modules, its memory), so the cluster-level tests run a script in a fresh
interpreter, where the answer is known; the rules themselves are tested here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path

import pytest

from localsched.deploy import user_fork
from localsched.deploy.template import start_template
from tests.runtime.helpers import DEADLINE

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_python_thread_refuses_the_fork():
    release = threading.Event()
    thread = threading.Thread(target=release.wait, args=(DEADLINE,))
    thread.start()
    try:
        assert "Python threads run" in (user_fork.refusal() or "")
    finally:
        release.set()
        thread.join(DEADLINE)


def test_an_extension_module_not_known_fork_safe_refuses_the_fork(monkeypatch):
    native = types.ModuleType("fancy_native._core")
    native.__file__ = "/opt/site-packages/fancy_native/_core.cpython-311-x86_64.so"
    monkeypatch.setitem(sys.modules, "fancy_native._core", native)
    assert "fancy_native" in user_fork.foreign_extensions()
    import _json  # CPython's own, from lib-dynload where it is not built in

    assert "_json" not in user_fork.foreign_extensions()
    if "numpy" in sys.modules:  # fork-safe by the list
        assert "numpy" not in user_fork.foreign_extensions()
    assert "fancy_native" in (user_fork.refusal() or "")
    del _json


def test_a_large_heap_or_a_small_explicit_memory_limit_refuses_the_fork(
    monkeypatch,
):
    monkeypatch.setattr(user_fork, "anonymous_memory", lambda: 100 * 2**20)
    assert user_fork.memory_refusal() is None
    assert user_fork.memory_refusal({"memory_limit": "4GB"}) is None
    # A quarter of the worker's limit at most: 300 MB allows 75 MB.
    reason = user_fork.memory_refusal({"memory_limit": "300MB"})
    assert reason is not None
    assert "anonymous memory" in reason
    # "auto" and fractions of the machine set no lower bound of their own.
    for limit in ("auto", 0.5, None):
        assert user_fork.memory_refusal({"memory_limit": limit}) is None
    monkeypatch.setattr(user_fork, "anonymous_memory", lambda: user_fork.MAX_HEAP + 1)
    assert user_fork.memory_refusal() is not None


def test_warm_imports_off_refuses_the_fork():
    # Workers then start lean, as asked; a list of modules keeps the fork.
    assert "warm_imports" in (user_fork.refusal({"warm_imports": False}) or "")
    assert "warm_imports" in (user_fork.refusal({"warm_imports": []}) or "")
    reason = user_fork.refusal({"warm_imports": ["json"]})
    assert "warm_imports" not in (reason or "")


def test_dask_config_turns_the_fork_off():
    dask = pytest.importorskip("dask")
    with dask.config.set({user_fork.CONFIG_KEY: False}):
        assert "config" in (user_fork.refusal() or "")


def test_a_failed_fork_starts_a_fresh_template(monkeypatch):
    def fail(theirs: object) -> None:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(user_fork, "refusal", lambda options=None: None)
    monkeypatch.setattr(user_fork, "fork_template", fail)
    template = start_template()
    assert template is not None
    try:
        assert template.is_user_fork is False
        assert template.process.is_alive()
    finally:
        template.close()
    assert not template.process.is_alive()


def _run(tmp_path: Path, body: str) -> dict:
    """Run ``body`` as a script in a fresh interpreter; the JSON it prints."""
    stdout = _run_script(tmp_path, textwrap.dedent(PROLOGUE) + textwrap.dedent(body))
    return json.loads(stdout.strip().splitlines()[-1])


def _run_script(tmp_path: Path, source: str, buffered: bool = False) -> str:
    """Run ``source`` in a fresh interpreter in ``tmp_path``; its stdout.
    ``buffered``: without ``PYTHONUNBUFFERED``, as stdout into a pipe is."""
    script = tmp_path / "script.py"
    script.write_text(source)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    if buffered:
        env.pop("PYTHONUNBUFFERED", None)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


PROLOGUE = """
import json, os, sys, psutil
import marker_module  # a module only this program imports

def has_marker():
    return "marker_module" in sys.modules

def template_parent(client):
    return psutil.Process(client.cluster._template.pid).ppid()
"""


def test_workers_forked_from_the_users_process_have_its_modules(tmp_path):
    (tmp_path / "marker_module.py").write_text("VALUE = 42\n")
    out = _run(
        tmp_path,
        """
        import localsched
        if __name__ == "__main__":
            with localsched.Client(n_workers=2, threads_per_worker=1) as client:
                found = client.run(has_marker)
                parent = template_parent(client)
                fork = client.cluster._template.is_user_fork
                template = client.cluster._template.process
            print(json.dumps({"found": list(found.values()), "parent": parent,
                              "me": os.getpid(), "fork": fork,
                              "alive": template.is_alive(),
                              "children": len(psutil.Process().children(True))}))
        """,
    )
    assert out["fork"] is True
    assert out["parent"] == out["me"]
    assert out["found"] == [True, True]
    # Closed: the template was reaped, nothing of ours is left running.
    assert out["alive"] is False
    assert out["children"] == 0


def test_with_a_second_thread_the_template_is_a_fresh_interpreter(tmp_path):
    (tmp_path / "marker_module.py").write_text("VALUE = 42\n")
    out = _run(
        tmp_path,
        """
        import threading
        import localsched
        if __name__ == "__main__":
            release = threading.Event()
            thread = threading.Thread(target=release.wait)
            thread.start()
            with localsched.Client(n_workers=1, threads_per_worker=1) as client:
                found = client.run(has_marker)
                fork = client.cluster._template.is_user_fork
            release.set()
            print(json.dumps({"found": list(found.values()), "fork": fork}))
        """,
    )
    assert out == {"found": [False], "fork": False}


def test_the_fork_keeps_nothing_of_the_users_program_a_fresh_one_lacks(tmp_path):
    (tmp_path / "marker_module.py").write_text("VALUE = 42\n")
    out = _run(
        tmp_path,
        """
        import atexit, logging, signal, warnings
        import localsched

        def worker_view():
            import logging, signal, sys, warnings
            with warnings.catch_warnings(record=True) as caught:
                warnings.warn("a user warning", UserWarning)
            return {
                "sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
                "warned": len(caught),
                "root_handlers": len(logging.getLogger().handlers),
                "stdin": sys.stdin.read(),
                "trace": sys.gettrace() is None,
                "warnings_logged": (
                    not logging.getLogger("localsched.worker.warming").disabled
                    and logging.getLogger("localsched.worker.warming")
                    .isEnabledFor(logging.WARNING)
                ),
            }

        if __name__ == "__main__":
            log_file = os.path.join(os.getcwd(), "user.log")
            logging.basicConfig(filename=log_file)
            # As a dictConfig with disable_existing_loggers would leave them.
            logging.getLogger("localsched").setLevel(logging.CRITICAL)
            logging.getLogger("localsched.worker.warming").disabled = True
            warnings.simplefilter("error")
            signal.signal(signal.SIGTERM, lambda *args: None)
            atexit.register(
                lambda: open("atexit.txt", "a").write(f"{os.getpid()}\\n")
            )
            read_end, write_end = os.pipe()
            with localsched.Client(n_workers=1, threads_per_worker=1) as client:
                fork = client.cluster._template.is_user_fork
                name = psutil.Process(client.cluster._template.pid).name()
                # No process of the cluster holds the pipe's write end: once
                # we close ours, its reader sees the end.
                os.close(write_end)
                eof = os.read(read_end, 1) == b""
                view = list(client.run(worker_view).values())[0]
            print(json.dumps({"fork": fork, "eof": eof, "view": view, "name": name}))
        """,
    )
    assert out["fork"] is True
    assert out["name"] == "localsched-tmpl"
    assert out["eof"] is True
    assert out["view"] == {
        "sigterm": True,
        "warned": 1,  # recorded, not raised: the user's "error" filter is gone
        "root_handlers": 0,
        "stdin": "",
        "trace": True,
        "warnings_logged": True,
    }
    # The user's atexit handler ran once, in the user's process.
    assert (tmp_path / "atexit.txt").read_text().split() != []
    assert len((tmp_path / "atexit.txt").read_text().split()) == 1


def test_forked_workers_draw_their_own_numpy_random_numbers(tmp_path):
    pytest.importorskip("numpy")
    (tmp_path / "marker_module.py").write_text("")
    out = _run(
        tmp_path,
        """
        import numpy as np
        import localsched

        def draw():
            import numpy as np
            return float(np.random.random())

        if __name__ == "__main__":
            np.random.seed(0)
            with localsched.Client(n_workers=2, threads_per_worker=1) as client:
                fork = client.cluster._template.is_user_fork
                drawn = list(client.run(draw).values())
            print(json.dumps({"fork": fork, "drawn": drawn,
                              "mine": float(np.random.random())}))
        """,
    )
    assert out["fork"] is True
    assert len(set(out["drawn"])) == 2
    assert out["mine"] not in out["drawn"]


def test_output_the_user_printed_before_the_fork_is_written_once(tmp_path):
    source = textwrap.dedent(
        """
        import localsched
        if __name__ == "__main__":
            # Block-buffered (a pipe): still in the buffer at the fork.
            print("printed before the cluster")
            with localsched.Client(n_workers=2, threads_per_worker=1) as client:
                fork = client.cluster._template.is_user_fork
                assert client.submit(sum, [1, 2]).result() == 3
                client.restart()  # workers leave, and flush what they hold
            print("fork" if fork else "fresh")
        """
    )
    stdout = _run_script(tmp_path, source, buffered=True)
    assert stdout.splitlines() == ["printed before the cluster", "fork"]
