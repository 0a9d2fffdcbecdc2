"""Plugins end to end: ``Client.register_plugin`` (scheduler and worker plugins),
dask's older spellings, ``unregister_worker_plugin``, ``LocalCluster(plugins=,
preload=)`` and the ``examples/plugins_*.py`` scripts, on real worker processes.

Worker plugins report from inside the worker processes by appending lines to a
file per worker process in the test's ``tmp_path``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import pytest

from localsched import Client, LocalCluster, SchedulerPlugin, WorkerPlugin
from tests.runtime.helpers import poll

pytestmark = pytest.mark.timeout(60)

# Workers get this module's plugin classes by value (they never import tests).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROOT = Path(__file__).resolve().parents[2]


def inc(x: int) -> int:
    return x + 1


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


def getpid() -> int:
    return os.getpid()


# -- scheduler plugins ---------------------------------------------------------------


class Recorder(SchedulerPlugin):
    """Hooks with dask's exact signatures: a call with other arguments fails
    (the registry logs it) and is missing from ``calls``."""

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = name
        self.calls: list[tuple] = []

    async def start(self, scheduler) -> None:
        self.calls.append(("start", scheduler))

    def update_graph(
        self, scheduler, *, client, keys, tasks, annotations, priority, stimulus_id,
        **kwargs,
    ) -> None:  # fmt: skip
        self.calls.append(("update_graph", client, set(keys), stimulus_id))

    def transition(self, key, start, finish, *args, stimulus_id, **kwargs) -> None:
        self.calls.append(("transition", key, start, finish, stimulus_id))

    def add_worker(self, scheduler, worker) -> None:
        self.calls.append(("add_worker", worker))

    def remove_worker(self, scheduler, worker, *, stimulus_id, **kwargs) -> None:
        self.calls.append(("remove_worker", worker))

    def add_client(self, scheduler, client) -> None:
        self.calls.append(("add_client", client))

    def remove_client(self, scheduler, client) -> None:
        self.calls.append(("remove_client", client))

    async def before_close(self) -> None:
        self.calls.append(("before_close",))

    async def close(self) -> None:
        self.calls.append(("close",))


def test_register_scheduler_plugin_runs_start_and_every_hook(tmp_path):
    plugin = Recorder("rec")
    with LocalCluster(n_workers=1, threads_per_worker=1) as cluster:
        scheduler = cluster.scheduler
        with Client(cluster) as client:
            assert client.register_plugin(plugin) is None
            assert scheduler.plugins["rec"] is plugin
            assert plugin.calls == [("start", scheduler)]
            assert client.submit(inc, 1, key="x").result() == 2
            cluster.scale(2)
            cluster.wait_for_workers(2)
        client_id = client.id
    names = [c[0] for c in plugin.calls]
    transitions = [c[1:4] for c in plugin.calls if c[0] == "transition"]
    assert ("x", "waiting", "processing") in transitions
    assert ("x", "processing", "memory") in transitions
    assert all(isinstance(c[4], str) for c in plugin.calls if c[0] == "transition")
    graph = [c for c in plugin.calls if c[0] == "update_graph"]
    assert graph[0][1] == client_id
    assert graph[0][2] == {"x"}
    assert ("remove_client", client_id) in plugin.calls
    assert "add_worker" in names
    assert "remove_worker" in names
    assert names[-2:] == ["before_close", "close"]


def test_scheduler_plugin_names_and_idempotence():
    with Client(n_workers=1, threads_per_worker=1) as client:
        scheduler = client.cluster.scheduler
        first, second, third = Recorder("p"), Recorder("p"), Recorder()
        client.register_plugin(first)
        client.register_plugin(second, idempotent=True)
        assert scheduler.plugins["p"] is first
        assert second.calls == []  # not started either, as in dask
        client.register_plugin(second)
        assert scheduler.plugins["p"] is second
        assert second.calls[0][0] == "start"
        client.register_plugin(third, name="other")
        assert scheduler.plugins["other"] is third
        unnamed = Recorder()
        client.register_plugin(unnamed)
        generated = [n for n, p in scheduler.plugins.items() if p is unnamed]
        assert generated
        assert generated[0].startswith("Recorder-")
        kept = Recorder()
        kept.idempotent = True  # the new plugin's attribute is the default
        client.register_plugin(kept, name="other")
        assert scheduler.plugins["other"] is third
        client.unregister_scheduler_plugin("other")
        assert "other" not in scheduler.plugins
        with pytest.raises(TypeError, match="instance"):
            client.register_plugin(Recorder)
        with pytest.raises(TypeError, match="duck-typed"):
            client.register_plugin(object())


def test_deprecated_spellings_warn_as_dask_and_still_register(tmp_path):
    with Client(n_workers=1, threads_per_worker=1) as client:
        scheduler = client.cluster.scheduler
        with pytest.warns(FutureWarning, match="register_scheduler_plugin"):
            client.register_scheduler_plugin(Recorder("old"))
        assert "old" in scheduler.plugins
        with pytest.warns(DeprecationWarning, match="register_worker_plugin"):
            result = client.register_worker_plugin(FileLog(tmp_path), name="wp")
        assert set(result) == set(scheduler.workers)
        assert lines(tmp_path, "setup")


# -- worker plugins --------------------------------------------------------------------


class FileLog(WorkerPlugin):
    """Appends what the worker tells it to ``<dir>/<pid>.log``."""

    name = "file-log"

    def __init__(self, directory: Path, fail_setup: bool = False) -> None:
        self.directory = str(directory)
        self.fail_setup = fail_setup

    def _write(self, *fields: object) -> None:
        path = os.path.join(self.directory, f"{os.getpid()}.log")
        with open(path, "a") as f:
            f.write("\t".join(map(str, fields)) + "\n")

    def setup(self, worker) -> None:
        if self.fail_setup:
            raise ZeroDivisionError("setup failed on purpose")
        self.worker = worker
        self._write("setup", worker.address, self.name)

    def teardown(self, worker) -> None:
        self._write("teardown", worker.address, self.name)

    def transition(self, key, start, finish, **kwargs) -> None:
        extra = ""
        if finish == "memory":
            extra = repr(self.worker.data[key])
        elif finish == "error":
            ts = self.worker.state.tasks[key]
            exc = self.worker.exceptions[key]
            extra = f"{type(exc).__name__}:{exc}:{ts.state}:{ts.exception is exc}"
        self._write("transition", key, start, finish, extra)


def lines(directory: Path, kind: str, pid: int | None = None) -> list[list[str]]:
    found = []
    for path in sorted(Path(directory).glob("*.log")):
        if pid is not None and path.name != f"{pid}.log":
            continue
        for line in path.read_text().splitlines():
            fields = line.split("\t")
            if fields[0] == kind:
                found.append(fields[1:])
    return found


def test_worker_plugin_setup_transitions_and_unregister_teardown(tmp_path):
    with Client(n_workers=2, threads_per_worker=1) as client:
        addresses = set(client.cluster.scheduler.workers)
        responses = client.register_plugin(FileLog(tmp_path))
        assert responses == {a: {"status": "OK"} for a in addresses}
        # setup ran in each worker before the answer came back
        assert {fields[0] for fields in lines(tmp_path, "setup")} == addresses
        pids = client.run(getpid)
        assert {p.name for p in tmp_path.glob("*.log")} == {
            f"{pid}.log" for pid in pids.values()
        }

        kept = client.submit(inc, 41, key="good")
        assert kept.result() == 42
        bad = client.submit(fail, 1, key="bad")
        with pytest.raises(ValueError, match="bad 1"):
            bad.result()
        # The worker calls the hooks before it replies: all there already.
        transitions = [f[:4] for f in lines(tmp_path, "transition")]
        assert [f[1:3] for f in transitions if f[0] == "good"] == [
            ["released", "waiting"],
            ["waiting", "ready"],
            ["ready", "executing"],
            ["executing", "memory"],
        ]
        assert ["good", "executing", "memory", "42"] in lines(tmp_path, "transition")
        errors = [f for f in lines(tmp_path, "transition") if f[0] == "bad"]
        assert [f[1:3] for f in errors][-1] == ["executing", "error"]
        assert errors[-1][3] == "ValueError:bad 1:error:True"

        del bad  # released: the worker forgets it
        assert poll(
            lambda: (
                ["bad", "error", "released"]
                in [f[:3] for f in lines(tmp_path, "transition")]
            )
        )

        assert client.unregister_worker_plugin("file-log") == {
            a: {"status": "OK"} for a in addresses
        }
        assert {f[0] for f in lines(tmp_path, "teardown")} == addresses
        with pytest.raises(ValueError, match="does not exist"):
            client.unregister_worker_plugin("file-log")
        # no plugin: no more transitions recorded
        before = len(lines(tmp_path, "transition"))
        assert client.submit(inc, 1, key="after").result() == 2
        assert len(lines(tmp_path, "transition")) == before


def test_worker_plugin_reaches_a_worker_started_later(tmp_path):
    cluster = LocalCluster(n_workers=1, threads_per_worker=1)
    with cluster, Client(cluster) as client:
        (old,) = cluster.scheduler.workers
        client.register_plugin(FileLog(tmp_path))
        cluster.scale(2)
        client.wait_for_workers(2)
        (new,) = set(cluster.scheduler.workers) - {old}
        new_pid = client.run(getpid, workers=[new])[new]
        assert lines(tmp_path, "setup", new_pid) == [[new, "file-log"]]
        future = client.submit(inc, 1, key="on-new", workers=[new])
        assert future.result() == 2
        finished = [f[:3] for f in lines(tmp_path, "transition", new_pid)]
        assert ["on-new", "executing", "memory"] in finished
    # closing the cluster tears the plugin down in both workers
    assert {f[0] for f in lines(tmp_path, "teardown")} == {old, new}


def test_worker_plugin_idempotent_replace_and_failing_setup(tmp_path):
    with Client(n_workers=1, threads_per_worker=1) as client:
        client.register_plugin(FileLog(tmp_path), name="a")
        assert (
            client.register_plugin(FileLog(tmp_path), name="a", idempotent=True) == {}
        )
        assert len(lines(tmp_path, "setup")) == 1
        # same name, not idempotent: the old one is torn down, the new one set up
        client.register_plugin(FileLog(tmp_path), name="a")
        assert len(lines(tmp_path, "teardown")) == 1
        assert len(lines(tmp_path, "setup")) == 2
        with pytest.raises(ZeroDivisionError, match="on purpose"):
            client.register_plugin(FileLog(tmp_path, fail_setup=True), name="b")
        assert client.submit(inc, 1).result() == 2


def test_register_worker_callbacks_runs_setup_on_current_and_later_workers(tmp_path):
    directory = str(tmp_path)

    def setup(dask_worker):
        path = os.path.join(directory, f"{os.getpid()}.log")
        with open(path, "a") as f:
            f.write(f"setup\t{dask_worker.address}\n")

    def plain():
        with open(os.path.join(directory, f"{os.getpid()}.log"), "a") as f:
            f.write("setup\tplain\n")

    cluster = LocalCluster(n_workers=1, threads_per_worker=1)
    with cluster, Client(cluster) as client:
        (first,) = cluster.scheduler.workers
        assert client.register_worker_callbacks(setup) == {first: {"status": "OK"}}
        client.register_worker_callbacks(plain)  # a second, separate plugin
        cluster.scale(2)
        client.wait_for_workers(2)
        (second,) = set(cluster.scheduler.workers) - {first}
        client.run(getpid)  # every worker read its plugins before this
        seen = sorted(f[0] for f in lines(tmp_path, "setup"))
        assert seen == sorted([first, second, "plain", "plain"])


# -- LocalCluster(plugins=, preload=) ---------------------------------------------


PRELOAD = textwrap.dedent(
    """
    from localsched import SchedulerPlugin

    events = []

    class Started(SchedulerPlugin):
        name = "from-preload"

        async def start(self, scheduler):
            events.append("plugin start")

    def dask_setup(scheduler):
        events.append("dask_setup")
        scheduler.add_plugin(Started())
        scheduler.preload_events = events

    def dask_teardown(scheduler):
        events.append("dask_teardown " + str(len(scheduler.workers)))
    """
)


def test_local_cluster_plugins_and_preload_file(tmp_path):
    path = tmp_path / "my_preload.py"
    path.write_text(PRELOAD)
    plugin = Recorder("given")
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, plugins=[plugin], preload=[str(path)]
    )
    with cluster:
        scheduler = cluster.scheduler
        events = scheduler.preload_events
        assert events == ["dask_setup", "plugin start"]
        assert plugin.calls[0] == ("start", scheduler)
        assert {"given", "from-preload"} <= set(scheduler.plugins)
    # dask_teardown ran while the workers were still there
    assert events[-1] == "dask_teardown 1"
    assert [c[0] for c in plugin.calls][-2:] == ["before_close", "close"]


def test_preload_by_module_name_and_click_command(tmp_path, monkeypatch):
    click = pytest.importorskip("click")
    assert click
    module = tmp_path / "preload_click_mod.py"
    module.write_text(
        textwrap.dedent(
            """
            import click

            seen = []

            @click.command()
            @click.option("--tag", default="none")
            def dask_setup(scheduler, tag):
                seen.append((scheduler.status, tag))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        preload=["preload_click_mod"],
        preload_argv=["--tag", "hello"],
    )
    with cluster:
        seen = sys.modules["preload_click_mod"].seen
        assert seen == [("init", "hello")]  # before the scheduler started
    del sys.modules["preload_click_mod"]


