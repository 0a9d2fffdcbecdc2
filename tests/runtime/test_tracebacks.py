"""A failing task's traceback points at the user's own source.

Checked in a user script run as a subprocess (its functions live in
``__main__`` and are pickled by value), with the installed cloudpickle, which a
fresh install makes the newest the project allows, and with the oldest the
project allows (3.0.0, installed into a private folder put first on
``PYTHONPATH`` for the script and its workers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

OLDEST_CLOUDPICKLE = "3.0.0"

USER_MODULE = """\
def divide_in_module(n):
    return 10 / n
"""

SCRIPT = """\
import json
import linecache
import sys
import traceback

import cloudpickle

import user_module
from localsched import Client, LocalCluster

cloudpickle.register_pickle_by_value(user_module)


def explode(n):
    helper = lambda: 1 / n  # nested code object
    return helper()


def cloudpickle_version():
    import cloudpickle

    return cloudpickle.__version__


CELL = "<ipython-input-3-5ca1ab1e0042>"
CELL_SOURCE = "def from_cell(x):\\n    raise KeyError(f'cell says {x}')\\n"


def failure(client, function, *args):
    try:
        client.submit(function, *args).result(timeout=30)
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        return {
            "type": type(exc).__name__,
            "cause": str(exc.__cause__),
            "frames": [[f.filename, f.lineno, f.line] for f in frames],
        }
    raise AssertionError("the task did not fail")


if __name__ == "__main__":
    linecache.cache[CELL] = (
        len(CELL_SOURCE), None, CELL_SOURCE.splitlines(True), CELL
    )
    cell = {"__name__": "__main__"}
    exec(compile(CELL_SOURCE, CELL, "exec"), cell)
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        with Client(cluster) as client:
            report = {
                "versions": [
                    cloudpickle.__version__,
                    client.submit(cloudpickle_version).result(timeout=30),
                ],
                "main": failure(client, explode, 0),
                "cell": failure(client, cell["from_cell"], 5),
                "module": failure(client, user_module.divide_in_module, 0),
            }
    print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def oldest_cloudpickle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("cloudpickle-oldest")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--disable-pip-version-check", "--target", str(target),
         f"cloudpickle=={OLDEST_CLOUDPICKLE}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot install cloudpickle {OLDEST_CLOUDPICKLE}: {done.stderr}")
    return target


def _run_script(tmp_path: Path, pythonpath: list[str]) -> dict:
    (tmp_path / "user_module.py").write_text(USER_MODULE)
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [*pythonpath, str(tmp_path), env.get("PYTHONPATH", "")]
    )
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["script"] = str(script)
    report["module_file"] = str(tmp_path / "user_module.py")
    return report


def _check(report: dict) -> None:
    main = report["main"]
    assert main["type"] == "ZeroDivisionError"
    assert f'File "{report["script"]}", line 15, in <lambda>' in main["cause"]
    assert "helper = lambda: 1 / n  # nested code object" in main["cause"]
    assert f'File "{report["script"]}", line 16, in explode' in main["cause"]
    assert [report["script"], 16, "return helper()"] in main["frames"]
    assert [report["script"], 15, "helper = lambda: 1 / n  # nested code object"] in (
        main["frames"]
    )

    cell = report["cell"]
    assert cell["type"] == "KeyError"
    cell_name = "<ipython-input-3-5ca1ab1e0042>"
    assert f'File "{cell_name}", line 2, in from_cell' in cell["cause"]
    assert "raise KeyError(f'cell says {x}')" in cell["cause"]
    assert any(frame[0] == cell_name and frame[1] == 2 for frame in cell["frames"])

    module = report["module"]
    assert module["type"] == "ZeroDivisionError"
    assert f'File "{report["module_file"]}", line 2' in module["cause"]
    assert "return 10 / n" in module["cause"]
    assert "<dynamic-code>" not in main["cause"] + cell["cause"] + module["cause"]


def test_traceback_shows_user_source_with_installed_cloudpickle(tmp_path):
    report = _run_script(tmp_path, [])
    import cloudpickle

    assert report["versions"] == [cloudpickle.__version__] * 2
    _check(report)


def test_traceback_shows_user_source_with_oldest_cloudpickle(
    tmp_path, oldest_cloudpickle
):
    report = _run_script(tmp_path, [str(oldest_cloudpickle)])
    assert report["versions"] == [OLDEST_CLOUDPICKLE] * 2
    _check(report)
