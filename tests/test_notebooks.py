"""Every notebook runs top to bottom (outputs are stripped in git; CI executes them)."""
from __future__ import annotations

import glob
import json
import os

import pytest

nbformat = pytest.importorskip("nbformat", reason="install parasim[test] to execute notebooks")
nbclient = pytest.importorskip("nbclient", reason="install parasim[test] to execute notebooks")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stripped(path):
    with open(path, encoding="utf-8") as fh:
        nb = json.load(fh)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, \
                f"{os.path.basename(path)}: commit notebooks with outputs stripped"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, "no figure rendered (a non-interactive backend shows only '<Figure ...>')"
