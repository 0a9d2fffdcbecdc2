"""Run a benchmark script once per system, each in a fresh Python process.

Shared by the side-by-side benchmarks: ``script --system NAME --json ...`` must
print its figures as one JSON object on its last line of output.
"""

from __future__ import annotations

import json
import subprocess
import sys


def available_systems() -> list[str]:
    """localsched, and dask.distributed when it is installed."""
    systems = ["localsched"]
    try:
        import distributed  # noqa: F401
    except ImportError:
        print("dask.distributed is not installed: localsched only")
    else:
        systems.append("distributed")
    return systems


def run_each_system(script: str, *arguments: str) -> dict[str, dict[str, float]]:
    """``{system: figures}`` from ``script --system <system> --json arguments``."""
    table: dict[str, dict[str, float]] = {}
    for system in available_systems():
        command = [sys.executable, script, "--system", system, "--json", *arguments]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        table[system] = json.loads(out.stdout.strip().splitlines()[-1])
    return table
