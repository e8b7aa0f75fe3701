"""The modality-ablation notebook runs end to end (tiny profile) through nbclient with a real kernel."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "modality_ablation.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
@pytest.mark.parametrize("world", ["easy-vqa", "scenes"])
def test_modality_ablation_notebook_executes(tmp_path, monkeypatch, world):
    monkeypatch.setenv("VLM_CACHE", str(tmp_path / "cache"))  # a generated world is generated there on first use
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = nb.cells[1]
    assert params.source.startswith('PROFILE = "full"') and 'WORLD = "easy-vqa"' in params.source
    params.source = params.source.replace('PROFILE = "full"', 'PROFILE = "tiny"').replace(
        "OUT = None", f"OUT = {str(tmp_path / 'ablation')!r}").replace('WORLD = "easy-vqa"', f"WORLD = {world!r}")
    os.environ.setdefault("PYTHONPATH", os.pathsep.join(sys.path))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "| fused | model |" in text
    assert "Leak check" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert (tmp_path / "ablation" / "ablation.png").is_file()
    assert f"data: {world}" in text
