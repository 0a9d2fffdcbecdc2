"""Run dask.distributed's own asynchronous tests on localsched.

In scope: tests that build their OWN ``LocalCluster(asynchronous=True)`` or
``Client(asynchronous=True)`` (mostly ``@gen_test()`` coroutines: dask runs each
on a fresh event loop). ``_peers_shim`` (appended to each copied module) swaps
distributed's ``Client``/``LocalCluster``/``wait``/``as_completed``/``Lock``...
for localsched's, so these tests drive localsched's asynchronous surface.

Each collected test gets a category (recorded by peers_record.py):
  own-async        builds its own LocalCluster/Client with asynchronous=True: RUN
  dask-objects     the same, but asserting on dask's in-process Worker/Nanny/
                   Scheduler objects (dask_objects.txt): RUN, reported apart
  n/a-gen-cluster  @gen_cluster: needs dask's in-process Scheduler/Worker objects
  n/a-dask-server  constructs dask's Scheduler/Worker/Nanny/SpecCluster/... itself,
                   or takes their fixtures (s, a, b, c, client...)
  n/a-network      listed in not_applicable.txt (a TCP address or a network
                   service: never run here)
  n/a-not-async    no asynchronous cluster or client of its own (the sync
                   runner's business)
"""

from __future__ import annotations

import ast
import functools
import os

import peers_record
import pytest
from distributed.utils_test import *  # noqa: F403  (distributed's fixtures)

HERE = os.path.dirname(__file__)

#: Fixtures that are dask's in-process servers (or a client on them).
DASK_FIXTURES = {
    "s", "a", "b", "c", "client", "client_secondary", "client_no_amm",
    "cluster_fixture",
}  # fmt: skip
#: Constructors of dask's own servers and clusters: a test calling one tests dask.
DASK_SERVERS = {
    "Scheduler", "Worker", "Nanny", "SpecCluster", "SubprocessCluster",
    "SSHCluster", "MyWorker", "BrokenWorker", "Cluster", "ClusterTest",
}  # fmt: skip
#: Builders of a cluster or client the test owns.
OWN = {"LocalCluster", "Client"}


@pytest.fixture
def cleanup():
    yield


@functools.cache
def _listed(name: str) -> dict[str, str]:
    """``{module::test[param]: reason}`` of a list file of this folder."""
    out = {}
    with open(os.path.join(HERE, name)) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                name, _, reason = line.partition(" ")
                out[name] = reason.strip()
    return out


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _name(node.func)
    return ""


@functools.cache
def _functions(path: str) -> dict[str, dict]:
    """{name: facts} of a module's test functions (what the category needs)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    out = {}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if not node.name.startswith("test"):
            continue
        calls = {_name(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}
        asynchronous = any(
            isinstance(n, ast.keyword)
            and n.arg == "asynchronous"
            and isinstance(n.value, ast.Constant)
            and n.value.value is True
            for n in ast.walk(node)
        )
        out[node.name] = {
            "decorators": {_name(d) for d in node.decorator_list},
            "args": {a.arg for a in node.args.args},
            "calls": calls,
            "asynchronous": asynchronous,
            "is_async": isinstance(node, ast.AsyncFunctionDef),
        }
    return out


def category(item) -> tuple[str, str]:
    module = os.path.basename(str(item.path))[:-3]
    info = _functions(str(item.path)).get(item.originalname)
    if info is None:
        return "n/a-not-async", "not a plain test function"
    if "gen_cluster" in info["decorators"]:
        return "n/a-gen-cluster", "gen_cluster: dask's in-process Scheduler/Worker"
    if not (info["asynchronous"] and info["calls"] & OWN):
        return "n/a-not-async", "builds no asynchronous cluster or client"
    key = f"{module}::{item.originalname}"
    na = _listed("not_applicable.txt")
    if key in na:
        return "n/a-network", na[key]
    servers = info["calls"] & DASK_SERVERS
    if servers:
        return "n/a-dask-server", f"builds dask's {sorted(servers)[0]}"
    fixtures = info["args"] & DASK_FIXTURES
    if fixtures:
        return "n/a-dask-server", f"takes dask's fixture {sorted(fixtures)[0]!r}"
    objects = _listed("dask_objects.txt")
    for name in (key, f"{module}::{item.name}"):
        if name in objects:
            return "dask-objects", objects[name]
    return "own-async", ""


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        cat, reason = category(item)
        if cat.startswith("n/a"):
            peers_record.record_deselected(config, item, cat, reason)
            drop.append(item)
        else:
            item.user_properties.append(("peers_category", cat))
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
