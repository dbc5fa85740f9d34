"""The analysis notebooks execute top to bottom (nbclient, the venv's python3 kernel) against
a small sweep store; their tracking URI is the parameters cell at the top."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from mlflow_fixtures import small_store  # noqa: F401
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["paper_tables", "feature_overlap"])
def test_notebook_executes(name, small_store):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and nb.cells.index(params[0]) <= 1 and "TRACKING_URI" in params[0].source
    params[0].source = f"TRACKING_URI = {small_store.uri!r}\nEXPERIMENT = {small_store.experiment!r}"
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # figures came out inline
