"""docs/tutorial.ipynb runs from top to bottom in a fresh kernel (nbclient + ipykernel)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

import flipd  # noqa: E402

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"
PACKAGE_ROOT = str(Path(flipd.__file__).resolve().parents[1])


@pytest.mark.slow
def test_the_tutorial_notebook_runs(tmp_path, monkeypatch):
    # The kernel inherits this environment: the flipd under test, one thread.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(TUTORIAL, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the cell that failed
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 7  # the figures are drawn inline, not only described
    assert not any(cell.get("outputs") for cell in nbformat.read(TUTORIAL, as_version=4).cells), \
        "commit the tutorial without outputs"
