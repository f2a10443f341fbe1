"""The notebooks run offline, top to bottom, each within 2 minutes."""

import os
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
NOTEBOOKS = sorted(f for f in os.listdir(FOLDER) if f.endswith(".ipynb"))


def test_there_are_the_five_notebooks():
    assert NOTEBOOKS == [
        "01_explore.ipynb",
        "02_custom_format.ipynb",
        "03_padded_sequences.ipynb",
        "04_segmentation.ipynb",
        "05_scans.ipynb",
    ]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_within_two_minutes(name, tmp_path):
    book = nbformat.read(os.path.join(FOLDER, name), as_version=4)
    client = nbclient.NotebookClient(
        book, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.monotonic()
    client.execute()
    elapsed = time.monotonic() - start
    assert elapsed < 120, f"{name} took {elapsed:.0f} s"
    errors = [
        o
        for cell in book.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if o.output_type == "error"
    ]
    assert not errors
    images = [o for cell in book.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "each notebook shows at least one picture"