def test_local_cluster_worker_plugins_reach_every_worker(tmp_path):
    with LocalCluster(
        n_workers=2, threads_per_worker=1, plugins=[FileLog(tmp_path)]
    ) as cluster:
        addresses = set(cluster.scheduler.workers)
        with Client(cluster) as client:
            # each worker set the plugin up before its first message was read
            client.run(getpid)
            assert {f[0] for f in lines(tmp_path, "setup")} == addresses


def test_preload_that_cannot_be_imported_fails_the_cluster(tmp_path):
    with pytest.raises(ModuleNotFoundError):
        LocalCluster(n_workers=1, preload=["no_such_module_for_localsched"])


# -- examples ------------------------------------------------------------------------


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    # The script imports this checkout's localsched, whatever is installed.
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), path]))}
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=ROOT,
        env=env,
        check=True,
    )


def test_example_counter():
    out = run_example("plugins_counter.py").stdout
    assert "results: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" in out
    assert "tasks counted: 10" in out


def test_example_error_logger():
    done = run_example("plugins_error_logger.py")
    assert "check-3 failed: 3 is a multiple of three" in done.stdout
    assert "check-4 = 4" in done.stdout
    logged = [line for line in done.stderr.splitlines() if "has failed" in line]
    assert sorted(logged) == [
        "ERROR error-logger: Task 'check-3' has failed with exception: "
        "3 is a multiple of three",
        "ERROR error-logger: Task 'check-6' has failed with exception: "
        "6 is a multiple of three",
    ]


def test_example_queue_publisher():
    out = run_example("plugins_queue_publisher.py").stdout.splitlines()
    assert "y = 3" in out
    for key in ("x", "y"):
        assert f"transition {key}: released -> waiting" in out
        assert f"transition {key}: processing -> memory" in out
    # the consumer printed everything before the cluster finished closing
    assert out[-2:] == ["consumer done", "cluster closed"]
