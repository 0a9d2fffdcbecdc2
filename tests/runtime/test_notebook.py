"""The example notebook runs headlessly (nbclient + ipykernel) and shows the
progress bar's final state and the client's HTML repr."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest

ROOT = Path(__file__).parents[2]


def _outputs(cell: dict) -> list[dict]:
    return [o for o in cell.get("outputs", []) if "data" in o]


@pytest.mark.timeout(120)
def test_example_notebook_shows_progress_and_reprs():
    notebook = nbformat.read(ROOT / "examples" / "notebook.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook,
        timeout=60,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "examples")}},
    ).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for cell in code:
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.outputs

    client_html = _outputs(code[0])[0]["data"]["text/html"]
    assert "workers: 2, threads: 2" in client_html
    assert "<table" in client_html

    # One display of the bar, updated in place to its final state.
    (bar,) = _outputs(code[1])
    assert bar["output_type"] == "display_data"
    assert "100% Completed" in bar["data"]["text/plain"]
    assert "100% Completed" in bar["data"]["text/html"]
    assert "slow_inc" in bar["data"]["text/html"]
    assert "60/60" in bar["data"]["text/html"]

    assert _outputs(code[2])[0]["data"]["text/plain"] == str(sum(range(1, 61)))
    future_html = _outputs(code[3])[0]["data"]["text/html"]
    assert "status: finished" in future_html
