"""Executes examples/notebook.ipynb with nbclient (as CI does); fails on the first error."""

import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[3]
nb = nbformat.read(ROOT / "examples" / "notebook.ipynb", as_version=4)
with tempfile.TemporaryDirectory() as d:
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": d}}).execute()
print(f"notebook: {len(nb.cells)} cells executed", file=sys.stderr)
